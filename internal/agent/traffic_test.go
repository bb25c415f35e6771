package agent

import (
	"math"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/hostnet"
)

func TestTrafficByClass(t *testing.T) {
	tm := newTrafficMeter()
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	if r := tm.rates(hostnet.Traffic{UnderlaySent: 1000, UnderlayReceived: 1000}, t0); r != nil {
		t.Fatalf("first reading gave rates %+v, want none (nothing to compare with)", r)
	}
	// A migration out of this host, seen twice; one into it; one between
	// two other hosts (not this host's traffic).
	out := &api.Migration{ID: "m1", VM: "a", Source: "h1", Target: "h2", Phase: api.MigCopying}
	out.Progress.TransferredBytes = 3000
	tm.sawMigration(out, "h1", t0.Add(time.Second))
	out.Progress.TransferredBytes = 5000
	tm.sawMigration(out, "h1", t0.Add(1500*time.Millisecond))
	tm.sawMigration(out, "h1", t0.Add(1600*time.Millisecond)) // the same record again: nothing new
	in := &api.Migration{ID: "m2", VM: "b", Source: "h3", Target: "h1", Phase: api.MigCopying}
	in.Progress.TransferredBytes = 2000
	tm.sawMigration(in, "h1", t0.Add(time.Second))
	tm.sawMigration(&api.Migration{ID: "m3", Source: "h2", Target: "h3", BytesSent: 1 << 30}, "h1", t0.Add(time.Second))
	// An old finished migration read again after a restart is not counted.
	old := &api.Migration{ID: "m4", Source: "h1", Target: "h2", Phase: api.MigCompleted, BytesSent: 1 << 30, Finished: t0.Add(-time.Hour)}
	tm.sawMigration(old, "h1", t0.Add(time.Second))

	r := tm.rates(hostnet.Traffic{UnderlaySent: 1000 + 20000, UnderlayReceived: 1000 + 8000, OverlaySent: 4000, OverlayReceived: 10000}, t0.Add(2*time.Second))
	if r == nil {
		t.Fatal("no rates on the second reading")
	}
	want := api.NodeTraffic{
		// 20000 B over 2 s: 2000 guest, 2500 migration, the rest control.
		Sent: api.TrafficClasses{Total: 10000, Guest: 2000, Migration: 2500, Control: 5500},
		// The overlay's estimate (10000) exceeds the underlay's 8000: it
		// is cut to it, and nothing is left for the others.
		Received: api.TrafficClasses{Total: 4000, Guest: 4000, Migration: 0, Control: 0},
		WindowMS: 2000,
	}
	for _, c := range []struct {
		name      string
		got, want api.TrafficClasses
	}{{"sent", r.Sent, want.Sent}, {"received", r.Received, want.Received}} {
		g, w := c.got, c.want
		if math.Abs(g.Total-w.Total)+math.Abs(g.Guest-w.Guest)+math.Abs(g.Migration-w.Migration)+math.Abs(g.Control-w.Control) > 1e-9 {
			t.Errorf("%s: got %+v, want %+v", c.name, g, w)
		}
	}
	if r.WindowMS != want.WindowMS {
		t.Errorf("window %d ms, want %d", r.WindowMS, want.WindowMS)
	}

	// The incoming migration's bytes, counted after the window, land in
	// the next one; a device recreated (its counters back at zero) gives
	// no rates that window.
	in.Progress.TransferredBytes = 6000
	tm.sawMigration(in, "h1", t0.Add(3*time.Second))
	r = tm.rates(hostnet.Traffic{UnderlaySent: 21000, UnderlayReceived: 9000 + 10000, OverlaySent: 4000, OverlayReceived: 10000}, t0.Add(4*time.Second))
	if r == nil || r.Received.Migration != 2000 || r.Received.Control != 3000 {
		t.Fatalf("next window: %+v, want 2000 B/s of migration received (4000 B over 2 s) and 3000 of control", r)
	}
	if r := tm.rates(hostnet.Traffic{UnderlaySent: 10}, t0.Add(6*time.Second)); r != nil {
		t.Errorf("counters went back: got rates %+v, want none", r)
	}
}
