package instance

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/routing"
)

// DestroyUDPSockets destroys the connected UDP sockets of the network
// namespace at netns (empty for the process's) whose peer is one of
// backends, as Cilium does when a service backend goes: a client that
// socket LB gave that backend (a DNS client of a dead DNS pod) then gets
// an error (ECONNABORTED) and connects again, to a live backend, instead
// of sending into the void. It runs a BPF socket iterator with
// bpf_sock_destroy (Linux ≥ 6.5; ebpf.ErrNotSupported before) and returns
// how many sockets it destroyed. IPv6 backends are skipped.
func DestroyUDPSockets(netns string, backends []netip.AddrPort) (int, error) {
	var objs bpf.SockTermObjects
	if err := bpf.LoadSockTermObjects(&objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) || errors.Is(err, ebpf.ErrNotSupported) {
			return 0, fmt.Errorf("load socket termination (needs bpf_sock_destroy, Linux 6.5): %w", errors.Join(ebpf.ErrNotSupported, err))
		}
		return 0, fmt.Errorf("load socket termination: %w", err)
	}
	defer objs.Close()
	for _, be := range backends {
		if !be.Addr().Unmap().Is4() {
			continue
		}
		a := be.Addr().Unmap().As4()
		if err := objs.BackendAddr.Set(binary.NativeEndian.Uint32(a[:])); err != nil {
			return 0, fmt.Errorf("destroy sockets of %s: %w", be, err)
		}
		if err := objs.BackendPort.Set(binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, be.Port()))); err != nil {
			return 0, fmt.Errorf("destroy sockets of %s: %w", be, err)
		}
		// An iterator walks the sockets of the namespace it is made in.
		err := routing.Do(netns, func() error {
			it, err := link.AttachIter(link.IterOptions{Program: objs.DestroyUdp4})
			if err != nil {
				return err
			}
			defer it.Close()
			rd, err := it.Open()
			if err != nil {
				return err
			}
			defer rd.Close()
			_, err = io.Copy(io.Discard, rd)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("destroy UDP sockets of %s in %s: %w", be, cmpOr(netns, "this namespace"), err)
		}
	}
	var n uint64
	if err := objs.Destroyed.Get(&n); err != nil {
		return 0, fmt.Errorf("destroy UDP sockets: %w", err)
	}
	return int(n), nil
}
