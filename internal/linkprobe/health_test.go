package linkprobe

import (
	"strings"
	"testing"
	"time"
)

func round(rtt time.Duration, lost int) []probe {
	ps := make([]probe, probesPerRound)
	for i := range ps {
		ps[i] = probe{rtt: rtt + time.Duration(i%2)*100*time.Microsecond, lost: i < lost}
	}
	return ps
}

// A steady link stays healthy; a link that starts losing packets becomes
// degraded once enough probes show it, one whose round trip grows well
// beyond its own at once; each is healthy again only well within the
// bounds, and says why it is degraded.
func TestLinkHealth(t *testing.T) {
	now := time.Now()
	t.Run("steady", func(t *testing.T) {
		var h health
		for i := 0; i < 20; i++ {
			if h.add(round(time.Millisecond, 0), now) || h.degraded {
				t.Fatalf("a steady link was judged degraded: %s", h.why)
			}
		}
		f := h.figures()
		if f.lossPct != 0 || f.rtt < time.Millisecond || f.rtt > 2*time.Millisecond || f.jitter < 50*time.Microsecond || f.jitter > 100*time.Microsecond || f.samples != window {
			t.Fatalf("figures of a steady link: %+v", f)
		}
	})
	t.Run("loss", func(t *testing.T) {
		var h health
		for i := 0; i < 12; i++ {
			h.add(round(time.Millisecond, 0), now)
		}
		// One handshake in five lost: about 10.6 % of packets.
		changed := 0
		for i := 0; i < 6; i++ {
			if h.add(round(time.Millisecond, 1), now) {
				changed++
			}
		}
		f := h.figures()
		if !h.degraded || changed != 1 || !strings.Contains(h.why, "packet loss") {
			t.Fatalf("after losses: degraded %v (changed %d times), why %q, figures %+v", h.degraded, changed, h.why, f)
		}
		if f.lossPct < 2 || f.lossPct > 11 {
			t.Errorf("loss %.1f %%, want the share of packets the lost handshakes suggest", f.lossPct)
		}
		// Lossless again: healthy once the window's loss is under 1 %.
		for i := 0; i < window/probesPerRound && h.degraded; i++ {
			h.add(round(time.Millisecond, 0), now)
		}
		if h.degraded {
			t.Fatalf("a link without loss for a whole window is still degraded: %s", h.why)
		}
	})
	t.Run("latency", func(t *testing.T) {
		var h health
		for i := 0; i < 4; i++ {
			h.add(round(time.Millisecond, 0), now)
		}
		if !h.add(round(101*time.Millisecond, 0), now) || !strings.Contains(h.why, "round trip") {
			t.Fatalf("a round trip 100× its usual: degraded %v, why %q", h.degraded, h.why)
		}
		// 15 ms is within 2× + 20 ms but not within the halved bounds
		// (1.5× + 10 ms): it stays degraded.
		for i := 0; i < 4; i++ {
			h.add(round(15*time.Millisecond, 0), now)
		}
		if !h.degraded {
			t.Fatal("a link came back at 15 ms (usual 1 ms) and was judged healthy at once")
		}
		for i := 0; i < 4; i++ {
			h.add(round(time.Millisecond, 0), now)
		}
		if h.degraded {
			t.Fatalf("back at its usual round trip, still degraded: %s", h.why)
		}
	})
	t.Run("one stall", func(t *testing.T) {
		// One handshake in 20 timed out (a host that stalled a second):
		// 2.5 % of packets on paper, but one probe is no evidence.
		var h health
		for i := 0; i < 3; i++ {
			h.add(round(time.Millisecond, 0), now)
		}
		h.add(round(time.Millisecond, 1), now)
		if f := h.figures(); h.degraded || f.samples != 20 || f.lossPct < 2 {
			t.Fatalf("one lost probe in %d (%.1f %%): degraded %v (%s)", f.samples, f.lossPct, h.degraded, h.why)
		}
		// A second one is.
		if !h.add(round(time.Millisecond, 1), now) || !strings.Contains(h.why, "packet loss") {
			t.Fatalf("two lost probes in 25: degraded %v, why %q", h.degraded, h.why)
		}
	})
	t.Run("silent", func(t *testing.T) {
		var h health
		h.add(round(time.Millisecond, 0), now)
		for i := 0; i < window/probesPerRound; i++ {
			h.add(round(0, probesPerRound), now)
		}
		if !h.degraded || !strings.Contains(h.why, "no answer") {
			t.Fatalf("a link that answers nothing: degraded %v, why %q", h.degraded, h.why)
		}
	})
}

// A host measures each link's bandwidth every ten minutes while its
// bursts take at most 1 % of its time, less often with many peers.
func TestBandwidthEvery(t *testing.T) {
	for _, c := range []struct {
		peers int
		want  time.Duration
	}{{2, 10 * time.Minute}, {6, 10 * time.Minute}, {99, 9900 * time.Second}} {
		if got := bandwidthEvery(10*time.Minute, time.Second, c.peers); got != c.want {
			t.Errorf("with %d peers: every %s, want %s", c.peers, got, c.want)
		}
	}
}
