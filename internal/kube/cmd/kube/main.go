// Command kube runs a local Kubernetes API server (package internal/kube)
// for the Makefile:
//
//	kube build     builds etcd and kube-apiserver into .cache/kube/bin (make kube-bin)
//	kube up DIR    starts them in DIR and leaves them running (make kube-up)
//	kube down DIR  stops them and removes DIR (make kube-down)
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hostrouting/hostrouting/internal/kube"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kube:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch {
	case len(args) == 1 && args[0] == "build":
		_, err := kube.Build(ctx)
		return err
	case len(args) == 2 && args[0] == "up":
		s, err := kube.Start(ctx, args[1], kube.Options{Detach: true})
		if err != nil {
			return err
		}
		fmt.Printf("kube-apiserver at %s; stop it with: make kube-down KUBE_DIR=%s\n", s.URL, args[1])
		fmt.Printf("export KUBECONFIG=%s\n", s.Kubeconfig)
		return nil
	case len(args) == 2 && args[0] == "down":
		return kube.Down(args[1])
	}
	return fmt.Errorf("usage: kube build | kube up DIR | kube down DIR")
}
