package main

// The request/response load: one Go implementation for every mode, run
// as subcommands of the bench binary itself inside the namespaces (`ip
// netns exec NS taskset -c CPU BENCH rr-server ...`). Both ends use
// blocking sockets on a locked thread, as netperf does, so each
// transaction costs the same system calls in every mode: TCP_RR a write
// and a read on each side over one connection; TCP_CRR a connect, the
// request and the response, then the server closes first (so TIME_WAIT
// stays on its side and the client never runs out of ports) and the
// client closes after reading the end of the stream.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// rrResult is what rr-client prints: transactions over the measured
// seconds, warm-up excluded.
type rrResult struct {
	Transactions uint64  `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	MaxSeconds   float64 `json:"max_seconds"` // the slowest transaction
}

// subcommands are run by main (and by TestMain for the test binary) when
// they are the first argument.
var subcommands = map[string]func(args []string) error{
	"rr-server": rrServer,
	"rr-client": rrClient,
}

// runSubcommand runs the subcommand named by args[0], if it is one, and
// reports whether it was.
func runSubcommand(args []string) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	fn, ok := subcommands[args[0]]
	if !ok {
		return 0, false
	}
	if err := fn(args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", args[0], err)
		return 1, true
	}
	return 0, true
}

// refuseRootNetns fails when the process runs in PID 1's network
// namespace or in one of forbid (dev:inode of namespace files, as netnsID
// formats them: the namespace the benchmark was started in): the load only
// ever runs inside the benchmark's own namespaces.
func refuseRootNetns(forbid []string) error {
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return fmt.Errorf("stat own netns: %w", err)
	}
	var init unix.Stat_t
	if err := unix.Stat("/proc/1/ns/net", &init); err == nil {
		forbid = append(forbid, netnsID(init))
	} else if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("stat netns of PID 1: %w", err)
	}
	if len(forbid) == 0 {
		return errors.New("cannot tell the root network namespace: pass -forbid-netns")
	}
	if slices.Contains(forbid, netnsID(self)) {
		return errors.New("refusing to run in the root network namespace or the benchmark's own: run inside the benchmark's namespaces")
	}
	return nil
}

// forbidFlag is -forbid-netns, repeated.
type forbidFlag []string

func (f *forbidFlag) String() string     { return strings.Join(*f, ",") }
func (f *forbidFlag) Set(s string) error { *f = append(*f, s); return nil }

func rrServer(args []string) error {
	fs := flag.NewFlagSet("rr-server", flag.ContinueOnError)
	addr := fs.String("addr", "", "address:port to listen on")
	size := fs.Int("size", 1, "request and response size in bytes")
	crr := fs.Bool("crr", false, "one transaction per connection, then close (TCP_CRR)")
	timeout := fs.Duration("timeout", time.Minute, "exit after this long")
	var forbid forbidFlag
	fs.Var(&forbid, "forbid-netns", "refuse to run in the network namespace dev:inode")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() || *size < 1 || *size > 65536 {
		return fmt.Errorf("want -addr IPv4:port and -size 1..65536, got %q and %d", *addr, *size)
	}
	if err := refuseRootNetns(forbid); err != nil {
		return err
	}
	runtime.LockOSThread()
	time.AfterFunc(*timeout, func() {
		fmt.Fprintf(os.Stderr, "bench rr-server: exiting after %s\n", *timeout)
		os.Exit(3)
	})

	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(ln, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(ln, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return fmt.Errorf("bind %s: %w", ap, err)
	}
	if err := unix.Listen(ln, 4096); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Println("listening")

	buf := make([]byte, *size)
	for {
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		for {
			if err := readFull(fd, buf); err != nil {
				break // the client closed, or reset
			}
			if err := writeAll(fd, buf); err != nil || *crr {
				break
			}
		}
		unix.Close(fd)
	}
}

func rrClient(args []string) error {
	fs := flag.NewFlagSet("rr-client", flag.ContinueOnError)
	addr := fs.String("addr", "", "server address:port")
	size := fs.Int("size", 1, "request and response size in bytes")
	crr := fs.Bool("crr", false, "connect, request, response, close per transaction (TCP_CRR)")
	duration := fs.Duration("duration", 3*time.Second, "how long to measure")
	warmup := fs.Duration("warmup", 100*time.Millisecond, "how long to run before measuring")
	var forbid forbidFlag
	fs.Var(&forbid, "forbid-netns", "refuse to run in the network namespace dev:inode")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() || *size < 1 || *size > 65536 {
		return fmt.Errorf("want -addr IPv4:port and -size 1..65536, got %q and %d", *addr, *size)
	}
	if *duration <= 0 || *duration > 10*time.Minute || *warmup < 0 || *warmup > time.Minute {
		return fmt.Errorf("-duration %s or -warmup %s out of range", *duration, *warmup)
	}
	if err := refuseRootNetns(forbid); err != nil {
		return err
	}
	runtime.LockOSThread()
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	buf := make([]byte, *size)
	for i := range buf {
		buf[i] = byte(i)
	}

	var transact func() error
	if *crr {
		transact = func() error {
			fd, err := dial(sa)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := writeAll(fd, buf); err != nil {
				return fmt.Errorf("send request: %w", err)
			}
			if err := readFull(fd, buf); err != nil {
				return fmt.Errorf("receive response: %w", err)
			}
			// The server closes first: wait for its FIN.
			var one [1]byte
			for {
				n, err := unix.Read(fd, one[:])
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					return fmt.Errorf("wait for the server to close: %w", err)
				}
				if n == 0 {
					return nil
				}
				return errors.New("server sent more than the response")
			}
		}
	} else {
		fd, err := dial(sa)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		transact = func() error {
			if err := writeAll(fd, buf); err != nil {
				return fmt.Errorf("send request: %w", err)
			}
			if err := readFull(fd, buf); err != nil {
				return fmt.Errorf("receive response: %w", err)
			}
			return nil
		}
	}

	for end := time.Now().Add(*warmup); time.Now().Before(end); {
		if err := transact(); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	var n uint64
	var slowest time.Duration
	start := time.Now()
	end := start.Add(*duration)
	now := start
	for now.Before(end) {
		if err := transact(); err != nil {
			return fmt.Errorf("after %d transactions: %w", n, err)
		}
		n++
		prev := now
		now = time.Now()
		slowest = max(slowest, now.Sub(prev))
	}
	return json.NewEncoder(os.Stdout).Encode(rrResult{Transactions: n, Seconds: now.Sub(start).Seconds(), MaxSeconds: slowest.Seconds()})
}

// dial connects a blocking TCP socket with TCP_NODELAY to sa.
func dial(sa *unix.SockaddrInet4) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TCP_NODELAY: %w", err)
	}
	err = unix.Connect(fd, sa)
	if err == unix.EINTR {
		// The connect goes on in the background: wait until it is done.
		err = waitConnected(fd)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect to %d.%d.%d.%d:%d: %w", sa.Addr[0], sa.Addr[1], sa.Addr[2], sa.Addr[3], sa.Port, err)
	}
	return fd, nil
}

func waitConnected(fd int) error {
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 5000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.ETIMEDOUT
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}

// readFull reads len(buf) bytes, failing on the end of the stream.
func readFull(fd int, buf []byte) error {
	for got := 0; got < len(buf); {
		n, err := unix.Read(fd, buf[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("connection closed")
		}
		got += n
	}
	return nil
}

func writeAll(fd int, buf []byte) error {
	for sent := 0; sent < len(buf); {
		n, err := unix.Write(fd, buf[sent:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		sent += n
	}
	return nil
}
