package main

import (
	"math"
	"testing"
	"time"
)

// TestLoadTraceShape: a guest's share peaks at its phase of the day, is at
// its base half a day away, and the day wraps around.
func TestLoadTraceShape(t *testing.T) {
	g := &loadGuest{Base: 0.03, Peak: 0.24, Phase: 0.6}
	at := func(day float64) float64 { return g.share(time.Duration(day * float64(loadDay))) }
	if v := at(0.6); math.Abs(v-0.27) > 1e-9 {
		t.Fatalf("at its phase: %.3f, want 0.27", v)
	}
	if v := at(0.1); v != 0.03 {
		t.Fatalf("half a day away: %.3f, want the base", v)
	}
	if a, b := at(0.5), at(1.5); math.Abs(a-b) > 1e-9 || a <= 0.03 || a >= 0.27 {
		t.Fatalf("on the way up: %.3f on day 1, %.3f on day 2", a, b)
	}
	late := &loadGuest{Base: 0, Peak: 1, Phase: 0.95}
	if v := late.share(time.Duration(0.05 * float64(loadDay))); v < 0.5 {
		t.Fatalf("a peak just before midnight reaches past it: %.3f", v)
	}
}

// TestPackedHomeOnceANight: a guest is packed home once a night,
// loadHomeAfter days after its peak, and never before its first.
func TestPackedHomeOnceANight(t *testing.T) {
	g := &loadGuest{Phase: 0.6}
	var due []float64
	for i := 0; i < 300; i++ { // every hundredth of a day
		if g.nightDue(time.Duration(float64(i) / 100 * float64(loadDay))) {
			due = append(due, float64(i)/100)
		}
	}
	if len(due) != 3 || due[0] != 0.9 || due[1] != 1.9 || due[2] != 2.9 {
		t.Fatalf("packed home at days %v, want 0.9, 1.9 and 2.9", due)
	}
}

// TestSummarizeFailures counts per mode and set, failed runs apart.
func TestSummarizeFailures(t *testing.T) {
	runs := []failureRun{
		{Mode: "predictive", EvacuatedBeforeDeath: true, FalseAlarms: []string{"h3"}},
		{Mode: "predictive", HeldOut: true, EvacuatedBeforeDeath: false, Reboots: 2},
		{Mode: "predictive", Error: "boom"},
		{Mode: "reactive", Reboots: 2},
	}
	s := summarizeFailures(runs)
	if len(s) != 3 {
		t.Fatalf("%d summaries: %+v", len(s), s)
	}
	want := []failureSummary{
		{Mode: "predictive", Set: "tuning", Failing: 1, Evacuated: 1, Healthy: 2, FalseAlarms: 1, Errors: 1},
		{Mode: "predictive", Set: "held-out", Failing: 1, Healthy: 2, Reboots: 2},
		{Mode: "reactive", Set: "tuning", Failing: 1, Healthy: 2, Reboots: 2},
	}
	for i := range want {
		if s[i] != want[i] {
			t.Errorf("summary %d: %+v, want %+v", i, s[i], want[i])
		}
	}
}
