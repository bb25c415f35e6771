package ha

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultTimingHolds(t *testing.T) {
	if err := DefaultTiming().Check(); err != nil {
		t.Fatal(err)
	}
}

func TestTimingInequalityRejectsUnsafeSettings(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Timing)
		want string
	}{
		{"watchdog after lease", func(t *Timing) { t.WatchdogAfter = 1900 * time.Millisecond }, "before the lease can expire"},
		{"drift eats the slack", func(t *Timing) { t.ClockDrift = 0.2 }, "before the lease can expire"},
		{"fence after watchdog", func(t *Timing) { t.FenceAfter = 1700 * time.Millisecond }, "backstop"},
		{"too few renewals", func(t *Timing) { t.Renew = time.Second }, "at most the self-fence"},
		{"fractional TTL", func(t *Timing) { t.LeaseTTL = 2500 * time.Millisecond }, "whole number"},
		{"zero kill budget", func(t *Timing) { t.KillBudget = 0 }, "positive"},
	}
	for _, c := range cases {
		tm := DefaultTiming()
		c.mod(&tm)
		err := tm.Check()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
	// A longer lease with proportionally longer deadlines is fine.
	tm := Timing{LeaseTTL: 10 * time.Second, Renew: time.Second, RenewTimeout: time.Second, FenceAfter: 7 * time.Second,
		WatchdogAfter: 8 * time.Second, KillBudget: 500 * time.Millisecond, Margin: time.Second, ClockDrift: 0.01}
	if err := tm.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestTimingForHolds(t *testing.T) {
	for _, ttl := range []time.Duration{2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second} {
		if err := TimingFor(ttl).Check(); err != nil {
			t.Errorf("TimingFor(%s): %v", ttl, err)
		}
	}
	if TimingFor(2*time.Second) != DefaultTiming() {
		t.Error("TimingFor the default lease is not the default timing")
	}
}
