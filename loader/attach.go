package loader

import (
	"errors"
	"fmt"
)

// Program names a datapath program by where it sits.
type Program int

const (
	// FromContainer runs on tc ingress of a pod's host-side device: what
	// the pod sends.
	FromContainer Program = iota
	// ToContainer runs on tc egress of a pod's host-side device: what the
	// kernel's stack delivers into the pod.
	ToContainer
	// FromNetdev runs on tc ingress of the node's device: what other nodes
	// send.
	FromNetdev
	// ToNetdev runs on tc egress of the node's device: what leaves the node.
	ToNetdev
)

// String returns the program's name as in Cilium: "from-container".
func (p Program) String() string {
	switch p {
	case FromContainer:
		return "from-container"
	case ToContainer:
		return "to-container"
	case FromNetdev:
		return "from-netdev"
	case ToNetdev:
		return "to-netdev"
	}
	return fmt.Sprintf("program(%d)", int(p))
}

// ErrOtherInstance is returned by Attach for a device that runs the
// datapath of another node instance (another pin path).
var ErrOtherInstance = errors.New("device taken by another node instance")
