package agent_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/wait"
)

// TestStarvedGuestIsHealed: with the balancer off, a guest that waits for
// its CPUs most of the time it wants them (a neighbour Ferry does not run,
// here simulated) is moved live, once, to a host where it will do better:
// not to the contended one, whose own guest waits a little (too little to
// be moved itself), but to the free one. The move is a heal-move event
// with what was measured, and its wait stays behind.
func TestStarvedGuestIsHealed(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 3, controlPlane: true, migrationTLS: true, loadEvery: 100 * time.Millisecond,
		loadPeriod: 5 * time.Second, loadHorizon: time.Second, capacity: 1,
		balance: balance.Config{Mode: api.BalanceOff, Heal: true, Sustain: time.Second}})
	victim := e.create("victim", "h1", false)
	p := e.oneCopy(victim, "h1")
	bootID, _ := p.Boot()
	p.SetCPU(0.2)
	p.SetWait(0.3) // wants 0.5, waits 60 % of it
	calm := e.create("calm", "h2", false)
	q := e.oneCopy(calm, "h2")
	q.SetCPU(0.3)
	q.SetWait(0.28) // waits 48 % of what it wants: served well enough, its host contended
	heals := func() []api.Event { return e.events("heal-move") }
	wait.For(t, 30*time.Second, "a heal-move of the victim", func() (bool, error) {
		return len(heals()) > 0, fmt.Errorf("no heal-move yet")
	})
	mv := heals()[0]
	t.Logf("%s", mv.Message)
	if mv.VM != "victim" || mv.Node != "h1" || !strings.Contains(mv.Message, "waited for its CPUs 60 %") || !strings.Contains(mv.Message, "to h3") {
		t.Fatalf("heal-move: %+v", mv)
	}
	wait.For(t, 30*time.Second, "the victim to run on h3", func() (bool, error) {
		ps := e.procs(victim)
		return len(ps) == 1 && ps[0].Host == "h3", fmt.Errorf("%d copies on %v", len(ps), hostsOf(ps))
	})
	if id, _ := e.procs(victim)[0].Boot(); id != bootID {
		t.Fatalf("the victim was restarted, not moved live")
	}
	time.Sleep(3 * time.Second)
	if n := len(heals()); n != 1 {
		t.Fatalf("%d heal-moves, want 1: %+v", n, heals())
	}
	if n := len(e.balanceMoves()); n != 0 {
		t.Fatalf("the balancer, off, moved %d guests", n)
	}
}
