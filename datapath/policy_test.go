package datapath_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/maps"
)

// denyEndpoint is the extension an embedder would write in C as
//
//	SEC("freplace/hr_ingress_policy")
//	int deny(struct __sk_buff *ctx, __u32 endpoint_id)
//	{
//		return endpoint_id == ID ? 1 : 0;
//	}
//
// built here from instructions, with the BTF the kernel checks against
// the hook's signature.
func denyEndpoint(id uint16) *ebpf.ProgramSpec {
	u32 := &btf.Int{Name: "__u32", Size: 4}
	fn := &btf.Func{
		Name:    "deny",
		Linkage: btf.GlobalFunc,
		Type: &btf.FuncProto{
			Return: &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed},
			Params: []btf.FuncParam{
				{Name: "ctx", Type: &btf.Pointer{Target: &btf.Struct{Name: "__sk_buff"}}},
				{Name: "endpoint_id", Type: u32},
			},
		},
	}
	return &ebpf.ProgramSpec{
		Name:    "deny",
		Type:    ebpf.Extension,
		License: "GPL",
		Instructions: asm.Instructions{
			btf.WithFuncMetadata(asm.Mov.Imm(asm.R0, 0), fn),
			asm.JNE.Imm(asm.R2, int32(id), "allow"),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return().WithSymbol("allow"),
		},
	}
}

func TestIngressPolicySlot(t *testing.T) {
	node, a, b, dp := twoPods(t, datapath.Config{})
	c := node.AddPod(t, "c", ipC)
	c.AddEndpoint(t, dp)
	epB, err := dp.Endpoint(b.IP)
	if err != nil {
		t.Fatal(err)
	}
	err = dp.AttachIngressPolicy(denyEndpoint(epB.ID))
	if errors.Is(err, unix.EPERM) {
		// Some kernels (this project's CI sandbox among them) refuse
		// trampoline-based programs (fentry, freplace) to everyone. Then
		// the refusal must be clean: no policy left half attached, and
		// traffic as before.
		t.Logf("the kernel refuses freplace programs, checking the refusal only: %v", err)
		if !strings.Contains(err.Error(), "attach ingress policy to from-container") {
			t.Errorf("error does not name the step: %v", err)
		}
		if pins, _ := filepath.Glob(filepath.Join(pinPathOf(t, dp), "policy", "*")); len(pins) != 0 {
			t.Errorf("refused policy left pins: %v", pins)
		}
		a.MustPing(t, b.IP)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	before, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}

	if got, _ := a.Ping(b.IP, 3, time.Second); got != 0 {
		t.Errorf("a → b: %d replies through a policy that denies b", got)
	}
	c.MustPing(t, a.IP) // a and c are not covered by the policy
	after, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if d := after[maps.MetricDropPolicy].Packets - before[maps.MetricDropPolicy].Packets; d != 3 {
		t.Errorf("drop-policy metric moved by %d: want 3", d)
	}
	stats, err := dp.EndpointStats(b.IP)
	if err != nil {
		t.Fatal(err)
	}
	if stats.DropPackets < 3 {
		t.Errorf("b's drop counter %d: want at least 3", stats.DropPackets)
	}

	if err := dp.DetachIngressPolicy(); err != nil {
		t.Fatal(err)
	}
	a.MustPing(t, b.IP)
}
