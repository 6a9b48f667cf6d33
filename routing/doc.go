// Package routing holds the netlink and network namespace steps a container
// network needs around the eBPF datapath: named network namespaces, the pod
// veth pair with ptp-like addressing, per-endpoint routes in the node and the
// sysctls host routing relies on.
//
// Every function works in the network namespace given by path (such as
// /var/run/netns/NAME) through a netlink handle, or enters it with [Do] where
// a thread must. An empty path means this process's network namespace
// everywhere: the one it started in (/proc/self/ns/net as the process
// starts), never the namespace that the calling thread happens to be in.
//
// Only IPv4 is supported so far; IPv6 input is refused with a clear error.
package routing
