package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// Error codes, as the CNI spec has them:
//
//	4   ErrInvalidEnvironmentVariables  CNI_NETNS is no network namespace (ADD, CHECK),
//	                                    or not an absolute path (every command)
//	6   ErrDecodingFailure              the netconf or its prevResult does not decode
//	7   ErrInvalidNetworkConfig         a key is wrong, or pinPath cannot hold the node
//	11  ErrTryAgainLater                the endpoint map is full, the node was removed
//	                                    or is being removed, the datapath did not answer
//	                                    within timeout (its lock is held)
//	999 ErrInternal                     anything else
//
// DEL returns no error when there is nothing to remove (see cmdDel).

// procRoot matches the /proc/PID/root by which the loader reaches bpffs
// from the private mount namespace of `ip netns exec` (see instance.Open):
// messages name the pin path as configured instead.
var procRoot = regexp.MustCompile(`/proc/[0-9]+/root(` + regexp.QuoteMeta(loader.DefaultBPFFS) + `)`)

// cniError makes a CNI error whose message names the plugin, and paths on
// bpffs as the netconf names them.
func cniError(code uint, format string, args ...any) *types.Error {
	msg := procRoot.ReplaceAllString(fmt.Sprintf(format, args...), "$1")
	return types.NewError(code, "hostrouting: "+msg, "")
}

// datapathError makes the CNI error for err, which the datapath returned
// while doing what, for the node at pinPath.
func datapathError(pinPath, what string, err error) *types.Error {
	var cerr *types.Error
	switch {
	case errors.As(err, &cerr):
		return cerr // made here already (timeout)
	case errors.Is(err, datapath.ErrMapFull):
		// The datapath says "map full: all N endpoint IDs are in use" or
		// "map full (N entries)"; the kernel's E2BIG, which cilium/ebpf
		// words as "key too big for map", never reaches the user.
		full := "endpoint map full"
		if n := mapFullEntries(err); n != "" {
			full += " (" + n + " entries)"
		}
		return cniError(types.ErrTryAgainLater, "%s: %s at pinPath %s: try again once pods are deleted", what, full, pinPath)
	case errors.Is(err, datapath.ErrRemoved):
		return cniError(types.ErrTryAgainLater, "%s: the datapath at pinPath %s was removed meanwhile: try again (%v)", what, pinPath, err)
	case errors.Is(err, loader.ErrPartialPins):
		return cniError(types.ErrTryAgainLater, "%s: the datapath at pinPath %s is being removed, or lost pins: try again (%v)", what, pinPath, err)
	case errors.Is(err, loader.ErrNotBPFFS), errors.Is(err, loader.ErrForeignPinPath),
		errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ENAMETOOLONG):
		return cniError(types.ErrInvalidNetworkConfig, "%s: pinPath %s cannot hold the node's datapath: %v", what, pinPath, err)
	case errors.Is(err, loader.ErrOtherNetns):
		return cniError(types.ErrInvalidNetworkConfig, "%s: pinPath %s belongs to the node of another network namespace: give each node a pinPath of its own (%v)", what, pinPath, err)
	case errors.Is(err, loader.ErrOtherInstance):
		return cniError(types.ErrInvalidNetworkConfig, "%s: a device is taken by the datapath of another pinPath than %s (%v)", what, pinPath, err)
	case errors.Is(err, datapath.ErrLegacyHostRouting):
		return cniError(types.ErrInvalidNetworkConfig, "%s: requireBPFHostRouting: %v", what, err)
	}
	return cniError(types.ErrInternal, "%s: %v", what, err)
}

var entriesRE = regexp.MustCompile(`\((\d+) entries\)|all (\d+) endpoint IDs`)

// mapFullEntries returns the size of the full map that err names, if it
// does.
func mapFullEntries(err error) string {
	m := entriesRE.FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	return m[1] + m[2]
}

// netnsGone tells whether CNI_NETNS names no network namespace any more:
// the path is missing, or a file that is no namespace (the mount point a
// deleted namespace left behind). Any other fault of the path, which a
// retry cannot mend, is an ErrInvalidEnvironmentVariables error, in every
// command alike.
func netnsGone(path string) (gone bool, why error, err error) {
	if !filepath.IsAbs(path) {
		return false, nil, cniError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %q is not an absolute path", path)
	}
	_, err = routing.Netns(path)
	switch {
	case err == nil:
		return false, nil, nil
	case errors.Is(err, os.ErrNotExist), errors.Is(err, unix.ENOTDIR), errors.Is(err, routing.ErrNotNetns):
		return true, err, nil
	}
	return false, nil, cniError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %s: %v", path, err)
}

// podNetns checks, for ADD and CHECK, that CNI_NETNS is a network
// namespace.
func podNetns(path string) error {
	gone, why, err := netnsGone(path)
	switch {
	case err != nil:
		return err
	case gone && errors.Is(why, routing.ErrNotNetns):
		return cniError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %s is no network namespace (the mount point of a deleted one?)", path)
	case gone:
		return cniError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %s: no such network namespace", path)
	}
	return nil
}

// withTimeout runs fn, the part of a command that works on the datapath
// and may wait for its lock, and gives up after d with ErrTryAgainLater.
// fn must hold everything it opens (the caller may not close what fn
// uses): on timeout the command returns and the plugin exits, with fn
// waiting for the lock or, rarely, half-way through a change, which the
// datapath completes at the next call as it does after a crash.
func withTimeout(d time.Duration, pinPath string, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return cniError(types.ErrTryAgainLater, "the datapath at pinPath %s did not answer within %s (timeout): is its lock held by another process? Try again later",
			pinPath, d)
	}
}

// trimmed shortens an overlong string for a message.
func trimmed(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
