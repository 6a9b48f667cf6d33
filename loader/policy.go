package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// PolicyHook is the global BPF function every packet into an endpoint
// passes, in each program that delivers to endpoints. It allows all
// traffic until an embedder replaces it (see AttachIngressPolicy).
const PolicyHook = "hr_ingress_policy"

// policyPrograms are the programs that deliver into endpoints, each with
// its own copy of the hook.
var policyPrograms = []Program{FromContainer, ToContainer, FromNetdev}

// AttachIngressPolicy replaces the ingress policy hook in every program of
// the node with the extension program spec (type ebpf.Extension):
//
//	SEC("freplace/hr_ingress_policy")
//	int policy(struct __sk_buff *ctx, __u32 endpoint_id)
//
// returning 0 to allow the packet into the endpoint and 1 to drop it. The
// extension is loaded once per program, and its links are pinned under the
// pin path, so it stays in force after Close and is adopted with the node.
// A policy attached before replaces the old one. Programs replaced by a
// reload of the node (Node.Replaced) need the policy attached again.
func (n *Node) AttachIngressPolicy(spec *ebpf.ProgramSpec) error {
	if spec == nil || spec.Type != ebpf.Extension {
		return errors.New("attach ingress policy: want a program of type Extension")
	}
	if err := n.DetachIngressPolicy(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(n.PinPath, "policy"), 0o700); err != nil {
		return fmt.Errorf("attach ingress policy: %w", err)
	}
	for _, p := range policyPrograms {
		if err := n.attachPolicy(spec, p); err != nil {
			n.DetachIngressPolicy()
			return fmt.Errorf("attach ingress policy to %s: %w", p, err)
		}
	}
	return nil
}

func (n *Node) attachPolicy(spec *ebpf.ProgramSpec, p Program) error {
	spec = spec.Copy()
	spec.AttachTarget = n.progs[p]
	spec.AttachTo = PolicyHook
	ext, err := ebpf.NewProgram(spec)
	if err != nil {
		return fmt.Errorf("load extension: %w", err)
	}
	defer ext.Close()
	l, err := link.AttachFreplace(nil, "", ext)
	if err != nil {
		return err
	}
	defer l.Close()
	return l.Pin(n.policyPin(p))
}

// DetachIngressPolicy restores the allow-all ingress policy hook.
func (n *Node) DetachIngressPolicy() error {
	var errs []error
	for _, p := range policyPrograms {
		errs = append(errs, unpinLink(n.policyPin(p)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach ingress policy: %w", err)
	}
	return nil
}

func (n *Node) policyPin(p Program) string {
	return filepath.Join(n.PinPath, "policy", p.objectName())
}
