package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// Node is another node of the cluster: its pods are reached by direct
// routes `podCIDR via IP` on the device facing it (Cilium's
// autoDirectNodeRoutes), and the datapath forwards to them with
// bpf_fib_lookup and bpf_redirect_neigh.
type Node struct {
	Name     string
	IP       netip.Addr
	PodCIDRs []netip.Prefix
}

// String formats n as hrctl lists it: "node2 172.18.0.3 10.0.1.0/24".
func (n Node) String() string {
	cidrs := make([]string, len(n.PodCIDRs))
	for i, c := range n.PodCIDRs {
		cidrs[i] = c.String()
	}
	return fmt.Sprintf("%s %s %s", n.Name, n.IP, strings.Join(cidrs, ","))
}

// ErrNodeConflict is returned when a node's IP, name or pod CIDRs clash
// with another node's.
var ErrNodeConflict = errors.New("node conflicts with another")

// UpsertNode adds node n or updates it to n: its routes, its next hop's
// managed neighbour entry and its name in the registry. A node that comes
// back with another IP under the same name moves. Upserting the same node
// again changes nothing.
func (d *Datapath) UpsertNode(n Node) error {
	err := d.locked(func() error {
		if n.Name == "" {
			return errors.New("no node name")
		}
		if !n.IP.Is4() {
			return fmt.Errorf("node IP %s: want an IPv4 address", n.IP)
		}
		if len(n.PodCIDRs) == 0 {
			return errors.New("no pod CIDRs")
		}
		nodes, err := d.listNodes()
		if err != nil {
			return err
		}
		for _, other := range nodes {
			if err := conflict(n, other); err != nil {
				return err
			}
		}
		dev, err := d.deviceToward(n.IP)
		if err != nil {
			return err
		}
		// A node that moved: its routes go via the new IP in place.
		var from netip.Addr
		if i := slices.IndexFunc(nodes, func(o Node) bool { return o.Name == n.Name && o.IP != n.IP }); i >= 0 {
			from = nodes[i].IP
		}
		if err := routing.MoveNodeRoutes(d.cfg.Netns, dev, from, n.IP, n.PodCIDRs); err != nil {
			return err
		}
		if err := d.nodes.Put(n.IP, n.Name); err != nil {
			return errors.Join(err, routing.DeleteNodeRoutes(d.cfg.Netns, dev, n.IP))
		}
		if from.IsValid() {
			return d.deleteNode(Node{Name: n.Name, IP: from})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("upsert node %s: %w", n, err)
	}
	return nil
}

// conflict tells why n cannot join beside other.
func conflict(n, other Node) error {
	if other.IP == n.IP {
		if other.Name != n.Name {
			return fmt.Errorf("%w: IP %s belongs to node %s", ErrNodeConflict, n.IP, other.Name)
		}
		return nil
	}
	if other.Name == n.Name {
		return nil // the node moved to a new IP
	}
	for _, a := range n.PodCIDRs {
		for _, b := range other.PodCIDRs {
			if a.Overlaps(b) {
				return fmt.Errorf("%w: pod CIDR %s overlaps %s of node %s", ErrNodeConflict, a, b, other.Name)
			}
		}
	}
	return nil
}

// DeleteNode removes the node called name: its routes, neighbour entry
// and registry entry. Deleting an unknown node returns an error wrapping
// ErrNotFound.
func (d *Datapath) DeleteNode(name string) error {
	err := d.locked(func() error {
		nodes, err := d.listNodes()
		if err != nil {
			return err
		}
		i := slices.IndexFunc(nodes, func(n Node) bool { return n.Name == name })
		if i < 0 {
			return maps.ErrNotFound
		}
		return d.deleteNode(nodes[i])
	})
	if err != nil {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	return nil
}

func (d *Datapath) deleteNode(n Node) error {
	var errs []error
	if dev, err := d.deviceToward(n.IP); err == nil {
		errs = append(errs, routing.DeleteNodeRoutes(d.cfg.Netns, dev, n.IP))
	}
	return errors.Join(append(errs, d.nodes.Delete(n.IP))...)
}

// Nodes lists the other nodes, ordered by name.
func (d *Datapath) Nodes() ([]Node, error) {
	var nodes []Node
	err := d.read(func() (err error) {
		nodes, err = d.listNodes()
		return err
	})
	return nodes, err
}

func (d *Datapath) listNodes() ([]Node, error) {
	names, err := d.nodes.All()
	if err != nil {
		return nil, err
	}
	routes, err := routing.NodeRoutes(d.cfg.Netns)
	if err != nil {
		return nil, err
	}
	nodes := make([]Node, 0, len(names))
	for ip, name := range names {
		cidrs := routes[ip]
		slices.SortFunc(cidrs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		nodes = append(nodes, Node{Name: name, IP: ip, PodCIDRs: cidrs})
	}
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return nodes, nil
}

// deviceToward names the node's device on whose link ip lies, as the
// kernel's routing picks it.
func (d *Datapath) deviceToward(ip netip.Addr) (string, error) {
	h, err := routing.Handle(d.cfg.Netns)
	if err != nil {
		return "", err
	}
	defer h.Close()
	routes, err := h.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		return "", fmt.Errorf("no route to node IP %s: %v", ip, err)
	}
	if routes[0].Type == unix.RTN_LOCAL {
		return "", fmt.Errorf("node IP %s is this node's own address", ip)
	}
	link, err := h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("device toward node IP %s: %w", ip, err)
	}
	return link.Attrs().Name, nil
}
