package bpf_test

import (
	"net"
	"testing"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// slotHolder returns the ifindex whose endpoint sits in hr_lxc's slot for
// ifindex (0 for an empty slot).
func (d *datapath) slotHolder(ifindex uint32) uint32 {
	d.tb.Helper()
	var v bpf.HostroutingEndpointInfo
	if err := d.objs.HrLxc.Lookup(ifindex&(d.objs.HrLxc.MaxEntries()-1), &v); err != nil {
		d.tb.Fatal(err)
	}
	return v.Ifindex
}

// TestDeviceSlotShared puts two devices on one hr_lxc slot: the second is
// found through hr_devices, its packets are source-checked and delivered
// all the same, and when the first goes the slot passes to the second.
func TestDeviceSlotShared(t *testing.T) {
	d := loadDatapath(t, configPeer)
	slots := d.objs.HrLxc.MaxEntries()
	first := podC.withIfindex(loIfindex + slots) // pod A's slot, another device
	d.addPods(first, podB, podA)
	if got := d.slotHolder(loIfindex); got != first.ifindex {
		t.Fatalf("slot of ifindex %d held by %d, want the first device %d", loIfindex, got, first.ifindex)
	}

	send := func(what string, pkt ipv4Packet, want uint32) {
		t.Helper()
		if v, _ := d.run(d.objs.FromContainer, loIfindex, pkt.frame()); v != want {
			t.Errorf("%s: verdict %d, want %d", what, v, want)
		}
	}
	spoofed := ipv4From(podA, podB.ip)
	spoofed.src = first.ip // the slot holder's address, from A's device
	send("A → B, A off the slot", ipv4From(podA, podB.ip), tcActRedirect)
	send("A with the slot holder's address", spoofed, tcActShot)
	got := d.table()
	if peer, spoof := got[maps.FromContainer][maps.MetricForwardPeer], got[maps.FromContainer][maps.MetricDropSpoofed]; peer.Packets != 1 || spoof.Packets != 1 {
		t.Errorf("forward-peer %d, drop-spoofed %d packets: want 1 and 1", peer.Packets, spoof.Packets)
	}
	if s := d.endpointStats(podA.ifindex); s.FromPackets != 1 || s.DropPackets != 1 {
		t.Errorf("pod A's counters %+v: want 1 from, 1 drop", s)
	}

	gone := maps.Endpoint{IP: first.ip, IfIndex: int(first.ifindex), ID: first.id,
		MAC: net.HardwareAddr(first.mac[:]), NodeMAC: net.HardwareAddr(first.nodeMAC[:])}
	if err := d.endpoints().Delete(gone); err != nil {
		t.Fatal(err)
	}
	if got := d.slotHolder(loIfindex); got != podA.ifindex {
		t.Errorf("after the holder left, the slot is held by %d, want pod A's device %d", got, podA.ifindex)
	}
	send("A → B, A on the slot", ipv4From(podA, podB.ip), tcActRedirect)
	if err := d.endpoints().Delete(maps.Endpoint{IP: podA.ip, IfIndex: int(podA.ifindex)}); err != nil {
		t.Fatal(err)
	}
	if got := d.slotHolder(loIfindex); got != 0 {
		t.Errorf("after the last device left, the slot is held by %d, want empty", got)
	}
	send("A → B, A gone", ipv4From(podA, podB.ip), tcActShot)
}

// TestDeviceSlotStale hands a slot whose holder has no endpoint any more
// (its entries removed behind package maps' back) to the next device.
func TestDeviceSlotStale(t *testing.T) {
	d := loadDatapath(t, configPeer)
	stale := podC.withIfindex(loIfindex + d.objs.HrLxc.MaxEntries())
	d.addPods(stale, podB)
	if err := d.objs.HrDevices.Delete(stale.ifindex); err != nil {
		t.Fatal(err)
	}
	d.addPods(podA)
	if got := d.slotHolder(loIfindex); got != podA.ifindex {
		t.Errorf("slot held by %d, want pod A's device %d (the holder is gone)", got, podA.ifindex)
	}
	if v, _ := d.run(d.objs.FromContainer, loIfindex, ipv4From(podA, podB.ip).frame()); v != tcActRedirect {
		t.Errorf("A → B: verdict %d, want redirect", v)
	}
}
