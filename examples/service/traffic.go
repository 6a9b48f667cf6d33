package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/internal/topology"
)

// The pods' processes are this program again, started by `ip netns exec`
// in the pod's namespace with one of these variables set (childMain).
const (
	// webEnv makes it a web pod's HTTP server: "name ip:port".
	webEnv = "HOSTROUTING_SERVICE_WEB"
	// getEnv makes it a client, curl-like: one GET of http://ip:port/.
	getEnv = "HOSTROUTING_SERVICE_GET"
	// runEnv names the run a pod's process belongs to (the cluster's
	// prefix), for those who look for what a run left behind.
	runEnv = "HOSTROUTING_SERVICE_RUN"
)

// childMain runs the program as a pod's process if the environment says
// so, and returns its exit code and true; else 0 and false.
func childMain() (int, bool) {
	if spec, ok := os.LookupEnv(webEnv); ok {
		return serveWeb(spec), true
	}
	if target, ok := os.LookupEnv(getEnv); ok {
		return get(target), true
	}
	return 0, false
}

// serveWeb is a web pod: it answers every HTTP request with its name, its
// address and the client's address as its socket sees it. It says "ready"
// (or why not) on stdout once it listens, and exits when stdin ends: when
// the demo that started it ends, however it ends, unless the demo wrote
// "keep" first (--keep).
func serveWeb(spec string) int {
	name, addr, ok := strings.Cut(spec, " ")
	ap, err := netip.ParseAddrPort(addr)
	if !ok || err != nil {
		fmt.Printf("error: %s=%q: want \"name ip:port\"\n", webEnv, spec)
		return 2
	}
	ln, err := net.Listen("tcp4", ap.String())
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	go func() {
		s := bufio.NewScanner(os.Stdin)
		for s.Scan() {
			if s.Text() == "keep" {
				return
			}
		}
		os.Exit(0)
	}()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "pod %s %s\nclient %s\n", name, ap.Addr(), r.RemoteAddr)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // stderr is /dev/null anyway
	}
	srv.Serve(ln)
	return 1
}

// reply is what a client process reports of its request.
type reply struct {
	Local  string `json:"local"`  // the socket's own address
	Peer   string `json:"peer"`   // its peer as getpeername shows it
	Socket string `json:"socket"` // its peer in the kernel's socket table, as ss shows it
	Status int    `json:"status"`
	Body   string `json:"body"`
}

// get is a client, curl-like: one GET of http://target/ on a connection of
// its own, reported as a reply in JSON on stdout.
func get(target string) int {
	conn, err := net.DialTimeout("tcp4", target, 3*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := reply{Local: conn.LocalAddr().String(), Peer: conn.RemoteAddr().String()}
	if r.Socket, err = kernelPeer(conn.LocalAddr().String()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+target+"/", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r.Status, r.Body = resp.StatusCode, string(body)
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return 1
	}
	return 0
}

// kernelPeer returns the remote address of the TCP socket with local
// address local, from the kernel's socket table of the process's network
// namespace (/proc/self/net/tcp, what ss and netstat read): the address
// the socket is really connected to, which getpeername may dress up.
func kernelPeer(local string) (string, error) {
	want, err := netip.ParseAddrPort(local)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile("/proc/self/net/tcp")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		l, err1 := procAddr(f[1])
		r, err2 := procAddr(f[2])
		if err1 == nil && err2 == nil && l == want {
			return r.String(), nil
		}
	}
	return "", fmt.Errorf("no socket %s in /proc/self/net/tcp", local)
}

// procAddr parses an address of /proc/net/tcp: the IPv4 address as the
// kernel holds it (network order) printed as a native-endian word, a
// colon, the port in hex.
func procAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok || len(a) != 8 {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	w, err := strconv.ParseUint(a, 16, 32)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	var ip [4]byte
	binary.NativeEndian.PutUint32(ip[:], uint32(w))
	return netip.AddrPortFrom(netip.AddrFrom4(ip), uint16(port)), nil
}

// server is a web pod's HTTP server process.
type server struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startServer starts p's HTTP server on p's address, port targetPort, in
// p's namespace, and waits until it listens.
func startServer(ctx context.Context, c *cluster, p *pod) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", "netns", "exec", p.netns, exe)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s", webEnv, p.name, netip.AddrPortFrom(p.ip, targetPort)), runEnv+"="+c.prefix)
	// A group of its own: a Ctrl-C in the terminal is the demo's to
	// handle, and a server left by --keep stays out of the shell's jobs.
	// stderr is /dev/null: nothing the demo's output goes to is held
	// open by a server it leaves running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s := &server{cmd: cmd}
	if s.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	said := make(chan string, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil && line == "" {
			line = "exited: " + err.Error()
		}
		said <- strings.TrimSpace(line)
	}()
	select {
	case line := <-said:
		if line == "ready" {
			return s, nil
		}
		err = fmt.Errorf("HTTP server: %s", line)
	case <-time.After(10 * time.Second):
		err = errors.New("HTTP server: not listening after 10s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	return nil, errors.Join(err, s.stop())
}

// pid is the server's process ID.
func (s *server) pid() int { return s.cmd.Process.Pid }

// stop ends the server and waits for it.
func (s *server) stop() error {
	s.stdin.Close()
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop HTTP server %d: %w", s.pid(), err)
	}
	s.cmd.Wait() // killed: its exit status says so
	return nil
}

// keep leaves the server running after the demo ends.
func (s *server) keep() error {
	_, err := io.WriteString(s.stdin, "keep\n")
	s.stdin.Close()
	go s.cmd.Wait() // reaps it, should it end while the demo runs
	return err
}

// request is one request of the demo.
type request struct {
	client string // "pod net" or "wire"
	netns  string // the client's namespace (name)
	cgroup string // the cgroup its process runs in; "" for the demo's own
	url    netip.AddrPort
	node   *node // the node whose NodePort it is; nil for the ClusterIP
}

// result is a request's outcome.
type result struct {
	request
	reply
	err     error
	backend *pod           // who answered
	saw     netip.AddrPort // the client's address as the backend saw it
	socket  netip.AddrPort // the peer of the client's socket, in the kernel's socket table
	peer    netip.AddrPort // the same as getpeername showed it
}

// do sends r from a process of its own in the client's namespace (and
// cgroup), as `kubectl exec net -- curl` would.
func (r request) do(ctx context.Context, c *cluster) result {
	res := result{request: r}
	exe, err := os.Executable()
	if err != nil {
		res.err = err
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", r.netns, exe)
	cmd.Env = append(os.Environ(), getEnv+"="+r.url.String(), runEnv+"="+c.prefix)
	attr := &syscall.SysProcAttr{Setpgid: true}
	if r.cgroup != "" {
		dir, err := os.Open(r.cgroup)
		if err != nil {
			res.err = err
			return res
		}
		defer dir.Close()
		attr.UseCgroupFD, attr.CgroupFD = true, int(dir.Fd())
	}
	cmd.SysProcAttr = attr
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		res.err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		return res
	}
	if err := json.Unmarshal(stdout.Bytes(), &res.reply); err != nil {
		res.err = fmt.Errorf("client said %q: %w", stdout.String(), err)
		return res
	}
	res.err = res.parse(c)
	return res
}

// parse reads who answered from the reply.
func (res *result) parse(c *cluster) error {
	var err error
	if res.Status != http.StatusOK {
		return fmt.Errorf("HTTP status %d", res.Status)
	}
	if res.socket, err = netip.ParseAddrPort(res.Socket); err != nil {
		return fmt.Errorf("socket peer: %w", err)
	}
	if res.peer, err = netip.ParseAddrPort(res.Peer); err != nil {
		return fmt.Errorf("getpeername: %w", err)
	}
	// "pod web-worker2 10.0.2.10\nclient 10.0.2.20:43120\n"
	f := strings.Fields(res.Body)
	if len(f) != 5 || f[0] != "pod" || f[3] != "client" {
		return fmt.Errorf("answer %q: not a web pod's", res.Body)
	}
	for _, p := range c.web {
		if p.name == f[1] && p.ip.String() == f[2] {
			res.backend = p
		}
	}
	if res.backend == nil {
		return fmt.Errorf("answer %q: no such web pod", res.Body)
	}
	if res.saw, err = netip.ParseAddrPort(f[4]); err != nil {
		return fmt.Errorf("answer %q: %w", res.Body, err)
	}
	return nil
}

// sendRequests sends the demo's requests and prints a row for each: the
// client pod to the ClusterIP until every backend has answered (at least
// 2*opts.Count times) and opts.Count times to another node's NodePort, the
// wire opts.Count times to each node's NodePort.
func sendRequests(ctx context.Context, out io.Writer, c *cluster, opts options) ([]result, error) {
	fmt.Fprintf(out, "\nRequests (each a process of its own in the client's namespace, a GET on a new connection):\n")
	fmt.Fprintf(out, "  SOCKET PEER is the client socket's peer in the kernel's socket table, as ss shows it.\n")
	row := "  %-3s %-14s %-27s %-17s %-18s %s\n"
	fmt.Fprintf(out, row, "#", "CLIENT", "URL", "SOCKET PEER", "ANSWERED BY", "BACKEND SAW CLIENT AS")
	var results []result
	send := func(r request) (result, error) {
		res := r.do(ctx, c)
		if err := ctx.Err(); err != nil {
			return res, err
		}
		results = append(results, res)
		answer := "FAILED: " + fmt.Sprint(res.err)
		socket, saw := "-", "-"
		if res.err == nil {
			answer, socket, saw = res.backend.name, res.socket.String(), res.saw.String()
		}
		client := r.client
		if r.client == c.client.name {
			client = fmt.Sprintf("%s (%s)", r.client, c.client.node.name)
		}
		fmt.Fprintf(out, row, fmt.Sprint(len(results)), client, "http://"+r.url.String()+"/", socket, answer, saw)
		return res, nil
	}

	fromPod := request{client: c.client.name, netns: c.client.netns, cgroup: c.cgroup, url: clusterIP}
	seen := map[*pod]int{}
	for i := 0; i < maxClusterIPRequests && (i < 2*opts.Count || len(seen) < len(c.web)); i++ {
		res, err := send(fromPod)
		if err != nil {
			return nil, err
		}
		if res.err == nil {
			seen[res.backend]++
		}
	}
	target := c.nodes[targetNode]
	fromPod.url, fromPod.node = netip.AddrPortFrom(target.ip, nodePort), target
	for range opts.Count {
		if _, err := send(fromPod); err != nil {
			return nil, err
		}
	}
	for _, n := range c.nodes {
		fromWire := request{client: "wire", netns: c.wire.NetnsName, url: netip.AddrPortFrom(n.ip, nodePort), node: n}
		for range opts.Count {
			if _, err := send(fromWire); err != nil {
				return nil, err
			}
		}
	}

	var counts []string
	total := 0
	for _, p := range c.web {
		counts = append(counts, fmt.Sprintf("%s %d", p.name, seen[p]))
		total += seen[p]
	}
	fmt.Fprintf(out, "\nClusterIP %s from pod %s: %d answers, by %s.\n", clusterIP, c.client.name, total, strings.Join(counts, ", "))
	if opts.SocketLB {
		fmt.Fprintf(out, "Socket LB: pod %s's sockets were connected to the backend itself at connect() (SOCKET PEER) while\n"+
			"  getpeername showed %s: its packets, from the first SYN, were for the backend, as the seed's capture shows.\n", c.client.name, clusterIP)
	} else {
		fmt.Fprintf(out, "tc LB: pod %s's sockets were connected to the ClusterIP; from-container on its lxc translated each packet.\n", c.client.name)
	}
	fmt.Fprintf(out, "NodePort: a backend on the node dialled saw the client (the wire %s, or pod %s masqueraded to %s's %s);\n"+
		"  one on another node saw the dialled node's address, which translated the flow and carries its replies back.\n",
		topology.Gateway.Addr(), c.client.name, c.client.node.name, c.client.node.ip)
	return results, nil
}

// printServices prints n's services as `cilium service list` does.
func printServices(out io.Writer, n *node, services []datapath.Service) {
	fmt.Fprintf(out, "\n$ cilium service list   # %s's datapath.Services(), each row Service.String()\n", n.name)
	fmt.Fprintf(out, "%-4s %-26s %-12s %s\n", "ID", "Frontend", "Service Type", "Backend")
	for _, s := range services {
		fmt.Fprintln(out, s)
	}
}

// Patterns of the service in `iptables-save` and `conntrack -L`.
var (
	iptablesPattern  = fmt.Sprintf(`%d|%s`, nodePort, regexp.QuoteMeta(clusterIP.Addr().String()))
	conntrackPattern = fmt.Sprintf(`port=%d\b|=%s\b`, nodePort, regexp.QuoteMeta(clusterIP.Addr().String()))
	iptablesRE       = regexp.MustCompile(iptablesPattern)
	conntrackRE      = regexp.MustCompile(conntrackPattern)
)

// netfilter is what a node's netfilter holds after the requests.
type netfilter struct {
	node        *node
	rules       []string // iptables-save's lines
	ruleMatches []string // those of the service
	flows       []string // conntrack -L's entries
	flowMatches []string // those of the service
	tcpFlows    int      // TCP entries
	controlFlow bool     // the control ping's entry is there
}

// kubeProxyRule is the rule run adds to every node's FORWARD chain:
// kube-proxy's INVALID drop (in its KUBE-FORWARD chain).
const kubeProxyRule = "-A FORWARD -m conntrack --ctstate INVALID -j DROP"

// inspectNetfilter pings every node from the wire, a flow its stack
// tracks, then reads each node's iptables-save and conntrack -L and prints
// what they have of the service: nothing.
func inspectNetfilter(ctx context.Context, out io.Writer, c *cluster) ([]netfilter, error) {
	for _, n := range c.nodes {
		if err := netcheck.PingAll(ctx, c.wire.Netns, n.ip, netcheck.PingOptions{Count: 1}); err != nil {
			return nil, fmt.Errorf("control ping of %s: %w", n.name, err)
		}
	}
	fmt.Fprintf(out, "\nNetfilter in the nodes, where kube-proxy would have put the service. Each node's FORWARD chain has kube-proxy's\n"+
		"INVALID drop, whose conntrack match turns nf_conntrack on: it tracks every flow the node's stack sees, such as a\n"+
		"control ping from the wire.\n")
	var nfs []netfilter
	for _, n := range c.nodes {
		nf := netfilter{node: n}
		o, err := nsCommand(ctx, n.netns, "iptables-save")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.name, err)
		}
		nf.rules = nonEmptyLines(o)
		nf.ruleMatches = matching(nf.rules, iptablesRE)
		o, err = nsCommand(ctx, n.netns, "conntrack", "-L")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.name, err)
		}
		for _, line := range nonEmptyLines(o) {
			if strings.HasPrefix(line, "conntrack v") { // its summary on stderr
				continue
			}
			nf.flows = append(nf.flows, line)
			f := strings.Fields(line)
			switch {
			case len(f) > 0 && f[0] == "tcp":
				nf.tcpFlows++
			case len(f) > 0 && f[0] == "icmp" && strings.Contains(line, " src="+topology.Gateway.Addr().String()+" dst="+n.ip.String()+" "):
				nf.controlFlow = true
			}
		}
		nf.flowMatches = matching(nf.flows, conntrackRE)
		nfs = append(nfs, nf)

		fmt.Fprintf(out, "$ ip netns exec %s iptables-save | grep -E '%s'\n", n.netns, iptablesPattern)
		printMatches(out, nf.ruleMatches)
		fmt.Fprintf(out, "    (iptables-save: %d lines, no rule but %q)\n", len(nf.rules), kubeProxyRule)
		fmt.Fprintf(out, "$ ip netns exec %s conntrack -L | grep -E '%s'\n", n.netns, conntrackPattern)
		printMatches(out, nf.flowMatches)
		fmt.Fprintf(out, "    (conntrack -L: %s, %d of them TCP:)\n", plural(len(nf.flows), "flow"), nf.tcpFlows)
		for _, f := range nf.flows {
			fmt.Fprintf(out, "      %s\n", f)
		}
	}
	return nfs, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func printMatches(out io.Writer, lines []string) {
	if len(lines) == 0 {
		fmt.Fprintf(out, "    nothing\n")
	}
	for _, l := range lines {
		fmt.Fprintf(out, "    %s\n", l)
	}
}

func nonEmptyLines(s string) []string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func matching(lines []string, re *regexp.Regexp) []string {
	var m []string
	for _, l := range lines {
		if re.MatchString(l) {
			m = append(m, l)
		}
	}
	return m
}

// checkClaims returns an error naming every claim of the demo that does
// not hold.
func checkClaims(c *cluster, opts options, results []result, services []datapath.Service, nfs []netfilter) error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	seen := map[*pod]bool{}
	for i, r := range results {
		what := fmt.Sprintf("request %d (%s → %s)", i+1, r.client, r.url)
		if r.err != nil {
			fail("%s: %v", what, r.err)
			continue
		}
		if r.peer != r.url {
			fail("%s: getpeername showed %s, want the address dialled", what, r.peer)
		}
		var wantSaw netip.Addr // the client's address as the backend sees it
		switch {
		case r.node == nil: // the ClusterIP, from the client pod
			seen[r.backend] = true
			wantSaw = c.client.ip
			want := clusterIP
			if opts.SocketLB {
				want = netip.AddrPortFrom(r.backend.ip, targetPort)
			}
			if r.socket != want {
				fail("%s: the client's socket was connected to %s, want %s", what, r.socket, want)
			}
		case r.backend.node != r.node: // a NodePort with a backend elsewhere
			wantSaw = r.node.ip
		case r.client == "wire":
			wantSaw = topology.Gateway.Addr()
		default: // masqueraded
			wantSaw = c.client.node.ip
		}
		if r.node != nil && r.socket != r.url {
			fail("%s: the client's socket was connected to %s, want the NodePort", what, r.socket)
		}
		if r.saw.Addr() != wantSaw {
			fail("%s: %s saw the client as %s, want %s", what, r.backend.name, r.saw, wantSaw)
		}
	}
	if len(seen) != len(c.web) {
		fail("the ClusterIP was answered by %d of the %d backends", len(seen), len(c.web))
	}
	perTarget := map[netip.AddrPort]int{}
	for _, r := range results {
		perTarget[r.url]++
	}
	if perTarget[clusterIP] < 2*opts.Count {
		fail("%d requests to the ClusterIP, want at least %d", perTarget[clusterIP], 2*opts.Count)
	}
	for _, n := range c.nodes {
		want := opts.Count // from the wire
		if n == c.nodes[targetNode] {
			want += opts.Count // and from the client pod
		}
		if got := perTarget[netip.AddrPortFrom(n.ip, nodePort)]; got != want {
			fail("%d requests to %s's NodePort, want %d", got, n.name, want)
		}
	}

	n := c.nodes[targetNode]
	if len(services) != 2 {
		fail("%s has %d services, want the ClusterIP and its NodePort", n.name, len(services))
	}
	for i, s := range services {
		want := []struct {
			t     datapath.ServiceType
			front netip.AddrPort
		}{{datapath.ClusterIP, clusterIP}, {datapath.NodePort, netip.AddrPortFrom(n.ip, nodePort)}}
		if i < len(want) && (s.Type != want[i].t || s.Frontend != want[i].front || len(s.Backends) != len(c.web)) {
			fail("%s's service %d: %s %s with %d backends, want %s %s with %d", n.name, s.ID, s.Type, s.Frontend, len(s.Backends),
				want[i].t, want[i].front, len(c.web))
		}
	}

	if len(nfs) != len(c.nodes) {
		fail("netfilter of %d nodes, want %d", len(nfs), len(c.nodes))
	}
	for _, nf := range nfs {
		name := nf.node.name
		if len(nf.ruleMatches) > 0 {
			fail("%s: iptables-save has the service: %q", name, nf.ruleMatches)
		}
		if !slices.Contains(nf.rules, kubeProxyRule) {
			fail("%s: iptables-save lacks %q: not the node's netfilter", name, kubeProxyRule)
		}
		if len(nf.flowMatches) > 0 {
			fail("%s: conntrack tracks the service: %q", name, nf.flowMatches)
		}
		if nf.tcpFlows > 0 {
			fail("%s: conntrack tracks %d TCP flows: the service's flows passed the node's stack", name, nf.tcpFlows)
		}
		if !nf.controlFlow {
			fail("%s: conntrack lacks the control ping: nf_conntrack is not on, its silence proves nothing", name)
		}
	}
	return errors.Join(errs...)
}

// cgroup2Root returns where the cgroup2 filesystem is mounted.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if f := strings.Fields(s.Text()); len(f) > 2 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("no cgroup2 filesystem mounted")
}

// removeCgroup removes the cgroup dir, which the client processes have
// left (the kernel may take a moment to see the last one gone).
func removeCgroup(dir string) error {
	for i := 0; ; i++ {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || i == 50 {
			return fmt.Errorf("remove cgroup: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
