package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/ferryvm/ferry/internal/wait"
)

// One underlay link degrades — 5 % loss and 50 ms more delay each way,
// through the testbed's link emulator: the hosts' probes see it, the link
// matrix marks it, an event says so, and a live move that would have gone
// over it goes to another host; healed, the link is healthy again.
// (Long on purpose: a scenario read top to bottom; split, its story would scatter.)
func TestDegradedLinkIsSeenAndAvoided(t *testing.T) {
	probeFast := []string{"--link-probe-every", "2s"}
	b, cl := newBedWith(t, testbed.Options{Hosts: 3, EmulatedLinks: true,
		HostArgs: map[int][]string{0: probeFast, 1: probeFast, 2: probeFast}})
	ctx := ctxT(t, 6*time.Minute)
	links := func() map[[2]string]api.LinkStat {
		t.Helper()
		ls, err := cl.ListLinks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[[2]string]api.LinkStat{}
		for _, l := range ls {
			out[[2]string{l.From, l.To}] = l
		}
		return out
	}
	// Every link measured, none degraded; then a few more rounds, so that
	// each prober knows its links' own round trips.
	waitUntil(t, 90*time.Second, "every link probed", func() (bool, string) {
		ls := links()
		for _, l := range ls {
			if l.RTTAt.IsZero() || l.Degraded {
				return false, fmt.Sprintf("%s → %s: %+v", l.From, l.To, l)
			}
		}
		return len(ls) == 6, fmt.Sprintf("%d of 6 links measured", len(ls))
	})
	time.Sleep(10 * time.Second)

	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "lh"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "lh", 90*time.Second, "running", healthyRunning)
	// Where a move would go with every link healthy.
	before, err := cl.PredictMigration(ctx, "lh", api.MigrateRequest{To: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	first := before.Target
	if first == "" || first == vm.Node {
		t.Fatalf("a move of lh from %s would go to %q", vm.Node, first)
	}
	follow := followKind(t, cl, "link-")
	bad := linkemu.Profile{Delay: 50 * time.Millisecond, Loss: 0.05}
	if err := b.SetLink(ctx, vm.Node, first, bad, false); err != nil {
		t.Fatal(err)
	}
	// Degraded by the loss or the round trip, whichever its probes show
	// first; then the round trip with the delay.
	waitUntil(t, 60*time.Second, "the link judged degraded with its new round trip", func() (bool, string) {
		l := links()[[2]string{vm.Node, first}]
		return l.Degraded && l.RTTMS >= 90, fmt.Sprintf("degraded %v (%s), round trip %.1f ms", l.Degraded, l.Why, l.RTTMS)
	})
	l := links()[[2]string{vm.Node, first}]
	t.Logf("%s → %s: %.1f ms (usual %.1f ms), %.1f %% loss, jitter %.1f ms: %s", l.From, l.To, l.RTTMS, l.BaselineRTTMS, l.LossPct, l.JitterMS, l.Why)
	ev := follow.wait(t, "link-degraded", 30*time.Second)
	if !strings.Contains(ev.Message, vm.Node) || !strings.Contains(ev.Message, first) {
		t.Errorf("the link-degraded event %+v does not name the link between %s and %s", ev, vm.Node, first)
	}
	// The matrix, as an operator sees it.
	h := b.Hosts[0]
	out, err := exec.Command("ip", "netns", "exec", h.NS, ferryBin, "--data-dir", h.DataDir, "node", "net").CombinedOutput()
	if err != nil {
		t.Fatalf("ferry node net: %v\n%s", err, out)
	}
	t.Logf("ferry node net:\n%s", out)
	if !matrixMarks(string(out), vm.Node, first) {
		t.Errorf("ferry node net does not mark %s → %s degraded:\n%s", vm.Node, first, out)
	}
	if !regexp.MustCompile(`(?m)^` + vm.Node + `\s+[0-9.]+/[0-9.]+\s+[0-9.]+/[0-9.]+\s+[0-9.]+/[0-9.]+\s+[0-9.]+/[0-9.]+\s`).Match(out) {
		t.Errorf("ferry node net shows no traffic by class for %s:\n%s", vm.Node, out)
	}
	// The placement engine takes another host, and says why.
	after, err := cl.PredictMigration(ctx, "lh", api.MigrateRequest{To: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	if after.Target == first || after.Target == vm.Node || after.Target == "" {
		t.Fatalf("with %s → %s degraded, a move of lh would go to %q", vm.Node, first, after.Target)
	}
	m, err := cl.MigrateVM(ctx, "lh", api.MigrateRequest{To: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Target == first {
		t.Fatalf("the move went over the degraded link to %s", first)
	}
	if m = waitMigEnd(t, cl, "lh", m.ID); m.Phase != api.MigCompleted {
		t.Fatalf("the move to %s: %s (%s)", m.Target, m.Phase, m.Error)
	}
	// Healed: healthy again once its probes show no loss and its usual
	// round trip.
	if err := b.SetLink(ctx, vm.Node, first, linkemu.Profile{}, false); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Minute, "the link healthy again", func() (bool, string) {
		l := links()[[2]string{vm.Node, first}]
		return !l.Degraded, l.Why
	})
	if ev := follow.wait(t, "link-recovered", 10*time.Second); !strings.Contains(ev.Message, vm.Node) || !strings.Contains(ev.Message, first) {
		t.Errorf("the link-recovered event %+v does not name the link between %s and %s", ev, vm.Node, first)
	}
}

// matrixMarks reports whether ferry node net's matrix marks from → to
// degraded: the row of from, in the column of to, ends in "!".
func matrixMarks(out, from, to string) bool {
	lines := strings.Split(out, "\n")
	if len(lines) < 2 {
		return false
	}
	head := strings.Fields(lines[0]) // FROM \ TO h1 h2 h3
	col := -1
	for i, f := range head[3:] {
		if f == to {
			col = i
		}
	}
	for _, ln := range lines[1:] {
		f := strings.Fields(ln)
		if len(f) == 0 || f[0] != from || col < 0 {
			continue
		}
		// Cells are "12.3ms/0.0%" with " !" after a degraded one.
		var cells []string
		for _, x := range f[1:] {
			if x == "!" && len(cells) > 0 {
				cells[len(cells)-1] += " !"
				continue
			}
			cells = append(cells, x)
		}
		return col < len(cells) && strings.HasSuffix(cells[col], "!")
	}
	return false
}

// eventLog is the events of some kinds a follower of the stream saw.
type eventLog struct {
	mu   sync.Mutex
	seen []api.Event
}

// followKind follows the event stream for events whose kind starts with
// kind, from now until the test ends.
func followKind(t *testing.T, cl *client.Client, kind string) *eventLog {
	l := &eventLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		cl.FollowEvents(ctx, client.EventFilter{Kind: kind}, func(e api.Event) error {
			l.mu.Lock()
			l.seen = append(l.seen, e)
			l.mu.Unlock()
			return nil
		})
	}()
	time.Sleep(500 * time.Millisecond) // the stream is open
	return l
}

// wait returns the first event of this kind seen, waiting up to d.
func (l *eventLog) wait(t *testing.T, kind string, d time.Duration) api.Event {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		l.mu.Lock()
		i := slices.IndexFunc(l.seen, func(e api.Event) bool { return e.Kind == kind })
		var e api.Event
		if i >= 0 {
			e = l.seen[i]
		}
		l.mu.Unlock()
		if i >= 0 {
			return e
		}
	}
	t.Fatalf("no %s event within %s", kind, d)
	return api.Event{}
}

// waitUntil polls cond every 500 ms for up to d (wait.Until); the string
// cond returns says why not yet.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	pollEvery(t, d, 500*time.Millisecond, what, cond)
}

// pollEvery is waitUntil at another interval.
func pollEvery(t *testing.T, d, every time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := wait.Until(ctx, every, func(context.Context) (bool, error) {
		ok, why := cond()
		return ok, errors.New(why)
	}); err != nil {
		t.Fatalf("not %s within %s: %v", what, d, err)
	}
}
