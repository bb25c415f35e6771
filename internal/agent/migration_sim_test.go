package agent_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/simqemu"
	"github.com/ferryvm/ferry/internal/wait"
	"github.com/google/uuid"
)

// migrate records an admitted migration of name to host to (the leader's
// admission is not under test here).
func (e *env) migrate(name, to string, o api.MigrationOptions) *api.Migration {
	e.t.Helper()
	ctx := context.Background()
	vm, err := e.st.GetVM(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	nodes, err := e.st.ListNodes(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var src, dst *api.Node
	for i := range nodes {
		switch nodes[i].Name {
		case vm.Node:
			src = &nodes[i]
		case to:
			dst = &nodes[i]
		}
	}
	if o.Strategy == "" {
		o.Strategy = api.StrategyPrecopy
	}
	if o.MaxDowntimeMS == 0 {
		o.MaxDowntimeMS = 300
	}
	if o.Transport == "" {
		o.Transport, o.Plaintext = api.TransportPlain, true
	}
	plan, err := migrate.PlanFor(o, vm, src, dst)
	if err != nil {
		e.t.Fatal(err)
	}
	m := &api.Migration{ID: uuid.NewString(), VM: name, Source: vm.Node, Target: to, Phase: api.MigPending,
		Options: o, Plan: plan, Started: time.Now().UTC(), Reason: "test"}
	if err := e.st.StartMigration(ctx, m); err != nil {
		e.t.Fatal(err)
	}
	return m
}

// waitMigration waits until the migration ended and returns its record.
func (e *env) waitMigration(name string, timeout time.Duration) *api.Migration {
	e.t.Helper()
	var m *api.Migration
	wait.For(e.t, timeout, "the migration of "+name+" to end", func() (bool, error) {
		var err error
		m, _, err = e.st.GetMigration(context.Background(), name)
		if err != nil || m == nil {
			return false, err
		}
		return api.MigrationTerminal(m.Phase), fmt.Errorf("phase %s (%s)", m.Phase, m.Progress.QEMUStatus)
	})
	return m
}

// procOn is the VM's QEMU on host (nil if none runs there).
func (e *env) procOn(vm *api.VM, host string) *simqemu.Proc {
	for _, p := range e.procs(vm) {
		if p.Host == host {
			return p
		}
	}
	return nil
}

// migStatus waits until the VM's QEMU on host reports a migration status.
func (e *env) migStatus(vm *api.VM, host, status string) *simqemu.Proc {
	e.t.Helper()
	var p *simqemu.Proc
	wait.For(e.t, 10*time.Second, fmt.Sprintf("the QEMU on %s to be %s", host, status), func() (bool, error) {
		p = e.procOn(vm, host)
		return p != nil && p.MigrationStatus() == status, nil
	})
	return p
}

// TestMigrationBranches drives both migration roles through each phase's
// outcomes — the ones the e2e fault suite shows against real QEMU — and
// checks that each ends with the record's phase right and exactly one
// running copy of the guest where the phase says (none if its QEMU died).
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestMigrationBranches(t *testing.T) {
	busy := func(e *env, vm *api.VM) {
		e.c.World.SetBandwidth(256 << 20) // a whole pass takes 1 s: longer than the downtime limit
		e.procOn(vm, "h1").SetDirty(512 << 20)
	}
	cases := []struct {
		name  string
		opts  api.MigrationOptions
		setup func(e *env, vm *api.VM)
		// during acts once the migration was recorded.
		during func(e *env, vm *api.VM, m *api.Migration)
		phase  string
		on     string // where the guest runs after ("": nowhere)
		// check looks at the record of the ended migration.
		check func(t *testing.T, m *api.Migration)
	}{
		{name: "pre-copy completes", phase: api.MigCompleted, on: "h2"},
		{name: "busy guest completes in post-copy", opts: api.MigrationOptions{Strategy: api.StrategyPostcopy},
			setup: busy, phase: api.MigCompleted, on: "h2", check: inTimeline("post-copy")},
		{name: "busy guest escalates to a higher limit and the throttle converges it",
			opts:  api.MigrationOptions{Escalations: migrate.AllEscalations, AllowedDowntimeMS: 500},
			setup: busy, phase: api.MigCompleted, on: "h2",
			// Twice the link's rate, a whole memory (1 s) left after every
			// round: 500 ms allowed cannot help; a 60 % throttle can.
			check: escalated(api.EscalateDowntime, api.EscalateThrottle)},
		{name: "without the throttle the ladder ends in post-copy",
			opts:  api.MigrationOptions{Escalations: []string{api.EscalateDowntime, api.EscalatePostcopy}, AllowedDowntimeMS: 500},
			setup: busy, phase: api.MigCompleted, on: "h2",
			check: escalated(api.EscalateDowntime, api.EscalatePostcopy)},
		{name: "guest a little faster than the link converges under the throttle",
			opts: api.MigrationOptions{Escalations: []string{api.EscalateThrottle}},
			setup: func(e *env, vm *api.VM) {
				e.c.World.SetBandwidth(256 << 20)
				e.procOn(vm, "h1").SetDirty(300 << 20)
			},
			phase: api.MigCompleted, on: "h2",
			check: func(t *testing.T, m *api.Migration) {
				if len(m.Escalations) != 1 || m.Escalations[0].Kind != api.EscalateThrottle || m.Progress.CPUThrottle == 0 {
					t.Fatalf("escalations %+v (throttle %d %%), want the throttle alone", m.Escalations, m.Progress.CPUThrottle)
				}
			}},
		{name: "target QEMU fails to start",
			setup: func(e *env, vm *api.VM) { e.c.World.FailLaunch(vm.Spec.Name, "could not load PC BIOS") },
			phase: api.MigFailed, on: "h1"},
		{name: "target QEMU dies while copying", setup: busy,
			during: func(e *env, vm *api.VM, m *api.Migration) { e.migStatus(vm, "h2", "active").Crash() },
			phase:  api.MigFailed, on: "h1"},
		{name: "source QEMU dies while copying", setup: busy,
			during: func(e *env, vm *api.VM, m *api.Migration) { e.migStatus(vm, "h1", "active").Crash() },
			phase:  api.MigFailed, on: ""},
		{name: "cancel while copying", setup: busy,
			during: func(e *env, vm *api.VM, m *api.Migration) {
				e.migStatus(vm, "h1", "active")
				e.cancel(vm.Spec.Name)
			},
			phase: api.MigCancelled, on: "h1"},
		{name: "stream stalls", setup: busy,
			during: func(e *env, vm *api.VM, m *api.Migration) {
				e.migStatus(vm, "h1", "active")
				e.c.World.Stall(vm.Spec.UUID, true)
			},
			phase: api.MigFailed, on: "h1"},
		{name: "cancel at pre-switchover",
			setup: func(e *env, vm *api.VM) { e.c.Host("h1").Arm(failpoint.PreSwitchover, 2*time.Second) },
			during: func(e *env, vm *api.VM, m *api.Migration) {
				e.migStatus(vm, "h1", "pre-switchover")
				e.cancel(vm.Spec.Name)
			},
			phase: api.MigCancelled, on: "h1"},
		{name: "post-copy stream stalls and recovers", opts: api.MigrationOptions{Strategy: api.StrategyPostcopy},
			setup: func(e *env, vm *api.VM) {
				busy(e, vm)
				e.c.World.SetBandwidth(32 << 20) // 8 s of post-copy
			},
			during: func(e *env, vm *api.VM, m *api.Migration) {
				e.migStatus(vm, "h1", "postcopy-active")
				e.c.World.Stall(vm.Spec.UUID, true)
				// The source notices no progress and breaks the stream.
				wait.For(e.t, 10*time.Second, "the stalled post-copy to pause", wait.True(func() bool {
					p := e.procOn(vm, "h1")
					return p != nil && p.MigrationStatus() == "postcopy-paused"
				}))
				e.c.World.Stall(vm.Spec.UUID, false)
				e.c.World.SetBandwidth(1 << 30)
			},
			phase: api.MigCompleted, on: "h2",
			check: func(t *testing.T, m *api.Migration) {
				if m.Recoveries < 1 {
					t.Fatalf("completed with %d post-copy recoveries, want at least 1", m.Recoveries)
				}
			}},
		{name: "target agent restarts while copying", setup: busy,
			during: func(e *env, vm *api.VM, m *api.Migration) {
				e.migStatus(vm, "h2", "active")
				e.restart("h2")
				e.procOn(vm, "h1").SetDirty(0)
			},
			phase: api.MigCompleted, on: "h2"},
		{name: "source agent restarts while copying", setup: busy,
			during: func(e *env, vm *api.VM, m *api.Migration) {
				e.migStatus(vm, "h1", "active")
				e.restart("h1")
				e.procOn(vm, "h1").SetDirty(0)
			},
			phase: "", on: ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{hosts: 2, stall: time.Second})
			vm := e.create("mig", "h1", false)
			if tc.setup != nil {
				tc.setup(e, vm)
			}
			m := e.migrate("mig", "h2", tc.opts)
			if tc.during != nil {
				tc.during(e, vm, m)
			}
			end := e.waitMigration("mig", 30*time.Second)
			if end.Phase == api.MigCompleted {
				// The target completes the record; the source adds its
				// part of the timeline (and its figures) after.
				wait.For(t, 10*time.Second, "the source's part of the record", func() (bool, error) {
					m, _, err := e.st.GetMigration(context.Background(), "mig")
					if err == nil && m != nil {
						end = m
					}
					return err == nil && m != nil && slices.ContainsFunc(m.Timeline, func(s api.MigrationEvent) bool { return s.Step == "source completed" }), err
				})
			}
			if tc.phase != "" && end.Phase != tc.phase {
				t.Fatalf("migration ended %s (%s), want %s", end.Phase, end.Error, tc.phase)
			}
			if tc.check != nil {
				tc.check(t, end)
			}
			if tc.phase == "" {
				// Either outcome is right; the copies must agree with it.
				tc.on = map[string]string{api.MigCompleted: "h2", api.MigFailed: "h1", api.MigCancelled: "h1"}[end.Phase]
				t.Logf("ended %s: %s", end.Phase, end.Error)
			}
			if tc.on == "" {
				wait.For(t, 10*time.Second, "no copy of the guest to run", wait.True(func() bool { return len(e.procs(vm)) == 0 }))
				return
			}
			p := e.oneCopy(vm, tc.on)
			wait.For(t, 5*time.Second, "the guest to run on "+tc.on, wait.True(p.Running))
			got := e.waitPhase("mig", api.PhaseRunning)
			if got.Node != tc.on {
				t.Fatalf("the VM is placed on %s, its guest runs on %s", got.Node, tc.on)
			}
		})
	}
}

// escalated checks that a migration took exactly these escalations, in
// this order, each in its timeline.
func escalated(want ...string) func(t *testing.T, m *api.Migration) {
	return func(t *testing.T, m *api.Migration) {
		var kinds []string
		for _, e := range m.Escalations {
			kinds = append(kinds, e.Kind)
			inTimeline("escalated: "+e.Kind)(t, m)
		}
		if !slices.Equal(kinds, want) {
			t.Fatalf("escalations %v, want %v: %+v", kinds, want, m.Escalations)
		}
	}
}

// inTimeline checks that a step of the migration's timeline mentions what.
func inTimeline(what string) func(t *testing.T, m *api.Migration) {
	return func(t *testing.T, m *api.Migration) {
		for _, s := range m.Timeline {
			if strings.Contains(s.Step, what) {
				return
			}
		}
		t.Fatalf("no step of the timeline mentions %q: %+v", what, m.Timeline)
	}
}

// cancel asks for the migration of name to be cancelled, as the API does.
func (e *env) cancel(name string) {
	e.t.Helper()
	_, _, err := e.st.UpdateMigration(context.Background(), name, func(m *api.Migration) error {
		if api.MigrationTerminal(m.Phase) || m.Phase == api.MigSwitchover {
			return fmt.Errorf("too late to cancel: %s", m.Phase)
		}
		m.Cancel = true
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// restart stops a host's agent and starts it again; its guests run on.
func (e *env) restart(host string) {
	e.t.Helper()
	h := e.c.Host(host)
	if err := h.Stop(); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.c.Start(context.Background(), host); err != nil {
		e.t.Fatal(err)
	}
}
