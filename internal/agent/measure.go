package agent

import (
	"context"
	"math"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/qemu"
)

// bootSettle is how long a guest runs before its memory is first measured.
const bootSettle = 15 * time.Second

// workingSetWindow is the longer of the two dirty-rate measurements.
const workingSetWindow = 4 * time.Second

// DefaultMeasureEvery is how often the agent measures each guest's memory
// use for migration predictions.
const DefaultMeasureEvery = 30 * time.Second

// measureLoop measures how each running guest uses its memory — the rate
// at which it writes pages (QEMU's page-sampling, one second) and the
// share of zero pages — and reports it in the guest's status when it
// changed noticeably (or with the probe's refresh). Guests that migrate
// are left alone: their migration measures them.
func (a *Agent) measureLoop(ctx context.Context) {
	every := a.cfg.MeasureEvery
	if every == 0 {
		every = DefaultMeasureEvery
	}
	if every < 0 {
		return
	}
	// A guest that has not been measured yet (it just started or arrived)
	// is within a couple of seconds.
	t := time.NewTicker(min(every, 2*time.Second))
	defer t.Stop()
	for {
		for _, in := range a.instances() {
			if ctx.Err() != nil {
				return
			}
			in.mu.Lock()
			due := in.memory == nil || time.Since(in.memory.MeasuredAt) >= every
			// Not in a guest's first seconds: its boot writes memory as it
			// will not again.
			due = due && time.Since(in.rec.Started) >= bootSettle
			in.mu.Unlock()
			if due {
				a.measureGuest(ctx, in)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// instances are the guests this agent runs now.
func (a *Agent) instances() []*instance {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*instance, 0, len(a.vms))
	for _, in := range a.vms {
		out = append(out, in)
	}
	return out
}

// measureGuest measures one guest and reports a noticeable change.
func (a *Agent) measureGuest(ctx context.Context, in *instance) {
	// preparedFor stays set after a migration ended (it marks the QEMU as
	// configured): the record says whether one is in flight.
	in.mu.Lock()
	busy := in.incoming || in.srcTunnel != nil || in.tgtTunnel != nil
	in.mu.Unlock()
	if busy || !in.alive() {
		return
	}
	if m, _, err := a.st.GetMigration(ctx, in.name); err != nil || (m != nil && !api.MigrationTerminal(m.Phase)) {
		return
	}
	m, err := a.measureMemory(ctx, in)
	if err != nil {
		a.log.Debug("measuring a guest's memory", "vm", in.name, "err", err)
		// Not again at once: a stand-in with the time of the attempt.
		in.mu.Lock()
		if in.memory == nil {
			in.memory = &api.MemoryLoad{}
		}
		in.memory.MeasuredAt = time.Now().UTC()
		in.mu.Unlock()
		return
	}
	in.mu.Lock()
	old := in.memory
	in.memory = m
	in.mu.Unlock()
	if old != nil && !changedMuch(old.DirtyRate, m.DirtyRate, 1<<20) && !changedMuch(old.ZeroShare, m.ZeroShare, 0.05) {
		return
	}
	if vm, err := a.st.GetVM(ctx, in.name); err == nil && vm.Status.Phase == api.PhaseRunning && vm.Status.PID == in.rec.PID && in.alive() {
		a.putStatus(ctx, in.name, a.runningStatus(in))
	}
}

// measureMemory asks QEMU for the guest's dirty rate and reads its zero
// pages.
func (a *Agent) measureMemory(ctx context.Context, in *instance) (*api.MemoryLoad, error) {
	mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	dr, err := in.qmp.MeasureDirtyRate(mctx, time.Second)
	if err != nil {
		return nil, err
	}
	m := &api.MemoryLoad{DirtyRate: dr.BytesPerSecond()}
	// The pages sampled twice, two seconds apart, while QEMU counts.
	type sampled struct {
		s   qemu.MemorySample
		err error
	}
	sc := make(chan sampled, 1)
	go func() {
		s, err := a.rt.SampleMemory(in.rec.PID, in.memoryMiB, 2*time.Second)
		sc <- sampled{s, err}
	}()
	if m.DirtyRate > 0 {
		// Over four seconds a guest that keeps rewriting a small set of
		// pages dirties less than four times a second's worth: that set
		// bounds what a migration round can leave behind.
		lctx, cancel := context.WithTimeout(ctx, 8*time.Second)
		long, err := in.qmp.MeasureDirtyRate(lctx, workingSetWindow)
		cancel()
		if err != nil {
			return nil, err
		}
		seen := long.BytesPerSecond() * workingSetWindow.Seconds()
		if seen < 0.75*m.DirtyRate*workingSetWindow.Seconds() {
			m.WorkingSet = int64(seen)
		}
	}
	got := <-sc
	if got.err != nil {
		return nil, got.err
	}
	s := got.s
	m.ZeroShare, m.CompressRatio, m.DirtyCompressRatio, m.MeasuredAt = s.ZeroShare, s.CompressRatio, s.DirtyCompressRatio, time.Now().UTC()
	return m, nil
}

// changedMuch: by more than a fifth and more than floor.
func changedMuch(old, cur, floor float64) bool {
	d := math.Abs(cur - old)
	return d > floor && d > 0.2*math.Max(math.Abs(old), math.Abs(cur))
}
