// Package maps gives typed access to the hostrouting datapath's BPF maps:
// Go types in (netip.Addr, net.HardwareAddr), Go types out, and clear
// errors for a missing key or a full map.
package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/bpf"
)

var (
	// ErrNotFound is returned for a key the map does not hold. It wraps
	// ebpf.ErrKeyNotExist.
	ErrNotFound = fmt.Errorf("not found: %w", ebpf.ErrKeyNotExist)
	// ErrMapFull is returned when a map has no room for another entry.
	ErrMapFull = errors.New("map full")
)

// EndpointFlags are per-endpoint switches of the datapath.
type EndpointFlags uint16

// EndpointARPResponder makes the datapath answer the pod's ARP requests
// for any address but its own with the host-side device's MAC, for CNIs
// that put no gateway address on the host side. (ENDPOINT_F_ARP_RESPONDER
// in bpf/lib/common.h.)
const EndpointARPResponder EndpointFlags = 1 << 0

// Endpoint is what the datapath knows of one endpoint address.
type Endpoint struct {
	IP      netip.Addr       // the pod's address
	IfIndex int              // host-side device in the node's netns
	ID      uint16           // endpoint ID
	Flags   EndpointFlags    // datapath switches
	MAC     net.HardwareAddr // the pod's MAC
	NodeMAC net.HardwareAddr // the host-side device's MAC
}

// String formats e as `cilium bpf endpoint list` does:
// "10.0.0.85:0 id=1445 flags=0x0000 ifindex=34 mac=C6:6D:95:CD:34:A2 nodemac=2A:0A:D9:17:44:22".
func (e Endpoint) String() string {
	return fmt.Sprintf("%s:0 id=%d flags=%#04x ifindex=%d mac=%s nodemac=%s",
		e.IP, e.ID, uint16(e.Flags), e.IfIndex, upperMAC(e.MAC), upperMAC(e.NodeMAC))
}

func upperMAC(mac net.HardwareAddr) string {
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, 3*len(mac))
	for i, x := range mac {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hex[x>>4], hex[x&0xf])
	}
	return string(b)
}

// Endpoints is the endpoint map: endpoint address → endpoint.
type Endpoints struct {
	m *ebpf.Map
}

// NewEndpoints wraps the loaded endpoint map (loader.Maps.Endpoints).
func NewEndpoints(m *ebpf.Map) *Endpoints {
	return &Endpoints{m: m}
}

func endpointKey(ip netip.Addr) (bpf.HostroutingEndpointKey, error) {
	var k bpf.HostroutingEndpointKey
	switch {
	case ip.Is4():
		a := ip.As4()
		k.Family = unix.AF_INET
		k.Addr[0] = binary.NativeEndian.Uint32(a[:])
	case ip.Is6() && !ip.Is4In6():
		a := ip.As16()
		k.Family = unix.AF_INET6
		for i := range k.Addr {
			k.Addr[i] = binary.NativeEndian.Uint32(a[4*i:])
		}
	default:
		return k, fmt.Errorf("invalid endpoint address %q", ip)
	}
	return k, nil
}

func keyAddr(k bpf.HostroutingEndpointKey) netip.Addr {
	var a [16]byte
	for i, w := range k.Addr {
		binary.NativeEndian.PutUint32(a[4*i:], w)
	}
	if k.Family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(a[:4]))
	}
	return netip.AddrFrom16(a)
}

// Put writes ep, replacing the entry for its address if there is one.
func (e *Endpoints) Put(ep Endpoint) error {
	k, err := endpointKey(ep.IP)
	if err != nil {
		return err
	}
	if len(ep.MAC) != 6 || len(ep.NodeMAC) != 6 {
		return fmt.Errorf("endpoint %s: MACs must be 6 bytes (mac %q, node mac %q)", ep.IP, ep.MAC, ep.NodeMAC)
	}
	if ep.IfIndex <= 0 {
		return fmt.Errorf("endpoint %s: invalid ifindex %d", ep.IP, ep.IfIndex)
	}
	v := bpf.HostroutingEndpointInfo{Ifindex: uint32(ep.IfIndex), Id: ep.ID, Flags: uint16(ep.Flags)}
	copy(v.Mac[:], ep.MAC)
	copy(v.NodeMac[:], ep.NodeMAC)
	if err := e.m.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write endpoint %s: %w", ep.IP, mapErr(err))
	}
	return nil
}

// Lookup returns the endpoint with address ip, or ErrNotFound.
func (e *Endpoints) Lookup(ip netip.Addr) (Endpoint, error) {
	k, err := endpointKey(ip)
	if err != nil {
		return Endpoint{}, err
	}
	var v bpf.HostroutingEndpointInfo
	if err := e.m.Lookup(k, &v); err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %s: %w", ip, mapErr(err))
	}
	return endpointOf(k, v), nil
}

// Delete removes the endpoint with address ip, or returns ErrNotFound.
func (e *Endpoints) Delete(ip netip.Addr) error {
	k, err := endpointKey(ip)
	if err != nil {
		return err
	}
	if err := e.m.Delete(k); err != nil {
		return fmt.Errorf("delete endpoint %s: %w", ip, mapErr(err))
	}
	return nil
}

// listChunk is how many endpoints List reads per batch syscall.
const listChunk = 4096

// List returns all endpoints, ordered by address. It reads the map in
// batches, a syscall per few thousand entries rather than two per entry.
func (e *Endpoints) List() ([]Endpoint, error) {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]bpf.HostroutingEndpointKey, listChunk)
		values = make([]bpf.HostroutingEndpointInfo, listChunk)
		eps    []Endpoint
	)
	for {
		n, err := e.m.BatchLookup(&cursor, keys, values, nil)
		for i := range n {
			eps = append(eps, endpointOf(keys[i], values[i]))
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list endpoints: %w", err)
		}
	}
	slices.SortFunc(eps, func(a, b Endpoint) int { return a.IP.Compare(b.IP) })
	return eps, nil
}

func endpointOf(k bpf.HostroutingEndpointKey, v bpf.HostroutingEndpointInfo) Endpoint {
	return Endpoint{
		IP:      keyAddr(k),
		IfIndex: int(v.Ifindex),
		ID:      v.Id,
		Flags:   EndpointFlags(v.Flags),
		MAC:     net.HardwareAddr(slices.Clone(v.Mac[:])),
		NodeMAC: net.HardwareAddr(slices.Clone(v.NodeMac[:])),
	}
}

// mapErr turns the kernel's answers into this package's sentinels.
func mapErr(err error) error {
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return ErrNotFound
	case errors.Is(err, unix.E2BIG):
		return fmt.Errorf("%w: %w", ErrMapFull, err)
	}
	return err
}
