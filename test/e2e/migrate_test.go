package e2e

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/testbed"
)

// Long on purpose: a scenario or table read top to bottom; split, its story would scatter.
func TestMigrationKeepsConnection(t *testing.T) {
	b, cl := newBed(t, 3)
	if _, err := cl.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "mig"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "mig", 90*time.Second, "running and healthy", healthyRunning)
	home := vm.Node
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")

	// A client streams from the guest through one TCP connection.
	w, err := testbed.WatchStream(context.Background(), b.HTTPClient(b.ClientNS, 0), ip, 10*time.Millisecond)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	// A baseline of lines before moving.
	for deadline := time.Now().Add(30 * time.Second); w.Lines() < 50; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the stream gave only %d lines in 30 s", w.Lines())
		}
	}

	var other string
	for _, h := range b.Hosts {
		if h.Name != home {
			other = h.Name
			break
		}
	}
	// The pause the guest really had: from stopping on the source to
	// running on the target, by the migration's timeline. (QEMU's reported
	// downtime is the source's view; it leaves out the target loading the
	// last of the stream and Ferry's takeover.)
	var maxPause time.Duration
	phases := followPhases(t, cl, "mig")
	for _, to := range []string{other, home} {
		m, err := cl.MigrateVM(ctxT(t, 10*time.Second), "mig", api.MigrateRequest{To: to})
		if err != nil {
			t.Fatal(err)
		}
		m, err = cl.WaitMigration(ctxT(t, 2*time.Minute), "mig", m.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.Phase != api.MigCompleted {
			t.Fatalf("migration to %s: %s: %s", to, m.Phase, m.Error)
		}
		if m.DowntimeMS > m.Options.MaxDowntimeMS*2 {
			t.Errorf("downtime %dms, limit %dms", m.DowntimeMS, m.Options.MaxDowntimeMS)
		}
		var paused, resumed time.Time
		for _, e := range m.Timeline {
			switch {
			case strings.HasPrefix(e.Step, "guest paused on source"):
				paused = e.At
			case strings.HasPrefix(e.Step, "guest resumed on target"):
				resumed = e.At
			}
		}
		if paused.IsZero() || resumed.IsZero() {
			t.Fatalf("the timeline lacks the guest's pause: %+v", m.Timeline)
		}
		maxPause = max(maxPause, resumed.Sub(paused))
		vm = waitVM(t, cl, "mig", 30*time.Second, "running on "+to, func(vm *api.VM) bool {
			return vm.Node == to && vm.Status.Phase == api.PhaseRunning && vm.Status.Node == to
		})
		// Exactly one QEMU of the guest, on the new host.
		waitOneQEMU(t, b, vm.Spec.UUID, to)
		t.Logf("to %s: total %dms, downtime %dms", to, m.TotalTimeMS, m.DowntimeMS)
		for _, e := range m.Timeline {
			t.Logf("  %s %-4s %s", e.At.Local().Format("15:04:05.000"), e.Host, e.Step)
		}
		time.Sleep(300 * time.Millisecond)
	}
	// The event stream, followed through both moves, showed each phase of
	// each, in order.
	one := []string{"migration-queued", "migration-pending", "migration-target-ready", "migration-copying", "migration-switchover", "migration-completed"}
	if got := phases.wait(2 * len(one)); !slices.Equal(got, append(slices.Clone(one), one...)) {
		t.Errorf("the event stream showed the phases %v, want each move's %v", got, one)
	}
	r := w.Stop()
	// The bound: the guest's pause + 200 ms, the gap at the end of the
	// stream included (a guest that died after the move fails here). Under
	// TCG a guest that resumed needs up to ~220 ms before it answers (plain
	// QMP, no Ferry: median 68 ms, p90 151 ms, max 216 ms over 30 moves;
	// docs/BENCHMARKS.md), so the test allows tcgWarmup more there and
	// logs whether the strict bound held.
	strict := maxPause + 200*time.Millisecond
	limit := strict
	if b.Accel == "tcg" {
		limit += tcgWarmup
	}
	t.Logf("stream: %d lines, longest gap %v from %s to %s (pause %v + 200ms: strict bound met %v)", r.Lines, r.LongestGap,
		r.GapFrom.Format("15:04:05.000"), r.GapTo.Format("15:04:05.000"), maxPause, r.LongestGap <= strict)
	if !r.Intact {
		t.Fatalf("the connection did not hold: %s", r.Problem)
	}
	if r.LongestGap > limit {
		t.Fatalf("longest gap in the stream %v exceeds the guest's pause %v + 200ms (+%v under TCG)", r.LongestGap, maxPause, limit-strict)
	}
}

// phaseLog is the migration phases of one guest, as a follower of the
// event stream saw them.
type phaseLog struct {
	mu   sync.Mutex
	seen []string
}

// followPhases follows the event stream (through the API, as `ferry events
// --follow --vm NAME` does) for vm's migration phases until the test ends.
// It asks for the recent events first, so that a phase written before the
// stream opened is not missed.
func followPhases(t *testing.T, cl *client.Client, vm string) *phaseLog {
	l := &phaseLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		err := cl.FollowEvents(ctx, client.EventFilter{VM: vm, Kind: "migration-", Backlog: 200}, func(e api.Event) error {
			if e.Kind != "migration-predicted" {
				l.mu.Lock()
				l.seen = append(l.seen, e.Kind)
				l.mu.Unlock()
			}
			return nil
		})
		if err != nil {
			t.Errorf("following the event stream: %v", err)
		}
	}()
	return l
}

// wait returns what was seen once n phases were, or after 20 s.
func (l *phaseLog) wait(n int) []string {
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		l.mu.Lock()
		got := slices.Clone(l.seen)
		l.mu.Unlock()
		if len(got) >= n || time.Now().After(end) {
			return got
		}
	}
}

// tcgWarmup is how much longer than its pause + 200 ms a TCG guest may stay
// silent after a migration (see TestMigrationKeepsConnection).
const tcgWarmup = 100 * time.Millisecond

// waitOneQEMU waits until exactly one QEMU process of the guest exists, on
// host. (A paused incoming QEMU of a failed migration may linger until its
// host hears of the failure; it never ran guest code.)
func waitOneQEMU(t *testing.T, b *testbed.Bed, uuid, host string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		hosts := qemuHosts(b, uuid)
		if len(hosts) == 1 && hosts[0] == host {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest %s: QEMU on %v, want only on %s", uuid, hosts, host)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
