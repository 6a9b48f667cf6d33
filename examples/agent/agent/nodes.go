package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/routing"
)

// CNIConfFile is the name of the CNI configuration the agent writes, first
// in the runtime's order as Cilium's 05-cilium.conflist.
const CNIConfFile = "05-hostrouting.conflist"

// syncNode brings the datapath in line with the Node called name: routes
// to another node's pod CIDRs, or the CNI configuration for the agent's
// own.
func (a *Agent) syncNode(name string) error {
	node, err := a.informers.nodes.Get(name)
	if err != nil {
		node = nil // not in the cache: gone
	}
	if name == a.cfg.NodeName {
		// Topology hints are read for the node's zone: a new one
		// translates every Service again, as kube-proxy's topology
		// labels do.
		if zone := a.zone(); zone != a.lastZone {
			a.log.Info("node zone changed", "zone", zone, "was", a.lastZone)
			a.lastZone = zone
			for _, svc := range a.informers.serviceNames() {
				a.queue.Add(item{kindService, svc})
			}
		}
		return a.writeCNIConf(node)
	}
	want, problem := nodeOf(node)
	a.warn(kindNode+"/"+name, nil, problem)
	old, had := a.nodes[name]
	switch {
	case want.Name == "" && !had:
		return nil
	case want.Name == "":
		if err := a.dp.DeleteNode(name); err != nil && !errors.Is(err, datapath.ErrNotFound) {
			return err
		}
		a.log.Info("deleted node", "name", name, "was", old)
		delete(a.nodes, name)
		return nil
	case had && old.IP == want.IP && slices.Equal(old.PodCIDRs, want.PodCIDRs):
		return nil
	}
	// A node with a new IP moves: its routes switch in place.
	if err := a.dp.UpsertNode(want); err != nil {
		return err
	}
	a.log.Info("routing node", "node", want)
	a.nodes[name] = want
	return nil
}

// nodeOf returns the datapath's view of node: its first IPv4 InternalIP
// and IPv4 pod CIDRs; or why there is none. A nil node has none.
func nodeOf(node *corev1.Node) (datapath.Node, string) {
	if node == nil {
		return datapath.Node{}, ""
	}
	var ip netip.Addr
	for _, addr := range node.Status.Addresses {
		if a, err := netip.ParseAddr(addr.Address); addr.Type == corev1.NodeInternalIP && err == nil && a.Is4() {
			ip = a
			break
		}
	}
	cidrs := podCIDRs(node)
	switch {
	case !ip.IsValid():
		return datapath.Node{}, "node has no IPv4 InternalIP"
	case len(cidrs) == 0:
		return datapath.Node{}, "node has no IPv4 pod CIDR"
	}
	return datapath.Node{Name: node.Name, IP: ip, PodCIDRs: cidrs}, ""
}

// podCIDRs returns node's IPv4 pod CIDRs.
func podCIDRs(node *corev1.Node) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range node.Spec.PodCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			out = append(out, p.Masked())
		}
	}
	return out
}

// cniConfList is the conflist the agent writes: ptp makes the pod's veth
// and /32 address from host-local's range, hostrouting puts the pod on the
// datapath (examples/cni-hostrouting).
type cniConfList struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []any  `json:"plugins"`
}

type ptpConf struct {
	Type   string   `json:"type"`
	IPMasq bool     `json:"ipMasq"`
	MTU    int      `json:"mtu,omitempty"`
	IPAM   ipamConf `json:"ipam"`
}

type ipamConf struct {
	Type   string      `json:"type"`
	Subnet string      `json:"subnet"`
	Routes []routeConf `json:"routes"`
}

type routeConf struct {
	Dst string `json:"dst"`
}

// hostroutingConf carries the keys of the node's datapath that every ADD
// must repeat (pinPath, nativeRoutingCIDR); no device, since the agent
// manages the node's devices.
type hostroutingConf struct {
	Type              string `json:"type"`
	PinPath           string `json:"pinPath"`
	NativeRoutingCIDR string `json:"nativeRoutingCIDR,omitempty"`
}

// cniConf returns the node's CNI configuration for pod CIDR podCIDR.
func (a *Agent) cniConf(podCIDR netip.Prefix) ([]byte, error) {
	mtu := a.cfg.MTU
	if mtu == 0 && len(a.cfg.Devices) > 0 {
		h, err := routing.Handle(a.cfg.Netns)
		if err != nil {
			return nil, err
		}
		defer h.Close()
		l, err := h.LinkByName(a.cfg.Devices[0])
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", a.cfg.Devices[0], err)
		}
		mtu = l.Attrs().MTU
	}
	hr := hostroutingConf{Type: "hostrouting", PinPath: a.cfg.PinPath}
	if a.cfg.NativeRoutingCIDR.IsValid() {
		hr.NativeRoutingCIDR = a.cfg.NativeRoutingCIDR.String()
	}
	conf := cniConfList{CNIVersion: "1.0.0", Name: "hostrouting", Plugins: []any{
		ptpConf{Type: "ptp", MTU: mtu, IPAM: ipamConf{Type: "host-local", Subnet: podCIDR.String(), Routes: []routeConf{{Dst: "0.0.0.0/0"}}}},
		hr,
	}}
	b, err := json.MarshalIndent(conf, "", "  ")
	return append(b, '\n'), err
}

// writeCNIConf writes the CNI configuration for the agent's node, once it
// has a pod CIDR, atomically (a runtime reading it sees the old or the
// new), if it changed.
func (a *Agent) writeCNIConf(node *corev1.Node) error {
	if a.cfg.CNIConfDir == "" || node == nil {
		return nil
	}
	cidrs := podCIDRs(node)
	if len(cidrs) == 0 {
		a.warn(kindNode+"/"+node.Name, nil, "own node has no IPv4 pod CIDR: no CNI configuration yet")
		return nil
	}
	a.warn(kindNode+"/"+node.Name, nil, "")
	conf, err := a.cniConf(cidrs[0])
	if err != nil {
		return fmt.Errorf("make CNI configuration: %w", err)
	}
	if bytes.Equal(conf, a.cniWritten) {
		return nil
	}
	path := filepath.Join(a.cfg.CNIConfDir, CNIConfFile)
	if err := writeFileAtomic(path, conf); err != nil {
		return fmt.Errorf("write CNI configuration: %w", err)
	}
	a.log.Info("wrote CNI configuration", "path", path, "podCIDR", cidrs[0])
	a.cniWritten = conf
	return nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, renamed over path once complete.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // gone after the rename
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if err := errors.Join(err, f.Close()); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
