// Command hostrouting-agent is the reference node agent of the hostrouting
// datapath (package agent): it routes the other Nodes' pod CIDRs, programs
// Services and EndpointSlices as kube-proxy would, writes the node's CNI
// configuration, serves /healthz, /livez and /metrics, and the
// healthCheckNodePort of LoadBalancer Services with externalTrafficPolicy
// Local.
//
// It runs in the machine's network namespace and works on the node's
// (--netns) through the datapath:
//
//	hostrouting-agent --kubeconfig /etc/kubernetes/agent.conf --node-name worker \
//	    --device eth0 --native-routing-cidr 10.0.0.0/8 --cni-conf-dir /etc/cni/net.d \
//	    --healthz 127.0.0.1:10256 --metrics 127.0.0.1:9965
//
// SIGINT and SIGTERM end it; the datapath keeps forwarding as last
// programmed, and the next start adopts it.
//
// With --install-cni-plugin DIR it only copies the CNI plugin binary
// (--cni-plugin, where the image has it) into DIR and exits: the
// DaemonSet's init container (deploy/) runs it so for /opt/cni/bin.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/hostrouting/hostrouting/examples/agent/agent"
	"github.com/hostrouting/hostrouting/loader"
)

// devices is a repeatable flag of device names, each also a comma list.
type devices []string

func (d *devices) String() string { return strings.Join(*d, ",") }

func (d *devices) Set(s string) error {
	for name := range strings.SplitSeq(s, ",") {
		if name = strings.TrimSpace(name); name != "" {
			*d = append(*d, name)
		}
	}
	return nil
}

func main() {
	var cfg agent.Config
	var devs devices
	var native string
	var flowRatio float64
	var serviceCIDR string
	host, _ := os.Hostname()
	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty for the in-cluster config")
	flag.StringVar(&cfg.NodeName, "node-name", host, "name of this node's Node object")
	flag.StringVar(&cfg.Netns, "netns", "", "the node's network namespace (a path); empty for the agent's own")
	flag.StringVar(&cfg.PinPath, "pin-path", loader.DefaultPinPath, "the node's datapath directory on bpffs")
	flag.Var(&devs, "device", "device toward other nodes (repeatable, or a comma list)")
	flag.StringVar(&native, "native-routing-cidr", "", "CIDR holding the pods of all nodes, e.g. 10.0.0.0/8")
	root, _ := loader.Cgroup2Root() // empty where there is none: no socket LB
	flag.StringVar(&cfg.CgroupPath, "cgroup", root,
		"cgroup v2 directory whose sockets get socket-level load balancing: the whole node by default (as Cilium's bpf-lb-sock); a child to narrow it, empty to turn it off")
	flag.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "", "directory to write "+agent.CNIConfFile+" to; empty for none")
	flag.IntVar(&cfg.MTU, "mtu", 0, "pods' MTU in the CNI configuration; 0 takes the first device's")
	flag.StringVar(&cfg.Healthz, "healthz", "127.0.0.1:10256", "address to serve /healthz and /livez on; empty for none")
	flag.DurationVar(&cfg.HealthzTimeout, "healthz-timeout", agent.DefaultHealthzTimeout,
		"how long a change may wait to reach the datapath, queued or failing, before /healthz, /livez and the Services' health checks answer 503 (kube-proxy: 2 × its --sync-period)")
	flag.StringVar(&cfg.Metrics, "metrics", "", "address to serve /metrics on; empty for none")
	flag.StringVar(&serviceCIDR, "service-cidr", "", "the API server's --service-cluster-ip-range (e.g. 10.96.0.0/12): unallocated ClusterIPs are rejected")
	flag.Func("max-services", "how many datapath services (one per Service port and ClusterIP, NodePort or external IP) the node's service tables hold, "+
		"with 8 backends each on average, from its first load; default the running node's, or 16384", func(s string) error {
		n, err := strconv.ParseUint(s, 10, 32)
		cfg.MaxServices = uint32(n)
		return err
	})
	flag.Float64Var(&flowRatio, "flow-memory-ratio", 0.0025,
		"share of the machine's memory the conntrack and NAT tables take at the node's first load (Cilium's bpf-map-dynamic-size-ratio); 0 for 65536 flows")
	var installDir, plugin string
	flag.StringVar(&installDir, "install-cni-plugin", "", "copy the CNI plugin binary (--cni-plugin) into this directory, such as /opt/cni/bin, and exit")
	flag.StringVar(&plugin, "cni-plugin", "/opt/cni/bin/hostrouting", "the CNI plugin binary that --install-cni-plugin copies")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if installDir != "" {
		if err := install(plugin, installDir); err != nil {
			fmt.Fprintln(os.Stderr, "hostrouting-agent: --install-cni-plugin:", err)
			os.Exit(1)
		}
		return
	}
	cfg.Devices = devs
	if serviceCIDR != "" {
		p, err := netip.ParsePrefix(serviceCIDR)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hostrouting-agent: --service-cidr:", err)
			os.Exit(2)
		}
		cfg.ServiceCIDR = p
	}
	if flowRatio != 0 {
		flows, err := loader.FlowsForMemory(flowRatio)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hostrouting-agent: --flow-memory-ratio:", err)
			os.Exit(2)
		}
		cfg.MaxFlows = flows
	}
	if native != "" {
		p, err := netip.ParsePrefix(native)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hostrouting-agent: --native-routing-cidr:", err)
			os.Exit(2)
		}
		cfg.NativeRoutingCIDR = p
	}

	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	klog.SetSlogLogger(cfg.Logger) // client-go's retries and errors
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, err := agent.New(cfg)
	if err == nil {
		err = a.Run(ctx)
	}
	if err != nil {
		cfg.Logger.Error("hostrouting-agent failed", "err", err)
		os.Exit(1)
	}
}

// install copies the executable src into dir under its own name, through
// a temporary file renamed over the old one: a runtime running the plugin
// meanwhile runs the old or the new binary, never half of one.
func install(src, dir string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, "."+filepath.Base(src)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name()) // after the rename, nothing
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Chmod(0o755); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(out.Name(), filepath.Join(dir, filepath.Base(src)))
}
