package agent_test

import (
	"context"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/hostrouting/hostrouting/examples/agent/agent"
)

// The agent of node worker, whose network namespace is /var/run/netns/worker,
// with eth0 toward the other nodes: it runs until SIGTERM, and the datapath
// goes on forwarding after it.
func Example() {
	a, err := agent.New(agent.Config{
		Kubeconfig:        "/etc/kubernetes/agent.conf",
		NodeName:          "worker",
		Netns:             "/var/run/netns/worker",
		PinPath:           "/sys/fs/bpf/hostrouting",
		Devices:           []string{"eth0"},
		NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8"),
		CNIConfDir:        "/etc/cni/net.d",
		Healthz:           "127.0.0.1:10256",
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
