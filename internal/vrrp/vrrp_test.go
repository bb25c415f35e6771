package vrrp

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestAdvertRoundTrip(t *testing.T) {
	src, dst := netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr(Group)
	a := Advert{VRID: 51, Priority: 100, Interval: 10, Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.250")}}
	b, err := a.Marshal(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	// Version 3 type 1, VRID, priority, one address, interval 10 cs.
	if want := "31 33 64 01 00 0a"; fmt.Sprintf("% x", b[:6]) != want {
		t.Errorf("header % x, want %s", b[:6], want)
	}
	got, err := Parse(b, src, dst)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(a) {
		t.Fatalf("parsed %+v (%v), want %+v", got, err, a)
	}
	// The checksum covers the pseudo-header: another source fails it.
	if _, err := Parse(b, netip.MustParseAddr("198.18.0.12"), dst); err == nil {
		t.Error("an advertisement checked against another source passed")
	}
	b[2]++
	if _, err := Parse(b, src, dst); err == nil {
		t.Error("a changed priority passed the checksum")
	}
	for _, bad := range []Advert{{VRID: 1, Priority: 1, Interval: 0, Addresses: a.Addresses}, {VRID: 1, Priority: 1, Interval: 5000, Addresses: a.Addresses}, {VRID: 1, Priority: 1, Interval: 10}} {
		if _, err := bad.Marshal(src, dst); err == nil {
			t.Errorf("%+v marshalled", bad)
		}
	}
	if _, err := Parse([]byte{0x21, 1, 1, 0, 0, 10, 0, 0}, src, dst); err == nil {
		t.Error("a version 2 advertisement parsed")
	}
}

// The checksum against one summed by hand from RFC 5798's definition (VRID
// 51, priority 150, interval 100 cs, one address 192.168.1.254, from
// 192.168.1.2); the testbed's test with keepalived checks the real thing.
func TestAdvertChecksumKnown(t *testing.T) {
	a := Advert{VRID: 51, Priority: 150, Interval: 100, Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.254")}}
	b, err := a.Marshal(netip.MustParseAddr("192.168.1.2"), netip.MustParseAddr(Group))
	if err != nil {
		t.Fatal(err)
	}
	// Sum by hand: pseudo-header c0a8+0102+e000+0012+0070(112)+000c(12)
	// and the message 3133+9601+0064+0000+c0a8+01fe.
	var sum uint32
	for _, w := range []uint32{0xc0a8, 0x0102, 0xe000, 0x0012, 0x0070, 0x000c, 0x3133, 0x9601, 0x0064, 0x0000, 0xc0a8, 0x01fe} {
		sum += w
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	if want := ^uint16(sum); uint16(b[6])<<8|uint16(b[7]) != want {
		t.Errorf("checksum %02x%02x, want %04x", b[6], b[7], want)
	}
}

func TestElection(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	ms := 10 * time.Millisecond
	mk := func(prio uint8, addr string) *Machine {
		return &Machine{VRID: 7, Priority: prio, Interval: 100 * ms, Preempt: true, Primary: netip.MustParseAddr(addr)}
	}
	adv := func(m *Machine) Advert {
		return Advert{VRID: m.VRID, Priority: m.Priority, Interval: uint16(m.Interval / ms)}
	}

	hi, lo := mk(200, "10.0.0.2"), mk(100, "10.0.0.3")
	if acts := hi.Start(t0); acts != nil || hi.State() != Backup {
		t.Fatalf("start: %v %v, want a quiet backup", acts, hi.State())
	}
	lo.Start(t0)
	// hi's Master_Down_Interval is 3 s + (56/256) s; lo's 3 s + (156/256) s.
	if d := hi.Next().Sub(t0); d != 3*time.Second+56*time.Second/256 {
		t.Errorf("hi's master-down %v", d)
	}
	if lo.Next().Before(hi.Next()) {
		t.Error("the lower priority times out first")
	}
	acts := hi.Tick(hi.Next())
	if hi.State() != Master || fmt.Sprint(acts) != fmt.Sprint([]Action{SendAdvert, TakeAddress}) {
		t.Fatalf("hi at its timeout: %v %v", hi.State(), acts)
	}
	// lo hears hi and stays backup, its timer pushed on.
	now := hi.Next().Add(-time.Second)
	lo.Receive(now, adv(hi), hi.Primary)
	if lo.State() != Backup || !lo.Next().After(now.Add(3*time.Second)) {
		t.Fatalf("lo after hi's advertisement: %v, next %v", lo.State(), lo.Next().Sub(now))
	}
	// hi advertises on time.
	if acts := hi.Tick(hi.Next()); fmt.Sprint(acts) != fmt.Sprint([]Action{SendAdvert}) {
		t.Errorf("hi at its advertisement time: %v", acts)
	}
	// A lower-priority advertisement does not unseat a master.
	if acts := hi.Receive(now, adv(lo), lo.Primary); acts != nil || hi.State() != Master {
		t.Errorf("hi hearing lo: %v %v", acts, hi.State())
	}
	// hi leaves: it releases, and lo takes over after its skew only.
	if acts := hi.Stop(); fmt.Sprint(acts) != fmt.Sprint([]Action{SendRelease, DropAddress}) {
		t.Errorf("hi stopping: %v", acts)
	}
	rel := adv(hi)
	rel.Priority = 0
	lo.Receive(now, rel, hi.Primary)
	if d := lo.Next().Sub(now); d != 156*time.Second/256 {
		t.Errorf("lo after the release waits %v, want its skew", d)
	}
	lo.Tick(lo.Next())
	if lo.State() != Master {
		t.Fatalf("lo did not take over: %v", lo.State())
	}
	// hi comes back: it preempts lo (higher priority) once its timer runs
	// out, and lo steps down when it hears it.
	hi.Start(now)
	hi.Tick(hi.Next())
	if acts := lo.Receive(now, adv(hi), hi.Primary); lo.State() != Backup || fmt.Sprint(acts) != fmt.Sprint([]Action{DropAddress}) {
		t.Errorf("lo hearing a better master: %v %v", lo.State(), acts)
	}
	// Equal priorities: the higher primary address wins.
	a, b := mk(100, "10.0.0.9"), mk(100, "10.0.0.10")
	a.Start(t0)
	a.Tick(a.Next())
	if acts := a.Receive(t0, adv(b), b.Primary); a.State() != Backup || len(acts) != 1 {
		t.Errorf("a tie with a higher address: %v %v", a.State(), acts)
	}
	// Without preemption a backup follows any master.
	np := mk(250, "10.0.0.20")
	np.Preempt = false
	np.Start(t0)
	np.Receive(t0.Add(time.Second), adv(lo), lo.Primary)
	if np.Next().Sub(t0.Add(time.Second)) < 3*time.Second {
		t.Error("a non-preempting backup did not follow a lower master")
	}
	// Another virtual router's advertisements are not ours.
	other := adv(hi)
	other.VRID = 8
	if acts := hi.Receive(t0, other, netip.MustParseAddr("10.0.0.99")); acts != nil {
		t.Errorf("another VRID: %v", acts)
	}
}
