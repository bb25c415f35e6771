package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/revert"
)

// DefaultStopGrace is how long a graceful stop waits for the guest to power off.
const DefaultStopGrace = 30 * time.Second

// restartResetAfter is how long an HA guest must have run for its count of
// local restarts to start again from zero.
const restartResetAfter = 10 * time.Minute

// reconcile drives one VM on this host towards its desired state.
func (a *Agent) reconcile(ctx context.Context, name string) error {
	vm, err := a.st.GetVM(ctx, name)
	notFound := errors.Is(err, errdefs.ErrNotFound)
	if err != nil && !notFound {
		return err
	}
	a.mu.Lock()
	in := a.vms[name]
	a.mu.Unlock()

	// A guest that exited: record why, and let go of it.
	if in != nil && !in.alive() {
		a.exited(ctx, in, vm)
		in = nil
		if vm != nil {
			vm.Status, _ = a.currentStatus(ctx, name)
		}
	}

	if vm != nil {
		if handled, err := a.migration(ctx, vm); handled || err != nil {
			return err
		}
	}
	if notFound || vm.Node != a.cfg.Node {
		if in != nil {
			a.log.Warn("guest no longer belongs here; stopping it", "vm", name)
			return a.stop(ctx, in, true, 0, "")
		}
		// Nothing of it here, and no migration for this host to take
		// part in: out of this host's range.
		a.forgetPhase(name)
		return a.st.ForgetHostVM(ctx, a.cfg.Node, name)
	}
	spec := vm.Spec
	if spec.Deleting {
		return a.delete(ctx, name, spec.UUID, in)
	}

	if spec.Power == api.PowerRunning {
		if in != nil {
			if in.rec.StartSeq >= spec.StartSeq {
				return a.keep(ctx, in, vm)
			}
			// A restart was asked for.
			if err := a.stop(ctx, in, spec.StopForce, grace(spec), api.PhaseStarting); err != nil {
				return err
			}
		} else if vm.Status.StartSeq == spec.StartSeq && (vm.Status.Phase == api.PhaseFailed || vm.Status.Phase == api.PhaseStopped) {
			// It failed or shut itself down after this start request: wait
			// for the next one rather than looping.
			return nil
		}
		return a.start(ctx, vm)
	}

	// Desired: stopped.
	if in != nil {
		return a.stop(ctx, in, spec.StopForce, grace(spec), api.PhaseStopped)
	}
	if vm.Status.Phase != api.PhaseStopped && vm.Status.Phase != api.PhaseFailed {
		a.putStatus(ctx, name, api.VMStatus{Phase: api.PhaseStopped, Node: a.cfg.Node, StartSeq: spec.StartSeq})
	}
	return a.st.ReleaseOwner(ctx, name, a.cfg.Node)
}

func grace(spec api.VMSpec) time.Duration {
	if d, err := time.ParseDuration(spec.StopGrace); err == nil && d >= 0 {
		return d
	}
	return DefaultStopGrace
}

// keep makes sure a running guest is owned by this host and reported.
func (a *Agent) keep(ctx context.Context, in *instance, vm *api.VM) error {
	in.mu.Lock()
	needOwner := in.ownerRev == 0
	in.mu.Unlock()
	if needOwner { // re-attached, or a new lease: rebind ownership to it
		rev, err := a.st.AcquireOwner(ctx, in.name, a.cfg.Node, a.lease())
		if errors.Is(err, errdefs.ErrConflict) {
			a.log.Error("another host owns this guest; stopping our copy", "vm", in.name, "err", err)
			return a.stop(ctx, in, true, 0, "")
		}
		if err != nil {
			return err
		}
		in.mu.Lock()
		in.ownerRev = rev
		in.mu.Unlock()
	}
	if vm.Status.Phase != api.PhaseRunning || vm.Status.PID != in.rec.PID {
		a.putStatus(ctx, in.name, a.runningStatus(in))
	}
	return nil
}

// exited lets go of a guest whose QEMU ended and, unless the agent ended it,
// records why; an HA guest that failed is restarted here a few times before
// the HA manager moves it (self-healing).
func (a *Agent) exited(ctx context.Context, in *instance, vm *api.VM) {
	name := in.name
	a.forget(ctx, in)
	in.mu.Lock()
	expected := in.expectExit
	in.mu.Unlock()
	if !expected && vm != nil && vm.Node == a.cfg.Node {
		phase, msg := in.exitSummary()
		a.log.Warn("guest exited", "vm", name, "phase", phase, "why", msg)
		if phase == api.PhaseFailed {
			// A crash of a guest that ran counts against the host; a
			// start that fails is often the guest's own (a broken image)
			// and launchHealth judges those.
			a.health.QEMUError()
		}
		st := api.VMStatus{Phase: phase, Node: a.cfg.Node, StartSeq: in.rec.StartSeq,
			Message: msg, LogTail: a.logTail(name), Restarts: in.rec.Restarts}
		if vm.Spec.HA && phase == api.PhaseFailed && vm.Spec.Power == api.PowerRunning && vm.Spec.StartSeq == in.rec.StartSeq {
			// Self-healing: restart here a few times, then let the HA
			// manager move it. A guest that ran a while starts afresh.
			if time.Since(in.rec.Started) > restartResetAfter {
				st.Restarts = 0
			}
			st.Restarts++
			if st.Restarts <= ha.MaxLocalRestarts {
				st.Phase = api.PhasePending
				st.Message = fmt.Sprintf("%s; restarting it here (%d of %d)", msg, st.Restarts, ha.MaxLocalRestarts)
			} else {
				st.Message = fmt.Sprintf("%s; gave up after %d restarts here, the HA manager moves it", msg, ha.MaxLocalRestarts)
			}
			a.event(ctx, api.Event{Kind: "guest-exited", VM: name, Node: a.cfg.Node, Message: st.Message})
		}
		a.putStatus(ctx, name, st)
	}
}

func (a *Agent) runningStatus(in *instance) api.VMStatus {
	in.mu.Lock()
	g, m := in.guest, in.memory
	in.mu.Unlock()
	return api.VMStatus{Phase: api.PhaseRunning, Node: a.cfg.Node, PID: in.rec.PID, StartSeq: in.rec.StartSeq,
		Accel: in.rec.Accel, Endpoint: in.rec.Endpoint, Guest: g, Since: in.rec.Started, Restarts: in.rec.Restarts,
		QEMUVersion: in.qmp.Version().String(), Memory: m}
}

// start launches the guest: ownership first, then QEMU paused, a fencing
// check, and only then the CPUs run. Any failure undoes every step.
func (a *Agent) start(ctx context.Context, vm *api.VM) error {
	spec := vm.Spec
	name := spec.Name
	restarts := 0
	if vm.Status.Phase == api.PhasePending {
		restarts = vm.Status.Restarts
	}
	if !a.leaseValid() {
		// Not even a QEMU before the lease is fresh again.
		return a.deferStart(ctx, vm, restarts, errStaleLease)
	}
	a.putStatus(ctx, name, api.VMStatus{Phase: api.PhaseStarting, Node: a.cfg.Node, StartSeq: spec.StartSeq})
	err := a.launch(ctx, spec, restarts)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errdefs.ErrUnavailable) {
			return a.deferStart(ctx, vm, restarts, err)
		}
		a.log.Error("start failed", "vm", name, "err", err)
		a.putStatus(ctx, name, api.VMStatus{Phase: api.PhaseFailed, Node: a.cfg.Node, StartSeq: spec.StartSeq,
			Message: firstLine(err.Error()), LogTail: a.logTail(name)})
	}
	return nil
}

// errStaleLease refuses a start before the host's lease is fresh again.
var errStaleLease = errdefs.New(errdefs.ErrUnavailable, "this host's lease is not fresh; not starting guests until it is renewed")

// deferStart puts off a start this host may not make just now (its lease
// is stale, a renewal came late, the watchdog cannot be armed): that
// passes, and a failed status would end the start for good — a guest
// fenced in an outage too short to cost the lease is restarted by no one
// else. The status says why it waits (written once, not on every retry);
// the worker tries again.
func (a *Agent) deferStart(ctx context.Context, vm *api.VM, restarts int, why error) error {
	msg := "waiting: " + firstLine(why.Error())
	if vm.Status.Phase != api.PhasePending || vm.Status.Message != msg {
		a.log.Warn("start deferred", "vm", vm.Spec.Name, "why", why)
		a.putStatus(ctx, vm.Spec.Name, api.VMStatus{Phase: api.PhasePending, Node: a.cfg.Node, StartSeq: vm.Spec.StartSeq,
			Message: msg, Restarts: restarts})
	}
	return why
}

// launch starts a guest this host owns: ownership taken, QEMU started
// paused, its record saved, QMP dialled, ownership checked again at the
// same revision, the guest made known to the fencing, and only then its
// CPUs run.
// (Long on purpose: every step pushes its undo onto one revert stack, and
// the order of steps and undos is the fencing argument; split, it would
// scatter across functions that each hold part of the stack.)
func (a *Agent) launch(ctx context.Context, spec api.VMSpec, restarts int) error {
	name := spec.Name
	r := revert.New()
	defer r.Fail()

	rev, err := a.st.AcquireOwner(ctx, name, a.cfg.Node, a.lease())
	if err != nil {
		return err
	}
	r.Add(func() { a.st.ReleaseOwner(context.Background(), name, a.cfg.Node) })

	machine, boot, err := a.coldBoot(spec)
	if err != nil {
		return err
	}
	cfg, endpoint, tap, err := a.guestConfig(ctx, spec, machine, boot, r)
	if err != nil {
		return err
	}
	dir := a.vmDir(name)
	pid, err := a.launchQEMU(ctx, cfg, filepath.Join(dir, "qemu.log"))
	if err != nil {
		a.launches.failed(name, err, time.Now())
		return err
	}
	r.Add(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.rt.Kill(kctx, pid, spec.UUID)
	})
	rec := runtimeRecord{UUID: spec.UUID, PID: pid, QMP: cfg.QMPSocket, Console: cfg.ConsoleSocket,
		Endpoint: endpoint, Tap: tap, StartSeq: spec.StartSeq,
		MemoryMiB: spec.MemoryMiB, Accel: a.cfg.Accel, Started: time.Now().UTC(), HA: spec.HA, Restarts: restarts,
		QEMUVersion: a.cfg.QEMU.Version}
	if err := a.saveRecord(name, rec); err != nil {
		return err
	}
	r.Add(func() { os.Remove(a.recordPath(name)) })

	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	mon, err := a.rt.Dial(dctx, cfg.QMPSocket)
	cancel()
	if err != nil {
		a.launches.failed(name, err, time.Now())
		return err
	}
	c := qemu.QMP{Monitor: mon}
	r.Add(func() { c.Close() })

	// Fencing: run the guest only if we still hold ownership at the same revision.
	ok, err := a.st.CheckOwner(ctx, name, a.cfg.Node, rev)
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.New(errdefs.ErrConflict, "lost ownership of the vm before it could run")
	}
	if tap != "" {
		a.rt.PinMAC(tap, spec.MAC)
	}
	in := &instance{name: name, rec: rec, memoryMiB: spec.MemoryMiB, qmp: c, ownerRev: rev, ha: spec.HA,
		gone: make(chan struct{}), detached: make(chan struct{}), migEvents: make(chan string, 16)}
	// Known to the agent (and so to the watchdog and the self-fence) before
	// its CPUs run.
	a.mu.Lock()
	a.vms[name] = in
	a.mu.Unlock()
	r.Add(func() {
		a.mu.Lock()
		if a.vms[name] == in {
			delete(a.vms, name)
		}
		a.mu.Unlock()
	})
	go a.monitor(in)
	if err := a.mayRun(in); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.Execute(cctx, "cont", nil, nil)
	cancel()
	if err != nil {
		return err
	}
	r.Success()
	a.launches.started()
	a.log.Info("guest started", "vm", name, "pid", pid, "endpoint", rec.Endpoint, "machine", machine, "boot", boot)
	a.recordBoot(ctx, spec, machine, boot)
	a.putStatus(ctx, name, a.runningStatus(in))
	return nil
}

// stop ends a guest: gracefully (ACPI power button, then QMP quit, then
// SIGKILL) unless force. phase is the status to report afterwards ("" for none).
func (a *Agent) stop(ctx context.Context, in *instance, force bool, wait time.Duration, phase string) error {
	in.mu.Lock()
	in.expectExit = true
	in.mu.Unlock()
	name := in.name
	if phase != "" {
		a.putStatus(ctx, name, api.VMStatus{Phase: api.PhaseStopping, Node: a.cfg.Node, PID: in.rec.PID, StartSeq: in.rec.StartSeq})
	}
	if !force && wait > 0 {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := in.qmp.Execute(cctx, "system_powerdown", nil, nil)
		cancel()
		if err == nil {
			select {
			case <-in.gone:
			case <-time.After(wait):
				a.log.Warn("guest did not power off in time; quitting QEMU", "vm", name, "waited", wait)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if in.alive() {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		in.qmp.Execute(cctx, "quit", nil, nil)
		cancel()
		select {
		case <-in.gone:
		case <-time.After(5 * time.Second):
		}
	}
	kctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err := a.rt.Kill(kctx, in.rec.PID, in.rec.UUID)
	cancel()
	if err != nil {
		return err
	}
	select {
	case <-in.gone:
	case <-time.After(10 * time.Second):
	}
	a.forget(ctx, in)
	if phase != "" {
		a.putStatus(ctx, name, api.VMStatus{Phase: phase, Node: a.cfg.Node, StartSeq: in.rec.StartSeq})
	}
	a.log.Info("guest stopped", "vm", name, "force", force)
	return nil
}

// forget drops the local records of a guest that no longer runs.
func (a *Agent) forget(ctx context.Context, in *instance) {
	a.mu.Lock()
	if a.vms[in.name] == in {
		delete(a.vms, in.name)
	}
	a.mu.Unlock()
	in.qmp.Close()
	in.closeTunnel()
	os.Remove(a.recordPath(in.name))
	os.Remove(in.rec.QMP)
	os.Remove(StatusSocket(a.cfg.RunDir, in.name))
	os.Remove(in.rec.Console)
	if in.rec.Tap != "" {
		a.rt.DeleteTap(in.rec.Tap)
	}
	a.st.ReleaseOwner(ctx, in.name, a.cfg.Node)
}

// delete removes a VM whose deletion was requested: the guest, its disk and
// files, then the keys of the incarnation uuid.
func (a *Agent) delete(ctx context.Context, name, uuid string, in *instance) error {
	if in != nil {
		if err := a.stop(ctx, in, true, 0, ""); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(filepath.Join(a.cfg.StorageDir, name)); err != nil {
		return err
	}
	if err := os.RemoveAll(a.vmDir(name)); err != nil {
		return err
	}
	a.log.Info("vm deleted", "vm", name)
	a.forgetPhase(name)
	return a.st.DeleteVM(ctx, name, uuid)
}

// event records something operators should see; failures only log.
func (a *Agent) event(ctx context.Context, ev api.Event) {
	if err := a.st.PutEvent(ctx, ev); err != nil {
		a.log.Warn("recording event", "kind", ev.Kind, "err", err)
	}
}

// eventDurable records an event that must not be lost to the outage it
// reports (a self-fencing is recorded as etcd comes back, often over a
// connection that is still dying): it retries for up to a minute. The
// event keeps its time, so a retry after a lost answer writes the same key.
func (a *Agent) eventDurable(ctx context.Context, ev api.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	var err error
	for end := time.Now().Add(time.Minute); ; {
		if err = a.st.PutEvent(ctx, ev); err == nil || ctx.Err() != nil || time.Now().After(end) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err != nil {
		a.log.Warn("recording event", "kind", ev.Kind, "err", err)
	}
}

func (a *Agent) putStatus(ctx context.Context, name string, st api.VMStatus) {
	if st.Since.IsZero() {
		st.Since = time.Now().UTC()
	}
	// Only while the VM is placed here: what this host says about a guest
	// that was moved away (an HA restart elsewhere) is stale.
	ok, err := a.st.PutStatusPlaced(ctx, name, a.cfg.Node, st)
	if err != nil {
		a.log.Warn("writing status", "vm", name, "err", err)
	} else if !ok {
		a.log.Debug("status not written: the VM is not placed here", "vm", name, "phase", st.Phase)
		a.forgetPhase(name)
	} else {
		a.mu.Lock()
		a.phases[name] = st.Phase
		a.mu.Unlock()
	}
}

// forgetPhase drops a guest that is no longer this host's from its
// figures.
func (a *Agent) forgetPhase(name string) {
	a.mu.Lock()
	delete(a.phases, name)
	a.mu.Unlock()
}

func (a *Agent) currentStatus(ctx context.Context, name string) (api.VMStatus, error) {
	vm, err := a.st.GetVM(ctx, name)
	if err != nil {
		return api.VMStatus{}, err
	}
	return vm.Status, nil
}

// logTail is the end of QEMU's log and the guest console, for failure reports.
func (a *Agent) logTail(name string) string {
	var b strings.Builder
	if t := qemu.Tail(filepath.Join(a.vmDir(name), "qemu.log"), 6); t != "" {
		b.WriteString("qemu.log:\n" + t + "\n")
	}
	if t := qemu.Tail(filepath.Join(a.vmDir(name), "console.log"), 10); t != "" {
		b.WriteString("console:\n" + t + "\n")
	}
	return b.String()
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
