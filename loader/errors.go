package loader

import "errors"

// ErrNotBPFFS is returned when a pin path is not on a bpf filesystem.
var ErrNotBPFFS = errors.New("not on a bpf filesystem")

// ErrMonitorBusy is returned when a process asks for the node's monitor
// events while another reader, in any process, holds them.
var ErrMonitorBusy = errors.New("the node's events have a reader already")

// ErrStale is returned for a handle whose pinned programs were replaced by
// another process's reload: open the node again.
var ErrStale = errors.New("node reloaded by another process")

// ErrPartialPins is returned for a pin directory that lacks some of a
// node's pins (removed by hand) which cannot be found again through the
// programs that still run.
var ErrPartialPins = errors.New("node's pins incomplete")

// ErrForeignPinPath is returned for a pin path that is the bpf
// filesystem's root or holds files that are not a node's.
var ErrForeignPinPath = errors.New("not a node's pin directory")

// ErrPolicyNotLinked is returned for a policy program that was not
// loaded with the node's PolicyMapReplacements: its verdicts would reach
// no one.
var ErrPolicyNotLinked = errors.New("policy program does not use the node's hr_policy_ret map (load it with PolicyMapReplacements)")
