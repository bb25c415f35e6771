package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/internal/failpoint"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/revert"
)

// A live migration between two agents, coordinated only through the VM's
// migration record in the store (invariant 3):
//
//	leader: queued         -> admitted within the limits                  -> pending
//	target: pending        -> start QEMU paused (-S) with -incoming       -> target-ready
//	source: target-ready   -> migrate                                     -> copying
//	source: QEMU completes and stops its copy (postmigrate)
//	target: the stream arrived, its QEMU still paused: one transaction
//	        moves ownership (bound to the target's lease) and placement,
//	        if the source still owns the VM and nobody cancelled          -> switchover
//	target: cont, pin the MAC, announce, check the guest answers          -> completed
//	source: sees switchover and destroys its stopped copy
//
// Before that transaction the guest runs only on the source; a cancel, a
// failure, or a target that does not take over in time ends the migration
// with a compare-and-swap on the same record (which excludes the target's
// transaction) and only then is the source resumed. After it, only the
// target may run the guest. (QEMU's pause-before-switchover would give an
// earlier cancel point, but QEMU 7.2 corrupts guest memory with it under
// TCG; see internal/migrate.)

// DefaultMigrationStall ends a migration whose transfer makes no progress
// for this long (Config.MigrationStall).
const DefaultMigrationStall = 20 * time.Second

// migration handles the migration part of a reconcile. It reports whether
// the migration owns the VM's reconcile right now (then the normal desired
// state logic must not run).
func (a *Agent) migration(ctx context.Context, vm *api.VM) (bool, error) {
	name := vm.Spec.Name
	m, rev, err := a.st.GetMigration(ctx, name)
	if err != nil || m == nil {
		return false, err
	}
	a.traffic.sawMigration(m, a.cfg.Node, time.Now())
	a.mu.Lock()
	inc := a.incoming[name]
	a.mu.Unlock()
	if inc != nil && (inc.migrationID != m.ID || api.MigrationTerminal(m.Phase)) && !inc.isResumed() {
		// A target QEMU of a migration that ended or was superseded.
		a.dropIncoming(ctx, inc, "migration "+m.Phase)
		inc = nil
	}
	if api.MigrationTerminal(m.Phase) {
		if m.Source == a.cfg.Node {
			// A source end opened while the migration was pending.
			a.mu.Lock()
			src := a.vms[name]
			a.mu.Unlock()
			if src != nil && src.preparedFor == m.ID {
				src.closeTunnel()
			}
		}
		return false, nil
	}
	switch a.cfg.Node {
	case m.Target:
		return true, a.migrateTarget(ctx, vm, m, rev, inc)
	case m.Source:
		return true, a.migrateSource(ctx, vm, m, rev)
	}
	return false, nil
}

// ---- target side ----

func (a *Agent) migrateTarget(ctx context.Context, vm *api.VM, m *api.Migration, rev int64, inc *instance) error {
	if m.Cancel && m.Phase == api.MigPending {
		// Nothing was sent yet: the target ends it. Later, the source
		// cancels its QEMU's migration and ends it; the target then drops
		// its copy (killing it first would turn a cancel into a failure).
		if inc != nil {
			a.dropIncoming(ctx, inc, "cancelled")
		}
		a.finishMigration(ctx, m.VM, api.MigCancelled, "cancelled before the copy started")
		return nil
	}
	if inc != nil && !inc.alive() {
		a.dropIncoming(ctx, inc, "target QEMU exited")
		if m.Phase != api.MigSwitchover {
			a.targetLostInCopy(ctx, m.VM)
		} else {
			a.finishMigration(ctx, m.VM, api.MigFailed, "the target's QEMU exited during switchover; the guest must be restarted:\n"+a.logTail(m.VM))
			a.putStatus(ctx, m.VM, api.VMStatus{Phase: api.PhaseFailed, Node: a.cfg.Node, StartSeq: vm.Spec.StartSeq,
				Message: "lost during migration switchover", LogTail: a.logTail(m.VM)})
		}
		return nil
	}
	switch m.Phase {
	case api.MigPending:
		if inc != nil {
			return nil
		}
		prepStart := time.Now()
		uri, err := a.prepareIncoming(ctx, vm.Spec, m)
		if err != nil {
			a.log.Error("preparing incoming migration", "vm", m.VM, "err", err)
			a.finishMigration(ctx, m.VM, api.MigFailed, "target "+a.cfg.Node+" could not prepare: "+err.Error())
			return nil
		}
		_, _, err = a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
			if cur.ID != m.ID || cur.Phase != api.MigPending || cur.Cancel {
				return errors.New("migration changed")
			}
			cur.Phase, cur.TargetURI, cur.TargetLease = api.MigTargetReady, uri, int64(a.lease())
			cur.Timeline = append(cur.Timeline, a.step("target QEMU listening", prepStart), a.step("target ready", time.Now()))
			return nil
		})
		if err != nil {
			a.mu.Lock()
			inc := a.incoming[m.VM]
			a.mu.Unlock()
			if inc != nil {
				a.dropIncoming(ctx, inc, "migration changed while preparing")
			}
		}
		return nil
	case api.MigTargetReady, api.MigCopying, api.MigSwitchover:
		if inc == nil && m.Phase == api.MigSwitchover {
			a.mu.Lock()
			run := a.vms[m.VM]
			a.mu.Unlock()
			if run != nil && run.migrationID == m.ID {
				return a.followPostcopy(ctx, run, m)
			}
		}
		if inc == nil {
			if m.Phase == api.MigSwitchover {
				a.finishMigration(ctx, m.VM, api.MigFailed, "the target lost its incoming QEMU (agent restart?) during switchover")
			}
			return nil
		}
		return a.finishIncoming(ctx, vm, m, inc)
	}
	return nil
}

// prepareIncoming starts the target QEMU paused, listening for the stream.
func (a *Agent) prepareIncoming(ctx context.Context, spec api.VMSpec, m *api.Migration) (string, error) {
	plan := m.Plan
	if plan == nil {
		return "", errors.New("the migration has no plan (recorded by an older Ferry)")
	}
	if plan.Machine != "" && !a.cfg.QEMU.HasMachine(plan.Machine) {
		return "", fmt.Errorf("this host's QEMU %s cannot run the guest's machine type %s", a.cfg.QEMU.Version, plan.Machine)
	}
	r := revert.New()
	defer r.Fail()
	cfg, endpoint, tap, err := a.guestConfig(ctx, spec, plan.Machine, plan.Boot, r)
	if err != nil {
		return "", err
	}
	cfg.Incoming = "defer"
	pid, err := a.launchQEMU(ctx, cfg, filepath.Join(a.vmDir(spec.Name), "qemu.log"))
	if err != nil {
		return "", err
	}
	r.Add(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.rt.Kill(kctx, pid, spec.UUID)
	})
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	mon, err := a.rt.Dial(dctx, cfg.QMPSocket)
	cancel()
	if err != nil {
		return "", err
	}
	c := qemu.QMP{Monitor: mon}
	r.Add(func() { c.Close() })
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.SetMigrationCapabilities(cctx, plan.Capabilities); err != nil {
		return "", err
	}
	if err := c.SetMigrationParameters(cctx, plan.Parameters); err != nil {
		return "", err
	}
	uri, tgt, err := a.listenIncoming(cctx, c, spec.Name, m)
	if err != nil {
		return "", err
	}
	if tgt != nil {
		r.Add(tgt.Close)
	}
	in := &instance{tgtTunnel: tgt, name: spec.Name, memoryMiB: spec.MemoryMiB, qmp: c,
		rec: runtimeRecord{UUID: spec.UUID, PID: pid, QMP: cfg.QMPSocket, Console: cfg.ConsoleSocket, Endpoint: endpoint,
			Tap: tap, StartSeq: spec.StartSeq, MemoryMiB: spec.MemoryMiB, Accel: a.cfg.Accel, QEMUVersion: a.cfg.QEMU.Version},
		gone: make(chan struct{}), detached: make(chan struct{}), migEvents: make(chan string, 16), migrationID: m.ID,
		incoming: true, mac: spec.MAC, ha: spec.HA}
	in.rec.Incoming, in.rec.MigrationID, in.rec.MAC, in.rec.HA = true, m.ID, spec.MAC, spec.HA
	if err := a.saveRecord(spec.Name, in.rec); err != nil {
		return "", err
	}
	r.Success()
	a.mu.Lock()
	a.incoming[spec.Name] = in
	a.mu.Unlock()
	go a.monitor(in)
	a.log.Info("incoming migration ready", "vm", spec.Name, "from", m.Source, "uri", uri)
	failpoint.Sleep(ctx, a.log, a.cfg.FailpointFile, failpoint.TargetListening)
	return uri, nil
}

// finishIncoming runs the guest on the target once the stream completed and
// this host owns the VM.
func (a *Agent) finishIncoming(ctx context.Context, vm *api.VM, m *api.Migration, inc *instance) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	info, err := inc.qmp.QueryMigrate(qctx)
	cancel()
	if err != nil || (info.Status != "completed" && info.Status != "postcopy-active") {
		return nil // not yet; the MIGRATION event brings us back
	}
	ok, err := a.resumeIncoming(ctx, inc)
	if err != nil {
		return err
	}
	if !ok {
		// Not ours to run (cancelled, or the source took it back): the
		// source resumes its copy once the record says so.
		if m.Cancel && m.Phase == api.MigCopying {
			a.st.UpdateMigration(ctx, m.VM, func(c *api.Migration) error {
				if c.ID != m.ID || c.Phase != api.MigCopying {
					return errors.New("moved on")
				}
				c.Phase, c.Error, c.Finished = api.MigCancelled, "cancelled after the copy; the guest keeps running on "+m.Source, time.Now().UTC()
				return nil
			})
		}
		a.dropIncoming(ctx, inc, "not taken over")
		return nil
	}
	resumed := inc.resumedAt
	inc.mu.Lock()
	var handover []api.MigrationEvent
	if !inc.streamDoneAt.IsZero() {
		handover = append(handover, a.step("stream complete on target", inc.streamDoneAt))
	}
	if !inc.takenOverAt.IsZero() {
		handover = append(handover, a.step("ownership moved to target", inc.takenOverAt))
	}
	inc.mu.Unlock()
	inc.rec.Started = resumed.UTC()
	inc.rec.Incoming = false
	if err := a.saveRecord(m.VM, inc.rec); err != nil {
		a.log.Warn("saving runtime record", "vm", m.VM, "err", err)
	}
	a.mu.Lock()
	delete(a.incoming, m.VM)
	a.vms[m.VM] = inc
	a.mu.Unlock()
	a.putStatus(ctx, m.VM, a.runningStatus(inc))
	a.log.Info("migrated guest running", "vm", m.VM, "from", m.Source)
	// The network follows: check from here that the guest answers, and
	// announce again if it does not; and time when it answers again.
	go a.checkReachable(inc)
	go a.timeAnswering(inc, m.VM, m.ID)
	if info.Status != "completed" {
		// Post-copy: the guest runs here while its remaining pages still
		// come from the source; the migration completes when they have
		// (followPostcopy).
		a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
			if cur.ID != m.ID {
				return errors.New("another migration")
			}
			cur.Timeline = append(append(cur.Timeline, handover...), a.step("guest resumed on target (post-copy: pages still arriving)", resumed))
			return nil
		})
		return nil
	}
	inc.closeTunnel()
	a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
		if cur.ID != m.ID {
			return errors.New("another migration")
		}
		cur.Phase = api.MigCompleted
		cur.Finished = time.Now().UTC()
		cur.Timeline = append(append(cur.Timeline, handover...), a.step("guest resumed on target", resumed), a.step("completed", cur.Finished))
		return nil
	})
	return nil
}

// resumeIncoming takes a migrated guest over and runs it: once its stream
// has arrived (the QEMU is still paused), one transaction moves ownership and
// placement here — only if the source still owns the VM and the migration is
// still copying and not cancelled — and only then do the CPUs run. It is
// called from the QMP event (fast path) and from reconcile, and acts once.
// It reports false when the guest is not this host's to run.
func (a *Agent) resumeIncoming(ctx context.Context, in *instance) (bool, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.resumed {
		return true, nil
	}
	if err := a.mayRun(in); err != nil {
		return false, err
	}
	// The source may write the record meanwhile (progress): retry the
	// compare-and-swap while the migration is still ours to take. Every
	// read here is guest downtime: the record comes first, the owner only
	// when the record says we took over already (a retry after a restart).
	var orev int64
	for attempt := 0; ; attempt++ {
		m, rev, err := a.st.GetMigration(ctx, in.name)
		if err != nil {
			return false, err
		}
		if m != nil && m.ID == in.migrationID && m.Phase == api.MigSwitchover && m.Target == a.cfg.Node {
			owner, r, err := a.st.Owner(ctx, in.name)
			if err != nil {
				return false, err
			}
			if owner != a.cfg.Node {
				return false, nil
			}
			orev = r
			break
		}
		if m == nil || m.ID != in.migrationID || m.Phase != api.MigCopying || m.Cancel || attempt == 20 {
			return false, nil
		}
		trev, ok, err := a.st.Takeover(ctx, m, rev, a.lease())
		if err != nil {
			return false, err
		}
		if ok {
			orev = trev
			in.takenOverAt = time.Now()
			failpoint.Sleep(ctx, a.log, a.cfg.FailpointFile, failpoint.AfterTakeover)
			break
		}
	}
	if err := a.mayRun(in); err != nil { // the takeover may have taken a while
		return false, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := in.qmp.Cont(cctx); err != nil {
		return false, fmt.Errorf("resuming migrated guest: %w", err)
	}
	in.resumed, in.incoming, in.ownerRev, in.resumedAt = true, false, orev, time.Now()
	if in.rec.Tap != "" {
		if err := a.rt.PinMAC(in.rec.Tap, in.mac); err != nil {
			a.log.Warn("pinning the guest's MAC to its tap", "vm", in.name, "err", err)
		}
	}
	in.qmp.AnnounceSelf(cctx, 5)
	return true, nil
}

func (in *instance) isResumed() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.resumed
}

// checkReachable probes the migrated guest from this host and re-announces
// its MAC until it answers (or a few rounds have passed).
func (a *Agent) checkReachable(in *instance) {
	if in.rec.Endpoint == "" {
		return
	}
	// Not at once: announce-self has told the network, and right after the
	// switchover the guest (its TCG translation cache cold) has its hands
	// full answering its own clients.
	select {
	case <-in.gone:
		return
	case <-time.After(time.Second):
	}
	for round := 0; round < 4; round++ {
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			pctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			g := a.rt.Probe(pctx, in.rec.Endpoint)
			cancel()
			if g.Healthy {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		a.log.Warn("migrated guest does not answer; announcing again", "vm", in.name, "round", round+1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		in.qmp.AnnounceSelf(ctx, 3)
		cancel()
	}
}

// timeAnswering polls a migrated guest's health check every 20 ms, for up
// to 15 s, and records when it first answers (Migration.AnsweringAt).
func (a *Agent) timeAnswering(in *instance, vm, id string) {
	if in.rec.Endpoint == "" {
		return
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		pctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		g := a.rt.Probe(pctx, in.rec.Endpoint)
		cancel()
		if g.Healthy {
			at := time.Now().UTC()
			a.st.UpdateMigration(context.Background(), vm, func(cur *api.Migration) error {
				if cur.ID != id {
					return errors.New("another migration")
				}
				cur.AnsweringAt = at
				cur.Timeline = append(cur.Timeline, a.step("guest answering on target", at))
				return nil
			})
			return
		}
		select {
		case <-in.gone:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// dropIncoming destroys a target QEMU that must not run.
func (a *Agent) dropIncoming(ctx context.Context, inc *instance, why string) {
	inc.mu.Lock()
	inc.expectExit = true
	inc.mu.Unlock()
	kctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	a.rt.Kill(kctx, inc.rec.PID, inc.rec.UUID)
	cancel()
	a.mu.Lock()
	if a.incoming[inc.name] == inc {
		delete(a.incoming, inc.name)
	}
	a.mu.Unlock()
	inc.qmp.Close()
	inc.closeTunnel()
	if inc.rec.Incoming {
		os.Remove(a.recordPath(inc.name))
	}
	os.Remove(inc.rec.QMP)
	os.Remove(inc.rec.Console)
	if inc.rec.Tap != "" {
		a.rt.DeleteTap(inc.rec.Tap)
	}
	a.log.Info("incoming guest destroyed", "vm", inc.name, "why", why)
}

// finishMigration ends a migration in a terminal phase (unless it already is).
func (a *Agent) finishMigration(ctx context.Context, vm, phase, msg string) {
	a.st.UpdateMigration(ctx, vm, func(cur *api.Migration) error {
		if api.MigrationTerminal(cur.Phase) {
			return errors.New("already finished")
		}
		cur.Phase, cur.Error, cur.Finished = phase, msg, time.Now().UTC()
		return nil
	})
}

// targetLostInCopy ends a migration whose target QEMU exited before the
// switchover: the guest still runs on the source. A QEMU receiving a
// pre-copy stream exits when the source cancels it, so when a cancel was
// asked for, the exit is the cancel's doing and the migration ends
// cancelled (decided on the record as it is now, not as this agent last saw
// it: the cancel may be newer than the exit).
func (a *Agent) targetLostInCopy(ctx context.Context, vm string) {
	tail := a.logTail(vm)
	a.st.UpdateMigration(ctx, vm, func(cur *api.Migration) error {
		if api.MigrationTerminal(cur.Phase) {
			return errors.New("already finished")
		}
		if cur.Cancel {
			cur.Phase, cur.Error = api.MigCancelled, "cancelled; the target's QEMU ended with the stream"
		} else {
			cur.Phase, cur.Error = api.MigFailed, "the target's QEMU exited during the copy:\n"+tail
		}
		cur.Finished = time.Now().UTC()
		return nil
	})
}

func (a *Agent) step(what string, at time.Time) api.MigrationEvent {
	return api.MigrationEvent{Step: what, Host: a.cfg.Node, At: at.UTC()}
}
