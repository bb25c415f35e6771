package ipam

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/ferryvm/ferry/internal/errdefs"
)

func TestFree(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	if got, _ := Free(nil, 0); got != a("198.19.0.10") {
		t.Errorf("first address %s", got)
	}
	used := map[netip.Addr]bool{a("198.19.0.10"): true, a("198.19.0.11"): true}
	if got, _ := Free(used, 0); got != a("198.19.0.12") {
		t.Errorf("next free %s", got)
	}
	if got, _ := Free(used, 2); got != a("198.19.0.14") {
		t.Errorf("skip 2: %s", got)
	}
	// .255 and .0 of each /24 are skipped.
	if got, _ := Free(nil, 245); got != a("198.19.1.1") {
		t.Errorf("across a /24: %s", got)
	}
	if _, err := Free(nil, 1<<20); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("exhausted: %v", err)
	}
	if got := MACFor(a("198.19.1.2")); got != "52:54:00:13:01:02" {
		t.Errorf("mac %s", got)
	}
	if got := HostOverlayAddr(a("198.18.0.12")); got.String() != "198.19.254.12/16" {
		t.Errorf("host overlay %s", got)
	}
}

func TestRandomStaysInTheGuestRange(t *testing.T) {
	seq := []int{0, 3, 0, 9, 253, 253, 7, 0}
	i := 0
	n := func(int) int { v := seq[i%len(seq)]; i++; return v }
	// 0/3 → .0.4 and 0/9 → .0.10-: the first is infrastructure.
	want := []string{"198.19.0.10", "198.19.253.254", "198.19.7.1"}
	for _, w := range want {
		if got := Random(n); got.String() != w {
			t.Fatalf("got %s, want %s", got, w)
		}
	}
	for k := 0; k < 10000; k++ {
		a := Random(rand.IntN)
		b := a.As4()
		if !Subnet.Contains(a) || b[2] >= 254 || b[3] == 0 || b[3] == 255 || (b[2] == 0 && b[3] < 10) {
			t.Fatalf("%s is not a guest address", a)
		}
	}
}
