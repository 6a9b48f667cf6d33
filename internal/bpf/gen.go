// Package bpf is the bpf2go output of the datapath's C sources in the
// repository's bpf directory: the compiled objects and the Go types that
// mirror their structs. It is internal: a C struct may change with any
// commit. Regenerate with `go generate ./internal/bpf` (needs clang-19 and
// libbpf-dev).
package bpf

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type endpoint_info -type endpoint_stats -type metric_value -type node_info -type node_entry -type endpoint_meta -type lb4_key -type lb4_service -type lb4_backend -type lb4_reverse_nat -type ct4_key -type ct_entry -type nat4_entry Hostrouting ../../bpf/hostrouting.c

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel SockTerm ../../bpf/sockterm.c

import "crypto/sha256"

// ObjectHash identifies the compiled datapath object, so that a loader can
// tell whether pinned programs came from the same code.
func ObjectHash() [sha256.Size]byte {
	return sha256.Sum256(_HostroutingBytes)
}
