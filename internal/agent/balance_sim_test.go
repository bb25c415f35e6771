package agent_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/wait"
)

// balanceMoves returns the balance-move events so far.
func (e *env) balanceMoves() []api.Event {
	evs, err := e.st.ListEvents(context.Background(), 500)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []api.Event
	for _, ev := range evs {
		if ev.Kind == "balance-move" {
			out = append(out, ev)
		}
	}
	return out
}

// hostCPU is what host's guests use now as the simulation sets it.
func (e *env) hostCPU(host string, cpu map[string]float64) float64 {
	var sum float64
	for name, c := range cpu {
		vm, err := e.st.GetVM(context.Background(), name)
		if err == nil && vm.Node == host {
			sum += c
		}
	}
	return sum
}

// TestReactiveBalancerRelievesAnOverloadOnce: a host whose guests use
// more than 80 % of its CPU for longer than the sustain time sheds one
// guest live to the least loaded host, with an event saying why, and the
// balancer then leaves it alone (no move back: the hosts are under the
// threshold and the moved guest is in its cooldown).
func TestReactiveBalancerRelievesAnOverloadOnce(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 3, controlPlane: true, migrationTLS: true, loadEvery: 100 * time.Millisecond,
		loadPeriod: 5 * time.Second, loadHorizon: time.Second, capacity: 1,
		balance: balance.Config{Mode: api.BalanceReactive, Sustain: time.Second}})
	cpu := map[string]float64{"busy-a": 0.5, "busy-b": 0.45, "calm": 0.1}
	for name, c := range cpu {
		host := "h1"
		if name == "calm" {
			host = "h2"
		}
		vm := e.create(name, host, false)
		e.oneCopy(vm, host).SetCPU(c)
	}
	wait.For(t, 30*time.Second, "a balance move off h1", func() (bool, error) {
		return len(e.balanceMoves()) > 0, fmt.Errorf("h1 uses %.2f", e.hostCPU("h1", cpu))
	})
	mv := e.balanceMoves()[0]
	if mv.Node != "h1" {
		t.Fatalf("moved off %s: %s", mv.Node, mv.Message)
	}
	t.Logf("%s: %s", mv.VM, mv.Message)
	vm, _ := e.st.GetVM(context.Background(), mv.VM)
	wait.For(t, 30*time.Second, mv.VM+" to leave h1", func() (bool, error) {
		ps := e.procs(vm)
		return len(ps) == 1 && ps[0].Host == "h3", fmt.Errorf("%d copies on %v", len(ps), hostsOf(ps))
	})
	// Then quiet: three more seconds without a move.
	time.Sleep(3 * time.Second)
	if n := len(e.balanceMoves()); n != 1 {
		t.Fatalf("%d balance moves, want 1: %+v", n, e.balanceMoves())
	}
	plan, err := e.st.BalancePlan(context.Background())
	if err != nil || len(plan.Moves) != 0 {
		t.Fatalf("plan after the move: %+v %v", plan, err)
	}
	used := 0.0
	for _, h := range plan.Hosts {
		used += h.CPU
	}
	if len(plan.Hosts) != 3 || used < 0.5 {
		t.Fatalf("the plan's hosts: %+v, want three using about 1.05 CPUs between them", plan.Hosts)
	}
}

// TestPredictiveBalancerMovesBeforeTheOverload: a host whose guests' use
// climbs steadily is relieved while it is still under the threshold,
// because its forecast passes it within the horizon (4 s; the host reports
// its load with its heartbeat, every 2 s).
func TestPredictiveBalancerMovesBeforeTheOverload(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 3, controlPlane: true, migrationTLS: true, loadEvery: 100 * time.Millisecond,
		loadPeriod: 5 * time.Second, loadHorizon: 4 * time.Second, capacity: 1,
		balance: balance.Config{Mode: api.BalancePredictive, Margin: 100 * time.Millisecond}})
	var procs []interface{ SetCPU(float64) }
	for _, name := range []string{"grow-a", "grow-b"} {
		vm := e.create(name, "h1", false)
		procs = append(procs, e.oneCopy(vm, "h1"))
	}
	// Each guest climbs 0.05 CPUs a second from 0.1: h1 passes 0.8 after
	// 6 s. The balancer must move one before.
	start := time.Now()
	level := func() float64 { return 0.1 + 0.05*time.Since(start).Seconds() }
	var atMove float64
	wait.For(t, 30*time.Second, "a balance move before h1 is overloaded", func() (bool, error) {
		l := level()
		for _, p := range procs {
			p.SetCPU(l)
		}
		if mv := e.balanceMoves(); len(mv) > 0 {
			atMove = 2 * l
			return true, nil
		}
		plan, _ := e.st.BalancePlan(context.Background())
		return false, fmt.Errorf("h1 at %.2f; the balancer's plan: %+v", 2*l, plan)
	})
	if atMove >= 0.8 {
		t.Fatalf("moved at %.2f CPUs, after the overload (0.8)", atMove)
	}
	t.Logf("moved with h1 at %.2f CPUs: %s", atMove, e.balanceMoves()[0].Message)
}
