# The two commands a fresh machine needs (as root):
#   make demo   runs examples/samenode: two pods, BPF host routing, counters
#   make test   installs what the tests drive and runs every test
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

GOBIN := $(shell go env GOPATH)/bin
TESTLOG ?= test.log
CNITOOL_VERSION := v1.3.1
KUBE_DIR ?= .cache/kube/server

.PHONY: demo test test-deps vet print-modules generate kube-bin kube-up kube-down

demo:
	go run ./examples/samenode

# Debian packages the tests use (ptp and host-local for the CNI tests,
# iptables for the FORWARD counters, bpftool for xlated dumps, iperf3 for
# the benchmark's smoke test), cnitool,
# and the bpf filesystem.
test-deps:
	@missing=""; \
	for cmd in ip iptables iptables-restore bpftool tcpdump iperf3 conntrack curl ping; do command -v $$cmd >/dev/null || missing=1; done; \
	[ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/host-local ] || missing=1; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			iproute2 iptables bpftool tcpdump iperf3 conntrack curl iputils-ping containernetworking-plugins >/dev/null; \
	fi
	@[ -x $(GOBIN)/cnitool ] || go install github.com/containernetworking/cni/cnitool@$(CNITOOL_VERSION)
	@# Mount bpffs once up front: test packages run in parallel, and two
	@# loaders mounting it at once would stack two instances.
	@[ "$$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = bpf_fs ] || mount -t bpf bpf /sys/fs/bpf

# The modules: the SDK at the root (an embedder inherits its four
# dependencies only), and nested modules for what needs more: the
# Prometheus collector, the examples that use client-go, the CNI library,
# gopacket or gonum/plot, and an outside embedder's module that checks the
# root's module graph. ./... stops at a nested go.mod, so each module is
# tested on its own, in turn, into one log.
# kube-bin comes first: tests that start an API server would otherwise
# build it inside go test's 10-minute timeout.
MODULES := . datapath/metrics examples/agent examples/cluster examples/cni-hostrouting examples/hrctl examples/bench internal/embedder
TESTFILTER := grep -E '^(--- (FAIL|SKIP)|ok|FAIL|panic)|_test.go:[0-9]+:'

test: test-deps kube-bin
	@rm -f $(TESTLOG); status=0; \
	for m in $(MODULES); do \
		echo "=== module $$m"; \
		PATH="$(GOBIN):$$PATH" go -C $$m test -count=1 -v ./... 2>&1 | tee -a $(TESTLOG) | $(TESTFILTER) || status=1; \
	done; exit $$status

print-modules:
	@echo $(MODULES)

# go vet in every module.
vet:
	@for m in $(MODULES); do go -C $$m vet ./... || exit 1; done

# A local Kubernetes API server (etcd and kube-apiserver on 127.0.0.1):
# kube-bin builds them once into .cache/kube/bin (about 12 minutes the first
# time), kube-up starts them in KUBE_DIR and leaves them running, kube-down
# stops them and removes KUBE_DIR.
kube-bin:
	go run ./internal/kube/cmd/kube build

kube-up:
	go run ./internal/kube/cmd/kube up $(KUBE_DIR)

kube-down:
	go run ./internal/kube/cmd/kube down $(KUBE_DIR)

# Regenerates the bpf2go output (needs clang-19 and libbpf-dev).
generate:
	@for m in $(MODULES); do go -C $$m generate ./... || exit 1; done
