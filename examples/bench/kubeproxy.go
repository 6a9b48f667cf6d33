package main

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
)

// kubeService is one port of a Kubernetes service as kube-proxy writes
// its rules: a KUBE-SERVICES rule for the frontend jumping to the port's
// KUBE-SVC-* chain, which picks one KUBE-SEP-* chain per endpoint.
type kubeService struct {
	Name      string // namespace/name:port, as kube-proxy's comments and chain names have it
	Frontend  netip.AddrPort
	Endpoints []netip.AddrPort
}

// kubeProxyRules returns an iptables-restore input shaped like what
// kube-proxy's iptables mode writes on a node of a cluster with services
// ClusterIP services of two endpoints each, followed by the services of
// measured: the filter table's hooks into KUBE-FORWARD (with the conntrack
// rule that accepts established flows), KUBE-PROXY-FIREWALL and
// KUBE-SERVICES, and the nat table's KUBE-SERVICES with one rule per
// service port jumping to its KUBE-SVC-* chain, which picks one of its
// KUBE-SEP-* chains that DNAT to an endpoint, plus KUBE-POSTROUTING's
// masquerade of marked traffic.
//
// Traffic between pods matches none of the services: every new connection
// walks all of nat KUBE-SERVICES in PREROUTING (and OUTPUT), and every
// packet is tracked by conntrack, as on a kube-proxy node. The services'
// addresses are 10.96.0.0/16 and their endpoints 10.244.0.0/16: addresses
// that exist nowhere. The measured services' rules come last in
// KUBE-SERVICES, before only the NodePort rule that kube-proxy keeps last:
// a new connection to them walks the rules of all the others first.
func kubeProxyRules(services int, clusterCIDR string, measured []kubeService) string {
	svcs := append(otherServices(services), measured...)

	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

	w("*filter")
	for _, c := range []string{"KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"} {
		w(":%s - [0:0]", c)
	}
	w(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`)
	w(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	w(`-A INPUT -j KUBE-FIREWALL`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	w(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -j KUBE-FIREWALL`)
	w(`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`)
	w(`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
	w("COMMIT")

	w("*nat")
	for _, c := range []string{"KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SERVICES"} {
		w(":%s - [0:0]", c)
	}
	sepChain := func(s kubeService, ep netip.AddrPort) string { return chainName("KUBE-SEP-", s.Name+ep.String()) }
	for _, s := range svcs {
		w(":%s - [0:0]", chainName("KUBE-SVC-", s.Name))
		for _, ep := range s.Endpoints {
			w(":%s - [0:0]", sepChain(s, ep))
		}
	}
	w(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	w(`-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000`)
	w(`-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`)
	w(`-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0`)
	w(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for _, s := range svcs {
		svcChain, ip, port := chainName("KUBE-SVC-", s.Name), s.Frontend.Addr(), s.Frontend.Port()
		w(`-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment "%s cluster IP" -m tcp --dport %d -j %s`, ip, s.Name, port, svcChain)
		w(`-A %s ! -s %s -d %s/32 -p tcp -m comment --comment "%s cluster IP" -m tcp --dport %d -j KUBE-MARK-MASQ`, svcChain, clusterCIDR, ip, s.Name, port)
		for e, ep := range s.Endpoints {
			sep := sepChain(s, ep)
			if left := len(s.Endpoints) - e; left > 1 {
				w(`-A %s -m comment --comment "%s -> %s" -m statistic --mode random --probability %.11f -j %s`, svcChain, s.Name, ep, 1/float64(left), sep)
			} else {
				w(`-A %s -m comment --comment "%s -> %s" -j %s`, svcChain, s.Name, ep, sep)
			}
			w(`-A %s -s %s/32 -m comment --comment "%s" -j KUBE-MARK-MASQ`, sep, ep.Addr(), s.Name)
			w(`-A %s -p tcp -m comment --comment "%s" -m tcp -j DNAT --to-destination %s`, sep, s.Name, ep)
		}
	}
	w(`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	w("COMMIT")
	return b.String()
}

// otherServices are n ClusterIP services, port 80, of two endpoints each
// (port 8080): the services of a cluster that the benchmark's traffic
// does not go to.
func otherServices(n int) []kubeService {
	svcs := make([]kubeService, 0, n)
	for i := range n {
		svcs = append(svcs, kubeService{
			Name:     fmt.Sprintf("bench/svc-%d:http", i),
			Frontend: netip.AddrPortFrom(netip.MustParseAddr(serviceIP(i)), 80),
			Endpoints: []netip.AddrPort{
				netip.AddrPortFrom(netip.MustParseAddr(endpointIP(i, 0)), 8080),
				netip.AddrPortFrom(netip.MustParseAddr(endpointIP(i, 1)), 8080),
			},
		})
	}
	return svcs
}

// serviceIP is the cluster IP of service i, in 10.96.0.0/16 from
// 10.96.0.11 on.
func serviceIP(i int) string { return fmt.Sprintf("10.96.%d.%d", (i+10)/250, (i+10)%250+1) }

// endpointIP is endpoint e of service i, in 10.244.0.0/16.
func endpointIP(i, e int) string {
	n := 2*i + e
	return fmt.Sprintf("10.244.%d.%d", n/250, n%250+2)
}

// chainName names a chain as kube-proxy does: prefix and 16 characters of
// the base32 SHA-256 of what it stands for.
func chainName(prefix, of string) string {
	h := sha256.Sum256([]byte(of))
	return prefix + base32.StdEncoding.EncodeToString(h[:])[:16]
}
