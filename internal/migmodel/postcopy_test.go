package migmodel

import (
	"math"
	"testing"
	"time"
)

// Post-copy: a busy guest's stall after the switchover is its pause, not
// the move's time (which ends when the last page has arrived); calibration
// takes the median of the busy guests' measured stalls, whatever their
// dirty rates, and leaves idle guests without one.
func TestPostcopyStall(t *testing.T) {
	g := Guest{MemoryBytes: 256 << 20, DirtyRate: 24 << 20, WorkingSet: 64 << 20, ZeroShare: 0.5}
	l := Link{Bandwidth: 50e6, RTT: 20 * time.Millisecond}
	lim := Limits{DowntimeStart: 300 * time.Millisecond, DowntimeMax: time.Second}
	short, long := Defaults(), Defaults()
	k := long[Postcopy]
	k.PostcopyStall = 5
	long[Postcopy] = k
	a, b := Predict(Postcopy, g, l, lim, short), Predict(Postcopy, g, l, lim, long)
	if a.Total != b.Total {
		t.Errorf("the stall changed the move's time: %s against %s", a.Total, b.Total)
	}
	if d := b.Downtime - a.Downtime; d != 4*time.Second {
		t.Errorf("a 4 s longer stall lengthened the pause by %s", d)
	}
	idle := g
	idle.DirtyRate = 0
	if p, q := Predict(Postcopy, idle, l, lim, long), Predict(Postcopy, idle, l, lim, short); p.Downtime != q.Downtime {
		t.Errorf("an idle guest's post-copy pause depends on the stall: %s against %s", p.Downtime, q.Downtime)
	}

	sw := Defaults()[Postcopy].Switchover
	var ss []Sample
	for i, c := range []struct {
		mibs  float64
		stall time.Duration
	}{{8, 2400 * time.Millisecond}, {24, 1300 * time.Millisecond}, {8, 2000 * time.Millisecond}} {
		gs := g
		gs.DirtyRate = c.mibs * (1 << 20)
		ss = append(ss, Sample{Strategy: Postcopy, Guest: gs, Link: l, Converged: true, MaxDowntime: time.Second,
			Total: time.Duration(4+i) * time.Second, Downtime: 8 * time.Millisecond, Bytes: int64(150+20*i) << 20,
			ServicePause: sw + c.stall})
	}
	got := Calibrate(Defaults(), ss)[Postcopy]
	if math.Abs(got.PostcopyStall-2.0) > 0.001 {
		t.Errorf("calibrated stall %.3f s, want the median of 2.4, 1.3 and 2.0 s", got.PostcopyStall)
	}
}
