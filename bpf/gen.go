// Package bpf holds the hostrouting datapath's C sources (hostrouting.c,
// sockterm.c, lib/*.h) and their BPF_PROG_RUN tests. Their bpf2go output,
// the compiled objects and the Go mirrors of the C structs, is the
// internal package internal/bpf: no C struct is part of the SDK's API.
package bpf
