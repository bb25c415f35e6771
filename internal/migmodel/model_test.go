package migmodel

import (
	"math"
	"strings"
	"testing"
	"time"
)

const mib = 1 << 20

var lim = Limits{DowntimeStart: 20 * time.Millisecond, DowntimeMax: 300 * time.Millisecond, Timeout: 2 * time.Minute}

// allowed is the longest pause the default policy allows.
const allowed = time.Second

func TestIdleGuestIsOnePass(t *testing.T) {
	// 256 MiB, 200 MiB of it zero, over 25 MB/s at full efficiency.
	g := Guest{MemoryBytes: 256 * mib, ZeroShare: 200.0 / 256}
	l := Link{Bandwidth: 25e6}
	cal := Calibration{Precopy: {Setup: 300 * time.Millisecond, Efficiency: 1, Switchover: 30 * time.Millisecond}}
	p := Predict(Precopy, g, l, lim, cal)
	want := 0.3 + (56*mib*(1+16.0/page)+200*mib/page*9)/25e6 + 0.03
	if !p.Converges || math.Abs(p.Total.Seconds()-want) > 0.02 || p.Downtime > 50*time.Millisecond {
		t.Fatalf("idle guest: %+v, want total %.2fs", p, want)
	}
}

func TestBusyGuests(t *testing.T) {
	g := Guest{MemoryBytes: 256 * mib, WorkingSet: 64 * mib, CompressRatio: 1} // random pages
	l := Link{Bandwidth: 25e6}                                                 // about 24 MiB/s
	cal := Defaults()

	// Dirtying half the link's rate: rounds shrink geometrically.
	g.DirtyRate = 12e6
	p := Predict(Precopy, g, l, lim, cal)
	if !p.Converges || p.Rounds < 3 || p.Downtime > lim.DowntimeMax+cal.For(Precopy).Switchover {
		t.Fatalf("half the link: %+v", p)
	}

	// Dirtying faster than the link: pre-copy never fits; auto-converge
	// and post-copy do; Choose does not pick pre-copy.
	g.DirtyRate = 40e6
	preds := PredictAll(nil, g, l, lim, cal)
	by := map[string]Prediction{}
	for _, p := range preds {
		by[p.Strategy] = p
	}
	if by[Precopy].Converges || by[Multifd].Converges {
		t.Fatalf("pre-copy of a guest dirtying 40 MB/s over 25 MB/s converged: %+v", by[Precopy])
	}
	if !strings.Contains(by[Precopy].Why, "does not finish") {
		t.Errorf("why: %q", by[Precopy].Why)
	}
	if ac := by[AutoConverge]; !ac.Converges || ac.Throttle < 40 {
		t.Fatalf("auto-converge: %+v", ac)
	}
	// Post-copy converges, but a guest writing 38 MiB/s stalls on the
	// target for longer than a second: it does not fit.
	if pc := by[Postcopy]; !pc.Converges || pc.PostcopyFor <= 0 || pc.Downtime < time.Second {
		t.Fatalf("post-copy: %+v", pc)
	}
	best, why, ok := Choose(preds, nil, allowed)
	if !ok || best.Strategy != AutoConverge || !strings.Contains(why, "postcopy: its pause") {
		t.Fatalf("chose %s: %s", best.Strategy, why)
	}
	// A policy without post-copy gets auto-converge.
	best, _, ok = Choose(preds, []string{Precopy, AutoConverge}, allowed)
	if !ok || best.Strategy != AutoConverge {
		t.Fatalf("without post-copy chose %s", best.Strategy)
	}
	// A policy allowing only pre-copy gets nothing, and says why.
	if _, why, ok := Choose(preds, []string{Precopy}, allowed); ok || !strings.Contains(why, "precopy") {
		t.Fatalf("only pre-copy: %v %s", ok, why)
	}
}

func TestChoosePrefersSimpler(t *testing.T) {
	preds := []Prediction{
		{Strategy: Precopy, Converges: true, Total: 1030 * time.Millisecond},
		{Strategy: Multifd, Converges: true, Total: 1000 * time.Millisecond},
		{Strategy: Postcopy, Converges: true, Total: 600 * time.Millisecond},
	}
	if best, _, _ := Choose(preds, nil, time.Second); best.Strategy != Postcopy {
		t.Fatalf("chose %s over a much faster post-copy", best.Strategy)
	}
	if best, why, _ := Choose(preds[:2], nil, time.Second); best.Strategy != Precopy || !strings.Contains(why, "simpler") {
		t.Fatalf("chose %s (%s); pre-copy is within 5 %%", best.Strategy, why)
	}
}

// Calibration recovers a stream's efficiency, setup and pause from
// migrations the model itself produced with other constants.
func TestCalibrateRecoversConstants(t *testing.T) {
	truth := Calibration{Precopy: {Setup: 800 * time.Millisecond, Efficiency: 0.6, Switchover: 50 * time.Millisecond}}
	var samples []Sample
	for _, mem := range []int64{256 * mib, 1024 * mib} {
		for _, bw := range []float64{12.5e6, 25e6, 60e6} {
			g := Guest{MemoryBytes: mem, DirtyRate: 2e6, WorkingSet: 32 * mib, ZeroShare: 0.5}
			l := Link{Bandwidth: bw}
			p := Predict(Precopy, g, l, lim, truth)
			samples = append(samples, Sample{Strategy: Precopy, Guest: g, Link: l, Total: p.Total, Downtime: p.Downtime,
				Bytes: p.Bytes, Rounds: p.Rounds, Converged: p.Converges, MaxDowntime: lim.DowntimeMax})
		}
	}
	got := Calibrate(Defaults(), samples).For(Precopy)
	if math.Abs(got.Efficiency-0.6) > 0.02 || (got.Setup-800*time.Millisecond).Abs() > 50*time.Millisecond ||
		(got.Switchover-50*time.Millisecond).Abs() > 10*time.Millisecond || got.Samples != len(samples) {
		t.Fatalf("calibrated %+v, want efficiency 0.6, setup 800ms, switchover 50ms", got)
	}
	// Too few samples keep the defaults.
	if got := Calibrate(Defaults(), samples[:2]).For(Precopy); got.Samples != 0 {
		t.Fatalf("two samples replaced the defaults: %+v", got)
	}
}
