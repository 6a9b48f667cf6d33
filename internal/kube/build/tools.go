//go:build tools

// Package build is the recipe for the two binaries of the local Kubernetes
// API server that tests and `make kube-up` run: kube-apiserver (from
// k8s.io/kubernetes) and etcd (go.etcd.io/etcd/server/v3, the main package of
// the etcd binary). It is a module of its own, so that `./...` at the root
// stops here and embedders never inherit Kubernetes' module graph.
// k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces its staging
// modules with local directories), so go.mod replaces each staging module by
// its published v0 twin instead. Package internal/kube builds both with
// `go build -C internal/kube/build`.
package build

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
