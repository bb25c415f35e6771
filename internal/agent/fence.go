package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/metrics"
	"github.com/ferryvm/ferry/internal/store"
)

// leaseLoop keeps the host's lease alive (store.HostLease.KeepAlive) and feeds
// the watchdog after each renewal etcd accepted. When etcd says the lease is
// gone, the HA guests are fenced (if the deadline has not done it already)
// and a new lease is taken; ownership is re-taken under it where no other
// host took a guest over meanwhile.
func (a *Agent) leaseLoop(ctx context.Context) {
	renewal := metrics.LeaseRenewal.WithLabelValues(a.cfg.Node)
	a.lk.KeepAlive(ctx, func(took time.Duration) {
		renewal.Observe(took.Seconds())
		a.health.LeaseRenewed(took)
		a.fmu.Lock()
		was, why := a.fenced, a.fenceWhy
		a.fenced, a.fenceWhy = false, ""
		a.fmu.Unlock()
		if was {
			a.log.Warn("lease renewed again after an outage")
			if why != "" {
				go a.eventDurable(context.WithoutCancel(ctx), api.Event{Kind: "self-fenced", Node: a.cfg.Node, Message: why})
			}
		}
		a.feedWatchdog()
		a.alive(ctx)
	}, func() {
		if ctx.Err() != nil {
			return
		}
		a.fence("the node lease expired")
		a.log.Error("lost the node lease; taking a new one")
		a.newLease(ctx)
	})
}

// alive rewrites the host's alive key every HA.AliveEvery() (without holding
// up the renewals), so the cluster notices quickly when it goes quiet.
func (a *Agent) alive(ctx context.Context) {
	a.fmu.Lock()
	due := !a.aliveBusy && time.Since(a.aliveAt) >= a.cfg.HA.AliveEvery()
	if due {
		a.aliveBusy, a.aliveAt = true, time.Now()
	}
	a.fmu.Unlock()
	if !due {
		return
	}
	go func() {
		if err := ha.PutAlive(ctx, a.st, a.cfg.HA, a.cfg.Node, a.lk.ID()); err != nil && ctx.Err() == nil {
			a.log.Debug("alive key", "err", err)
		}
		a.fmu.Lock()
		a.aliveBusy = false
		a.fmu.Unlock()
	}()
}

// fenceLoop kills the HA guests once no renewal has succeeded for
// HA.FenceAfter: before etcd can expire the lease and the HA manager can
// start them elsewhere. It sleeps until exactly that deadline rather than
// polling.
func (a *Agent) fenceLoop(ctx context.Context) {
	for {
		d := a.lk.SinceOK()
		wait := a.cfg.HA.FenceAfter - d
		if wait <= 0 {
			a.fence(fmt.Sprintf("no lease renewal for %s (self-fence deadline %s)", d.Round(time.Millisecond), a.cfg.HA.FenceAfter))
			wait = a.cfg.HA.Renew // check again for the next outage
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait + time.Millisecond):
		}
	}
}

// fence kills every HA guest of this host at once (SIGKILL: nothing a hung
// guest or QEMU does can delay it), once per outage.
func (a *Agent) fence(why string) {
	a.fmu.Lock()
	if a.fenced {
		a.fmu.Unlock()
		return
	}
	a.fenced = true
	a.fmu.Unlock()
	a.mu.Lock()
	var victims []*instance
	for _, m := range []map[string]*instance{a.vms, a.incoming} {
		for _, in := range m {
			if in.ha && a.rt.IsGuest(in.rec.PID, in.rec.UUID) {
				victims = append(victims, in)
			}
		}
	}
	a.mu.Unlock()
	if len(victims) == 0 {
		a.log.Warn("self-fence deadline passed; no HA guests here", "why", why)
		return
	}
	names := make([]string, len(victims))
	for i, in := range victims {
		names[i] = in.name
	}
	// Recorded before the kill: a renewal that succeeds meanwhile must
	// find it (it writes the event once etcd answers).
	a.fmu.Lock()
	a.fenceWhy = fmt.Sprintf("host %s fenced itself (%s): killed HA guests %v", a.cfg.Node, why, names)
	a.fmu.Unlock()
	start := time.Now()
	var wg sync.WaitGroup
	for _, in := range victims {
		in.mu.Lock()
		in.expectExit, in.fenced = true, true
		in.mu.Unlock()
		wg.Add(1)
		go func() { // all at once: the kill budget is per host, not per guest
			defer wg.Done()
			kctx, cancel := context.WithTimeout(context.Background(), a.cfg.HA.KillBudget)
			defer cancel()
			if err := a.rt.Kill(kctx, in.rec.PID, in.rec.UUID); err != nil {
				a.log.Error("fenced guest still running after the kill budget", "vm", in.name, "pid", in.rec.PID, "err", err)
			}
			a.queue.add(in.name)
		}()
	}
	wg.Wait()
	metrics.HAFences.WithLabelValues(a.cfg.Node, "self").Inc()
	a.log.Error("self-fenced: HA guests killed", "why", why, "guests", len(victims), "took", time.Since(start).Round(time.Millisecond))
}

// haGuests is what the watchdog must kill if the agent stops feeding it.
func (a *Agent) haGuests() []ha.WatchGuest {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []ha.WatchGuest
	for _, m := range []map[string]*instance{a.vms, a.incoming} {
		for _, in := range m {
			if in.ha && in.alive() {
				out = append(out, ha.WatchGuest{Name: in.name, PID: in.rec.PID, UUID: in.rec.UUID})
			}
		}
	}
	return out
}

// feedWatchdog moves the watchdog's deadline to HA.WatchdogAfter after the
// send time of the last accepted renewal. With no HA guests it only keeps an
// already running watchdog disarmed (none is started for nothing).
func (a *Agent) feedWatchdog() error {
	if a.wd == nil {
		return nil
	}
	guests := a.haGuests()
	if len(guests) == 0 && !a.wd.Connected() {
		return nil
	}
	deadline := ha.MonoNow() - int64(a.lk.SinceOK()) + int64(a.cfg.HA.WatchdogAfter)
	if err := a.wd.Feed(ha.Feed{Deadline: deadline, Guests: guests}); err != nil {
		a.log.Error("feeding the watchdog", "err", err)
		return err
	}
	return nil
}

// mayRun is checked right before a guest's CPUs start or resume: the host's
// lease must be fresh (not near the self-fence deadline), and for HA guests
// the watchdog must be armed with it.
func (a *Agent) mayRun(in *instance) error {
	if !a.leaseValid() {
		return errdefs.New(errdefs.ErrUnavailable, fmt.Sprintf("this host's lease was last renewed %s ago; not running guests until it is renewed", a.lk.SinceOK().Round(time.Millisecond)))
	}
	if in != nil && in.ha {
		if a.wd == nil {
			return errdefs.New(errdefs.ErrFailedPrecondition, "this agent runs without a watchdog; it cannot run HA guests")
		}
		if err := a.feedWatchdog(); err != nil {
			return errdefs.New(errdefs.ErrUnavailable, "the watchdog cannot be armed: "+err.Error())
		}
	}
	return nil
}

// newLease takes a new lease after the old one expired, re-registers the
// node and has every guest's ownership re-taken under the new lease.
func (a *Agent) newLease(ctx context.Context) error {
	for {
		err := a.lk.Grant(ctx)
		if err == nil {
			a.mu.Lock()
			for _, in := range a.vms {
				in.mu.Lock()
				in.ownerRev = 0
				in.mu.Unlock()
				a.queue.add(in.name)
			}
			a.mu.Unlock()
			if err := a.heartbeat(ctx); err != nil {
				a.log.Warn("heartbeat", "err", err)
			}
			a.log.Info("new node lease", "lease", fmt.Sprintf("%x", a.lk.ID()))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(a.cfg.HA.Renew):
		}
	}
}

// lease is this host's current etcd lease.
func (a *Agent) lease() store.LeaseID { return a.lk.ID() }

// leaseValid reports whether this host may still start or resume guests:
// its last renewal is recent enough that the self-fence deadline is not
// near. Starting a guest needs at least half the fence deadline in hand.
func (a *Agent) leaseValid() bool { return a.lk.SinceOK() < a.cfg.HA.FenceAfter/2 }
