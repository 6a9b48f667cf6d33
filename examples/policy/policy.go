// Package policy is an example ingress policy for the hostrouting
// datapath, as an embedder writes one: C against
// bpf/include/hostrouting/policy.h, built with bpf2go, loaded with the
// node's map replacements and put into endpoints' policy slots.
//
//	spec, _ := policy.LoadPolicy()
//	replacements, err := dp.PolicyMapReplacements()
//	var objs policy.PolicyObjects
//	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: replacements})
//	err = objs.Denied.Put(policy.PolicyPair{Endpoint: uint32(b.ID), Source: uint32(a.ID)}, uint8(1))
//	err = dp.SetIngressPolicy(b.IP, objs.DenyListed)
//
// Its program, deny_listed, drops packets into an endpoint from the
// sources listed for it in the denied map (source 0: from outside the
// node) and lets the rest in.
package policy

// Regenerate with `go generate ./examples/policy` (needs clang-19 and libbpf-dev).
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I../../bpf/include" -target bpfel -type pair Policy policy.c
