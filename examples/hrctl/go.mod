module github.com/hostrouting/hostrouting/examples/hrctl

go 1.26.8

replace github.com/hostrouting/hostrouting => ../..

replace github.com/hostrouting/hostrouting/datapath/metrics => ../../datapath/metrics

require (
	github.com/cilium/ebpf v0.22.0
	github.com/google/gopacket v1.1.19
	github.com/hostrouting/hostrouting v0.0.0-00010101000000-000000000000
	github.com/hostrouting/hostrouting/datapath/metrics v0.0.0-00010101000000-000000000000
	github.com/prometheus/client_golang v1.25.0
	golang.org/x/sys v0.50.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/net v0.63.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
