package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/qemu"
)

// migrateSource drives the outgoing side once the target is ready. It blocks
// this VM's reconcile until the migration ends, so nothing else touches the
// source QEMU meanwhile.
func (a *Agent) migrateSource(ctx context.Context, vm *api.VM, m *api.Migration, rev int64) error {
	if m.Phase == api.MigSwitchover {
		// Ownership has moved: only the target may finish it. Our part ends
		// when our QEMU completes (followed in the call that started it).
		a.mu.Lock()
		in := a.vms[m.VM]
		a.mu.Unlock()
		if in != nil && in.alive() && in.migrationID == m.ID {
			return a.followSource(ctx, in, m, rev)
		}
		return nil
	}
	a.mu.Lock()
	in := a.vms[m.VM]
	a.mu.Unlock()
	if in == nil || !in.alive() {
		why := "the guest is not running on the source " + a.cfg.Node
		if in != nil {
			why += " (its QEMU has exited)"
		}
		a.log.Warn("migration refused", "vm", m.VM, "why", why, "known", len(a.vms))
		a.finishMigration(ctx, m.VM, api.MigFailed, why)
		return nil
	}
	if m.Cancel {
		a.finishMigration(ctx, m.VM, api.MigCancelled, "cancelled before the copy started")
		return nil
	}
	if m.Phase != api.MigTargetReady {
		if m.Phase == api.MigCopying {
			// We restarted mid-copy: QEMU's outgoing migration may still
			// run; follow it to its end.
			return a.followSource(ctx, in, m, rev)
		}
		return nil // pending: the target prepares
	}
	plan := migrate.PlanFor(m.Options)
	caps := map[string]bool{}
	for k, v := range plan.Both {
		caps[k] = v
	}
	for k, v := range plan.SourceOnly {
		caps[k] = v
	}
	params := map[string]any{}
	for k, v := range plan.BothParams {
		params[k] = v
	}
	for k, v := range plan.SourceParams {
		params[k] = v
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := in.qmp.SetMigrationCapabilities(cctx, caps)
	if err == nil {
		err = in.qmp.SetMigrationParameters(cctx, params)
	}
	cancel()
	if err != nil {
		a.finishMigration(ctx, m.VM, api.MigFailed, "configuring the source: "+err.Error())
		return nil
	}
	// Copying, unless a cancel got in first.
	m, rev, err = a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
		if cur.ID != m.ID || cur.Phase != api.MigTargetReady || cur.Cancel {
			return errors.New("migration changed before the copy started")
		}
		cur.Phase = api.MigCopying
		cur.Timeline = append(cur.Timeline, a.step("source configured", time.Now()))
		return nil
	})
	if err != nil {
		if m != nil && m.Cancel {
			a.finishMigration(ctx, m.VM, api.MigCancelled, "cancelled before the copy started")
		}
		return nil
	}
	// QEMU flushes the disk while the guest is paused for switchover; flush
	// the host's cache of it now so little is left for that moment.
	syncFile(filepath.Join(a.cfg.StorageDir, m.VM, "disk0.qcow2"))
	cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	err = in.qmp.Migrate(cctx, m.TargetURI)
	cancel()
	if err != nil {
		a.finishMigration(ctx, m.VM, api.MigFailed, "starting the migration: "+err.Error())
		return nil
	}
	in.migrationID = m.ID
	copyStart := time.Now()
	a.log.Info("migration started", "vm", m.VM, "to", m.Target, "strategy", m.Options.Strategy)
	in.steps = append(in.steps, a.step("copy started", copyStart))
	return a.followSource(ctx, in, m, rev)
}

// followSource polls the outgoing migration, reports progress, honours a
// cancel, performs the handover at pre-switchover and cleans up at the end.
func (a *Agent) followSource(ctx context.Context, in *instance, m *api.Migration, rev int64) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastWrite time.Time
	lastBytes, lastProgress := int64(-1), time.Now()
	postcopyStarted := false
	plan := migrate.PlanFor(m.Options)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-in.gone:
			return a.sourceLost(ctx, m)
		case <-in.migEvents:
		case <-tick.C:
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := in.qmp.QueryMigrate(qctx)
		cancel()
		if err != nil {
			if !in.alive() {
				return a.sourceLost(ctx, m)
			}
			continue
		}
		// Re-read the record: a cancel may have arrived.
		cur, crev, err := a.st.GetMigration(ctx, m.VM)
		if err == nil && cur != nil && cur.ID == m.ID {
			m, rev = cur, crev
		}
		switch info.Status {
		case "pre-switchover":
			pausedAt := time.Now()
			if m.Cancel {
				a.cancelSource(ctx, in, m, "cancelled at switchover")
				return nil
			}
			// Hand over only to a host that is alive right now.
			if age, err := a.heartbeatAge(ctx, m.Target); err != nil || age > targetStale {
				a.cancelSource(ctx, in, m, fmt.Sprintf("target %s stopped reporting (last heartbeat %s ago)", m.Target, age.Round(time.Millisecond)))
				return nil
			}
			orev, ok, err := a.st.Handover(ctx, m, rev)
			if err != nil || !ok {
				// Cancelled or changed at the last moment, or the store is
				// unreachable: we still own the guest, so it stays here.
				why := "the handover transaction did not commit"
				if err != nil {
					why += ": " + err.Error()
				}
				a.cancelSource(ctx, in, m, why)
				return nil
			}
			_ = orev
			in.steps = append(in.steps, a.step("paused before switchover", pausedAt), a.step("ownership handed over", time.Now()))
			a.log.Info("ownership handed over", "vm", m.VM, "to", m.Target)
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = in.qmp.MigrateContinue(cctx, "pre-switchover")
			cancel()
			if err != nil {
				a.log.Error("migrate-continue failed after the handover", "vm", m.VM, "err", err)
			}
			continue
		case "completed":
			doneAt := time.Now()
			// QEMU 7.2 reports "completed" a moment before it has computed
			// the total time and downtime.
			for i := 0; i < 20 && info.TotalTime == 0; i++ {
				time.Sleep(10 * time.Millisecond)
				qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				if again, err := in.qmp.QueryMigrate(qctx); err == nil {
					info = again
				}
				cancel()
			}
			a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
				if cur.ID != m.ID {
					return errors.New("another migration")
				}
				cur.TotalTimeMS, cur.DowntimeMS = info.TotalTime, info.Downtime
				cur.Timeline = append(append(cur.Timeline, in.steps...), a.step("source completed", doneAt))
				cur.Progress = progressOf(info, cur.Progress)
				return nil
			})
			// The guest now belongs to the target: destroy our copy.
			a.log.Info("migration completed on the source", "vm", m.VM, "total_ms", info.TotalTime, "downtime_ms", info.Downtime)
			return a.stop(ctx, in, true, 0, "")
		case "failed", "cancelled":
			a.sourceFailed(ctx, in, m, info)
			return nil
		}
		// Progress, at most twice a second.
		if info.RAM != nil {
			if info.RAM.Transferred != lastBytes {
				lastBytes, lastProgress = info.RAM.Transferred, time.Now()
			} else if time.Since(lastProgress) > stallTimeout && m.Phase == api.MigCopying {
				a.cancelSource(ctx, in, m, fmt.Sprintf("no progress for %s (link down?)", stallTimeout))
				return nil
			}
		}
		if m.Cancel && m.Phase == api.MigCopying {
			a.cancelSource(ctx, in, m, "cancelled")
			return nil
		}
		if plan.Postcopy && !postcopyStarted && info.Status == "active" && info.RAM != nil && info.RAM.DirtySyncCount >= 2 {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := in.qmp.MigrateStartPostcopy(cctx); err == nil {
				postcopyStarted = true
				a.log.Info("switched to post-copy", "vm", m.VM)
			}
			cancel()
		}
		if time.Since(lastWrite) >= 500*time.Millisecond {
			lastWrite = time.Now()
			p := progressOf(info, m.Progress)
			a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
				if cur.ID != m.ID || api.MigrationTerminal(cur.Phase) {
					return errors.New("done")
				}
				cur.Progress = p
				return nil
			})
		}
	}
}

func progressOf(info qemu.MigrationInfo, prev api.MigrationProgress) api.MigrationProgress {
	p := api.MigrationProgress{QEMUStatus: info.Status, ExpectedDowntime: info.ExpectedDowntime, CPUThrottle: info.CPUThrottle}
	if r := info.RAM; r != nil {
		p.TotalBytes, p.TransferredBytes, p.RemainingBytes = r.Total, r.Transferred, r.Remaining
		p.RateMbps, p.DirtyPagesRate, p.Round = r.Mbps, r.DirtyPagesRate, r.DirtySyncCount
		if r.Mbps > 0 {
			p.ETASeconds = float64(r.Remaining*8) / (r.Mbps * 1e6)
		}
	} else {
		p.TotalBytes, p.TransferredBytes = prev.TotalBytes, prev.TransferredBytes
	}
	return p
}

// cancelSource cancels the outgoing migration and makes sure the guest runs
// on the source again.
func (a *Agent) cancelSource(ctx context.Context, in *instance, m *api.Migration, why string) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	in.qmp.MigrateCancel(cctx)
	cancel()
	// Wait for QEMU to leave the migration, then resume if it is paused.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := in.qmp.QueryMigrate(qctx)
		cancel()
		if err != nil || qemu.Terminal(info.Status) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.resumeSource(ctx, in)
	// A cancel may have landed after our last read (it is what made the
	// handover transaction fail): read again to name the outcome right.
	if cur, _, err := a.st.GetMigration(ctx, m.VM); err == nil && cur != nil && cur.ID == m.ID {
		m = cur
	}
	phase := api.MigCancelled
	if !m.Cancel {
		phase = api.MigFailed
	} else {
		why = "cancelled"
	}
	a.finishMigration(ctx, m.VM, phase, why+"; the guest keeps running on "+a.cfg.Node)
	a.log.Info("migration ended on the source", "vm", m.VM, "phase", phase, "why", why)
}

func (a *Agent) sourceFailed(ctx context.Context, in *instance, m *api.Migration, info qemu.MigrationInfo) {
	owner, _, _ := a.st.Owner(ctx, m.VM)
	if owner != a.cfg.Node {
		// Failed after the handover: the guest may not run here any more.
		a.log.Error("migration failed after the handover; destroying the source copy", "vm", m.VM, "err", info.ErrorDesc)
		a.stop(ctx, in, true, 0, "")
		a.finishMigration(ctx, m.VM, api.MigFailed, "failed after switchover: "+info.ErrorDesc)
		return
	}
	a.resumeSource(ctx, in)
	phase, why := api.MigFailed, "QEMU: "+info.ErrorDesc
	if info.Status == "cancelled" {
		phase, why = api.MigCancelled, "cancelled"
	}
	a.finishMigration(ctx, m.VM, phase, why+"; the guest keeps running on "+a.cfg.Node)
}

// resumeSource runs the source guest again if the migration left it paused.
func (a *Agent) resumeSource(ctx context.Context, in *instance) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := in.qmp.QueryStatus(qctx)
	if err == nil && !st.Running {
		if err := in.qmp.Cont(qctx); err != nil {
			a.log.Error("resuming the source guest", "vm", in.name, "err", err)
		}
	}
}

// sourceLost handles the source QEMU dying mid-migration.
func (a *Agent) sourceLost(ctx context.Context, m *api.Migration) error {
	a.finishMigration(ctx, m.VM, api.MigFailed, "the source QEMU exited during the migration; the guest must be restarted")
	a.queue.add(m.VM)
	return nil
}

func syncFile(path string) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return
	}
	f.Sync()
	f.Close()
}

// targetStale is how old a target's heartbeat may be at switchover.
const targetStale = 5 * time.Second

func (a *Agent) heartbeatAge(ctx context.Context, node string) (time.Duration, error) {
	nodes, err := a.st.ListNodes(ctx)
	if err != nil {
		return 0, err
	}
	for _, n := range nodes {
		if n.Name == node {
			return time.Since(n.Heartbeat), nil
		}
	}
	return 1 << 62, nil
}
