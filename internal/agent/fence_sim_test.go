package agent_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/simqemu"
	"github.com/ferryvm/ferry/internal/store/storetest"
	"github.com/ferryvm/ferry/internal/wait"
)

// copies watches a guest until the test ends and remembers the most copies
// of it that ever ran at once (CPUs running, on any host).
func (e *env) copies(vm *api.VM) func() int {
	var mu sync.Mutex
	most := 0
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			n := 0
			for _, p := range e.procs(vm) {
				if p.Running() {
					n++
				}
			}
			mu.Lock()
			most = max(most, n)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { close(done); <-stopped }) }
	e.t.Cleanup(stop)
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return most
	}
}

// events is the cluster's events of a kind.
func (e *env) events(kind string) []api.Event {
	e.t.Helper()
	evs, err := e.st.ListEvents(context.Background(), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []api.Event
	for _, ev := range evs {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// slowWatchdog leaves a second between the agent's self-fence and the
// watchdog's deadline, so a test can tell which of them killed a guest.
func slowWatchdog() ha.Timing {
	t := ha.DefaultTiming()
	t.LeaseTTL, t.WatchdogAfter = 3*time.Second, 2400*time.Millisecond
	return t
}

// A host cut off etcd kills its HA guests itself, before the watchdog
// would and before its lease can expire; other guests keep running. Once
// it reaches etcd again it says so with a self-fenced event and, as no
// other host took the guest over, starts it again: one copy throughout.
func TestSelfFenceOnLostLease(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 1, partitions: true, ha: slowWatchdog()})
	haVM, plain := e.create("db", "h1", true), e.create("web", "h1", false)
	most := e.copies(haVM)
	h1 := e.c.Host("h1")
	cut := time.Now()
	h1.CutEtcd(true)
	wait.For(t, 5*time.Second, "the HA guest to be fenced", wait.True(func() bool { return len(e.procs(haVM)) == 0 }))
	took := time.Since(cut)
	if h1.Watchdog.Fired() != 0 {
		t.Fatal("the watchdog fired before the agent fenced the guest")
	}
	if took >= slowWatchdog().WatchdogAfter {
		t.Fatalf("the guest died %s after the cut: the watchdog's deadline, not the self-fence", took)
	}
	if p := e.oneCopy(plain, "h1"); !p.Running() {
		t.Fatal("the guest without HA was stopped by the fence")
	}
	h1.CutEtcd(false)
	wait.For(t, 10*time.Second, "a self-fenced event", wait.True(func() bool { return len(e.events("self-fenced")) == 1 }))
	if ev := e.events("self-fenced")[0]; !strings.Contains(ev.Message, "db") || strings.Contains(ev.Message, "web") {
		t.Fatalf("the event names the wrong guests: %s", ev.Message)
	}
	e.waitPhase("db", api.PhaseRunning)
	p := e.oneCopy(haVM, "h1")
	wait.For(t, 10*time.Second, "the HA guest to run again", wait.True(p.Running))
	if n := most(); n != 1 {
		t.Fatalf("%d copies of the HA guest ran at once", n)
	}
}

// An agent that stops (crashes, hangs) stops feeding its watchdog, which
// kills the HA guests at its deadline; the rest run on. The next agent
// starts the HA guest again.
func TestWatchdogFiresWhenAgentStops(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 1})
	haVM, plain := e.create("db", "h1", true), e.create("web", "h1", false)
	h1 := e.c.Host("h1")
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 5*time.Second, "the watchdog to kill the HA guest", wait.True(func() bool { return len(e.procs(haVM)) == 0 }))
	if h1.Watchdog.Fired() == 0 {
		t.Fatal("the HA guest died, but not by the watchdog")
	}
	if p := e.oneCopy(plain, "h1"); !p.Running() {
		t.Fatal("the watchdog stopped the guest without HA")
	}
	if _, err := e.c.Start(context.Background(), "h1"); err != nil {
		t.Fatal(err)
	}
	p := e.oneCopy(haVM, "h1")
	wait.For(t, 10*time.Second, "the HA guest to run again", wait.True(p.Running))
}

// Without a watchdog nothing would kill an HA guest whose agent hung, so
// the agent refuses to run one; guests without HA run.
func TestHAGuestNeedsWatchdog(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 1, noWatchdog: true})
	plain := e.create("web", "h1", false)
	e.oneCopy(plain, "h1")
	ctx := context.Background()
	storetest.Placed(t, e.st, api.VMSpec{Name: "db", UUID: "00000000-0000-4000-8000-00000000d0b0", MemoryMiB: 256, CPUs: 1, DiskMiB: 64,
		Image: api.ImageTiny, Power: api.PowerRunning, StartSeq: 1, HA: true}, "h1")
	wait.For(t, 10*time.Second, "the agent to refuse the HA guest", func() (bool, error) {
		vm, err := e.st.GetVM(ctx, "db")
		if err != nil {
			return false, err
		}
		return strings.Contains(vm.Status.Message, "without a watchdog"), nil
	})
	vm, _ := e.st.GetVM(ctx, "db")
	for _, p := range e.procs(vm) {
		if p.Running() {
			t.Fatal("the HA guest's CPUs run on a host without a watchdog")
		}
	}
}

// A host cut off etcd: its HA guest is fenced there and restarted on
// another host exactly once, never two copies at a time; its guest
// without HA is left alone. When the host comes back it does not start
// the HA guest a second time.
func TestHARestartElsewhereOnce(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 3, controlPlane: true, partitions: true})
	haVM, plain := e.create("db", "h1", true), e.create("web", "h1", false)
	most := e.copies(haVM)
	h1 := e.c.Host("h1")
	h1.CutEtcd(true)
	var p *simqemu.Proc
	wait.For(t, 15*time.Second, "the HA guest to run on another host", func() (bool, error) {
		ps := e.procs(haVM)
		if len(ps) == 1 && ps[0].Host != "h1" && ps[0].Running() {
			p = ps[0]
			return true, nil
		}
		return false, nil
	})
	if pl := e.oneCopy(plain, "h1"); !pl.Running() {
		t.Fatal("the guest without HA stopped")
	}
	h1.CutEtcd(false)
	wait.For(t, 10*time.Second, "h1 to be back", wait.True(func() bool { return len(e.events("self-fenced")) == 1 }))
	got := e.waitPhase("db", api.PhaseRunning)
	if got.Node != p.Host {
		t.Fatalf("db is placed on %s, runs on %s", got.Node, p.Host)
	}
	// h1's agent has looked at the guest it lost once it let go of it:
	// the guest has left h1's range.
	wait.For(t, 10*time.Second, "h1's agent to let go of db", func() (bool, error) {
		vms, _, err := e.st.HostVMs(context.Background(), "h1")
		return err == nil && !slices.Contains(vms, "db"), err
	})
	if ps := e.procs(haVM); len(ps) != 1 || ps[0] != p {
		t.Fatalf("after h1 came back, %d copies of the HA guest", len(ps))
	}
	if n := len(e.events("ha-restart")); n != 1 {
		t.Fatalf("%d HA restarts issued, want 1", n)
	}
	if n := most(); n != 1 {
		t.Fatalf("%d copies of the HA guest ran at once", n)
	}
}

// A host dies with its guests: the HA guest is restarted elsewhere once,
// the guest without HA is not.
func TestHostDeathRestartsHAGuests(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 3, controlPlane: true})
	haVM, plain := e.create("db", "h1", true), e.create("web", "h1", false)
	e.c.Host("h1").Kill()
	wait.For(t, 15*time.Second, "the HA guest to run on another host", wait.True(func() bool {
		ps := e.procs(haVM)
		return len(ps) == 1 && ps[0].Host != "h1" && ps[0].Running()
	}))
	// The round that restarted db passed over web: by the time db's
	// restart is recorded, web's fate was decided.
	wait.For(t, 5*time.Second, "db's restart to be recorded", wait.True(func() bool { return len(e.events("ha-restart")) >= 1 }))
	if n := len(e.procs(plain)); n != 0 {
		t.Fatalf("the guest without HA was restarted (%d copies)", n)
	}
	if n := len(e.events("ha-restart")); n != 1 {
		t.Fatalf("%d HA restarts issued, want 1", n)
	}
}
