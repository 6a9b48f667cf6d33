package netcheck

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// commandTimeout bounds each run of iptables.
const commandTimeout = 30 * time.Second

// ForwardCounter is a rule at the head of a namespace's netfilter FORWARD
// chain (table filter) that matches every packet and only counts it. Packets
// the kernel forwards move its counter; packets a BPF program redirects past
// the stack do not.
type ForwardCounter struct {
	nsPath  string
	comment string
}

// CountForward inserts a ForwardCounter's rule, tagged with comment, into
// the FORWARD chain of the namespace at nsPath, using iptables. An empty
// comment means a unique "hostrouting-<random>". The rule stays until Close
// deletes it, or with the namespace.
func CountForward(ctx context.Context, nsPath, comment string) (*ForwardCounter, error) {
	if comment == "" {
		comment = fmt.Sprintf("hostrouting-%08x", rand.Uint32())
	}
	c := &ForwardCounter{nsPath: nsPath, comment: comment}
	if _, err := iptables(ctx, nsPath, append([]string{"-I"}, c.rule()...)...); err != nil {
		return nil, fmt.Errorf("count forward: insert rule: %w", err)
	}
	return c, nil
}

// Comment returns the comment that tags the rule, as iptables lists it
// between "/* " and " */".
func (c *ForwardCounter) Comment() string { return c.comment }

// Packets returns the rule's packet counter: how many packets the chain saw
// since the rule was inserted.
func (c *ForwardCounter) Packets(ctx context.Context) (uint64, error) {
	out, err := iptables(ctx, c.nsPath, "-x", "-v", "-n", "-L", "FORWARD")
	if err != nil {
		return 0, fmt.Errorf("count forward: %w", err)
	}
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "/* "+c.comment+" */") {
			continue
		}
		n, err := strconv.ParseUint(strings.Fields(line)[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("count forward: parse counter in %q: %w", line, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("count forward: rule %s not in the FORWARD chain:\n%s", c.comment, out)
}

// Close deletes the rule, and with it its counter.
func (c *ForwardCounter) Close() error {
	if _, err := iptables(context.Background(), c.nsPath, append([]string{"-D"}, c.rule()...)...); err != nil {
		return fmt.Errorf("count forward: delete rule: %w", err)
	}
	return nil
}

func (c *ForwardCounter) rule() []string {
	return []string{"FORWARD", "-m", "comment", "--comment", c.comment}
}

// iptables runs `iptables -w args...` inside the namespace at nsPath, at
// most commandTimeout, and returns its output.
func iptables(ctx context.Context, nsPath string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	args = append([]string{"-w"}, args...)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "iptables", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	// The child starts in the namespace of the thread that forks it.
	err := inNetns(nsPath, cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return "", fmt.Errorf("iptables %s: %w\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	return out.String(), nil
}
