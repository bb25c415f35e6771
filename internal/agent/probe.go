package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/ferryvm/ferry/api"
)

// probeLoop asks every running guest for its health over HTTP and reports
// changes (healthy or not, a new boot id) in the VM's status.
func (a *Agent) probeLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastWrite := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, in := range a.instances() {
			if !in.alive() || in.rec.Endpoint == "" {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			asked := time.Now()
			g := a.rt.Probe(pctx, in.rec.Endpoint)
			took := time.Since(asked)
			cancel()
			in.mu.Lock()
			if g.Healthy {
				in.tookHealth(took)
			}
			old := in.guest
			if g.Healthy || old == nil {
				in.guest = g
			} else {
				// Keep what we last knew of the guest, marked unhealthy.
				cp := *old
				cp.Healthy = false
				in.guest = &cp
			}
			cur := in.guest
			switch {
			case g.Healthy:
				in.unhealthySince = time.Time{}
			case in.unhealthySince.IsZero():
				in.unhealthySince = time.Now()
			}
			hung := in.ha && !in.incoming && old != nil && !old.LastSeen.IsZero() &&
				!in.unhealthySince.IsZero() && time.Since(in.unhealthySince) > UnresponsiveReset
			if hung {
				in.unhealthySince = time.Time{} // once per episode
			}
			in.mu.Unlock()
			if hung {
				a.resetHung(ctx, in)
				continue
			}
			changed := old == nil || old.Healthy != cur.Healthy || old.BootID != cur.BootID
			if changed || time.Since(lastWrite[in.name]) > probeRefresh {
				if vm, err := a.st.GetVM(ctx, in.name); err == nil && vm.Status.Phase == api.PhaseRunning && vm.Status.PID == in.rec.PID && in.alive() {
					a.putStatus(ctx, in.name, a.runningStatus(in))
					lastWrite[in.name] = time.Now()
				}
			}
		}
	}
}

// probeRefresh is how often a guest's status is rewritten when its probe
// saw nothing new (its last-seen time): at 20,000 guests every 15 s was a
// third of etcd's idle writes.
const probeRefresh = time.Minute

// UnresponsiveReset is how long an HA guest that answered before may fail
// its health check before the agent resets it.
const UnresponsiveReset = 15 * time.Second

// resetHung resets an HA guest that stopped answering: QEMU runs with
// -no-reboot, so the reset ends it and the agent's self-healing restarts it
// (a fresh boot) like any other unexpected exit.
func (a *Agent) resetHung(ctx context.Context, in *instance) {
	msg := fmt.Sprintf("HA guest %s did not answer its health check for %s; resetting it", in.name, UnresponsiveReset)
	a.log.Warn(msg)
	a.event(ctx, api.Event{Kind: "guest-unresponsive", VM: in.name, Node: a.cfg.Node, Message: msg})
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := in.qmp.Execute(cctx, "system_reset", nil, nil); err != nil {
		a.log.Error("resetting an unresponsive guest; killing it", "vm", in.name, "err", err)
		a.rt.Kill(cctx, in.rec.PID, in.rec.UUID)
	}
}
