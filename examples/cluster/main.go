// Command cluster runs the seeds' scenario end to end, driven by a real
// Kubernetes API server: kube-proxy replacement, BPF masquerade and BPF host
// routing on three kind-like nodes, each with a hostrouting agent.
//
// It starts etcd and kube-apiserver on 127.0.0.1 (package internal/kube,
// built once into .cache/kube/bin), makes a wire and three node namespaces
// as kind's docker network would (172.18.0.2-4, pod CIDRs 10.0.0-2.0/24),
// writes the three Node objects with their pod CIDRs and InternalIPs, and
// starts an agent per node (package examples/agent/agent). Each agent
// writes its node's CNI configuration; the pods are added with cnitool
// through it (ptp, host-local, hostrouting), as containerd would. Then it
// creates, through the API, the seeds' service: a DaemonSet-like web pod
// per node behind a NodePort service (port 80, nodePort 32000), with its
// EndpointSlice (there is no controller manager), and curls it: the
// ClusterIP from a client pod, the NodePort of every node from outside.
// Finally it removes everything it made.
//
// Run it as root:
//
//	go run ./examples/cluster
//
// The machine's root network namespace is never changed: everything lives
// in namespaces named hr-cluster-<random>-*, each node's BPF objects are
// pinned under /sys/fs/bpf/hostrouting-cluster-<random>-<node>, and the API
// server only listens on 127.0.0.1.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// options configure one run of the demo.
type options struct {
	Curls int    // requests to the ClusterIP; default 6
	ID    string // names the namespaces and pin directories; default random
	Log   io.Writer
}

func main() {
	var opts options
	var verbose bool
	flag.IntVar(&opts.Curls, "curls", 6, "requests to the service's ClusterIP from the client pod")
	flag.BoolVar(&verbose, "v", false, "print the agents' log lines")
	flag.Parse()
	if flag.NArg() > 0 || opts.Curls < 1 || opts.Curls > 100 {
		flag.Usage()
		os.Exit(2)
	}
	opts.Log = io.Discard
	if verbose {
		opts.Log = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

// run builds the cluster, programs the service through the API, curls it
// and removes everything, also when it fails or ctx ends.
func run(ctx context.Context, opts options, out io.Writer) (err error) {
	if opts.Curls <= 0 {
		opts.Curls = 6
	}
	if opts.ID == "" {
		b := make([]byte, 4)
		rand.Read(b)
		opts.ID = hex.EncodeToString(b)
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	c := &cluster{id: opts.ID, out: out, log: opts.Log}
	defer func() {
		if terr := c.teardown(); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
		} else {
			fmt.Fprintf(out, "\nRemoved everything: agents, datapaths (%s*), pods, nodes, API server.\n", c.pinPrefix())
		}
	}()
	for _, step := range []func(context.Context) error{
		c.startAPIServer, c.makeNodes, c.startAgents, c.addPods, c.createService,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return c.curl(ctx, opts.Curls)
}
