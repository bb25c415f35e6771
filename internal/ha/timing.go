// Package ha holds Ferry's high-availability machinery: the timing that
// makes fencing safe, the per-host watchdog process, and the leader's HA
// manager that restarts guests of dead hosts elsewhere.
//
// The safety argument (docs/HA.md has it in full): a host runs an HA guest
// only while its etcd lease is alive. The agent renews the lease every
// Renew; if no renewal has succeeded for FenceAfter (counted from when the
// last successful renewal was *sent*, which is no later than when etcd
// refreshed the lease) it kills its HA guests itself; if the agent hangs,
// the watchdog process kills them at WatchdogAfter after that same instant.
// Killing takes at most KillBudget. All of that must end before the lease
// can expire, LeaseTTL after the send, even if this host's clock runs
// ClockDrift slow against etcd's. The HA manager then waits Margin more after
// it has seen the expiry before it starts the guest anywhere else.
package ha

import (
	"fmt"
	"time"
)

// Timing is the set of durations whose order keeps a guest from running on
// two hosts at once.
type Timing struct {
	LeaseTTL      time.Duration // etcd lease of a host (whole seconds: etcd's unit)
	Renew         time.Duration // how often the agent renews it
	RenewTimeout  time.Duration // deadline of one renewal call
	FenceAfter    time.Duration // the agent kills its HA guests after this long without a renewal
	WatchdogAfter time.Duration // the watchdog kills them after this long if the agent does not
	KillBudget    time.Duration // longest time SIGKILL of a QEMU takes to end it
	Margin        time.Duration // the HA manager waits this long after seeing a lease expire
	ClockDrift    float64       // largest rate difference between a host's clock and etcd's (e.g. 0.01)
	// Alive is how often a host writes its alive key (0: AliveEvery); the
	// leader reports a host unreachable after three beats missed.
	Alive time.Duration
}

// AliveEvery is how often a host writes its alive key.
func (t Timing) AliveEvery() time.Duration {
	if t.Alive > 0 {
		return t.Alive
	}
	return AliveEvery
}

// Suspect is how long a host may go unseen before it is reported.
func (t Timing) Suspect() time.Duration { return 3 * t.AliveEvery() }

// DefaultTiming targets detection and restart within about 2 s of a host's
// death: a 2 s lease (etcd counts in whole seconds, and 1 s would fence
// healthy hosts through an etcd leader election), renewed 8 times per TTL so
// one or two lost renewals cost nothing.
func DefaultTiming() Timing {
	return Timing{
		LeaseTTL:      2 * time.Second,
		Renew:         250 * time.Millisecond,
		RenewTimeout:  400 * time.Millisecond,
		FenceAfter:    1400 * time.Millisecond,
		WatchdogAfter: 1600 * time.Millisecond,
		KillBudget:    200 * time.Millisecond,
		Margin:        500 * time.Millisecond,
		ClockDrift:    0.01,
	}
}

// Check enforces the timing inequality; the agent refuses to start when it
// does not hold.
func (t Timing) Check() error {
	switch {
	case t.LeaseTTL < time.Second || t.LeaseTTL%time.Second != 0:
		return fmt.Errorf("lease TTL %s: must be a whole number of seconds, at least 1s", t.LeaseTTL)
	case t.Renew <= 0 || t.RenewTimeout <= 0 || t.FenceAfter <= 0 || t.WatchdogAfter <= 0 || t.KillBudget <= 0 || t.Margin < 0:
		return fmt.Errorf("every HA duration must be positive: %+v", t)
	case t.ClockDrift < 0 || t.ClockDrift >= 0.5:
		return fmt.Errorf("clock drift %.3f: must be in [0, 0.5)", t.ClockDrift)
	case t.Renew+2*t.RenewTimeout > t.FenceAfter:
		// A host must get at least two whole renewal attempts (one may hang
		// until its timeout) before it fences itself.
		return fmt.Errorf("renew interval %s + 2 × renew timeout %s must be at most the self-fence deadline %s", t.Renew, t.RenewTimeout, t.FenceAfter)
	case t.FenceAfter > t.WatchdogAfter:
		return fmt.Errorf("self-fence deadline %s must not be later than the watchdog deadline %s (the watchdog is the backstop)", t.FenceAfter, t.WatchdogAfter)
	}
	// Everything must be dead before the earliest moment etcd can expire the
	// lease, as measured on this host's possibly slow clock.
	earliestExpiry := time.Duration(float64(t.LeaseTTL) * (1 - t.ClockDrift))
	if t.WatchdogAfter+t.KillBudget > earliestExpiry {
		return fmt.Errorf("watchdog deadline %s + kill budget %s must end before the lease can expire (%s = TTL %s less %.1f%% clock drift)",
			t.WatchdogAfter, t.KillBudget, earliestExpiry, t.LeaseTTL, t.ClockDrift*100)
	}
	return nil
}

// RestartNotBefore is when the HA manager may start a dead host's guests
// elsewhere, given when it saw the host's lease expire.
func (t Timing) RestartNotBefore(expirySeen time.Time) time.Time {
	return expirySeen.Add(t.Margin)
}

// TimingFor scales DefaultTiming to a longer lease, as large clusters on
// busy hosts want (every host renews eight times per lease): renewals at
// TTL/8, each given TTL/5, self-fence at 0.7×TTL, the watchdog at 0.8×TTL,
// an alive beat every TTL/4, the margin as by default. A dead host is then noticed
// within about TTL.
func TimingFor(ttl time.Duration) Timing {
	t := DefaultTiming()
	if ttl == 0 || ttl == t.LeaseTTL {
		return t
	}
	t.LeaseTTL, t.Renew, t.RenewTimeout = ttl, ttl/8, ttl/5
	// The margin stays: the inequality already has every guest dead
	// before the lease can expire; the margin only covers the leader
	// seeing the expiry early, which does not grow with the lease.
	t.FenceAfter, t.WatchdogAfter = ttl*7/10, ttl*8/10
	// A beat a quarter lease: at 1,000 hosts, two beats a second each were
	// the largest part of etcd's writes.
	t.Alive = ttl / 4
	return t
}
