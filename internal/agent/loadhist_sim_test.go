package agent_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/promhist"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/wait"
)

// TestGuestLoadHistoryFollowsTheGuest: a guest's CPU history is kept in
// the store as its buckets close, and the host it migrates to continues
// it (the same buckets, then more) instead of starting a new one: a daily
// season learnt over days is not forgotten by a move. Its host's forecast
// is its guests' summed.
func TestGuestLoadHistoryFollowsTheGuest(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 2, controlPlane: true, migrationTLS: true, loadEvery: 50 * time.Millisecond,
		loadPeriod: 4800 * time.Millisecond, loadHorizon: time.Second, capacity: 1}) // 100 ms buckets
	ctx := context.Background()
	vm := e.create("steady", "h1", false)
	e.oneCopy(vm, "h1").SetCPU(0.3)
	history := func() *store.LoadHistory {
		h, err := e.st.LoadHistory(ctx, "steady", vm.Spec.UUID)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	wait.For(t, 30*time.Second, "h1 to keep 20 buckets of the guest's history", func() (bool, error) {
		h := history()
		return h != nil && len(h.CPU.Values) >= 20, fmt.Errorf("%+v", h)
	})
	before := history()
	e.migrate("steady", "h2", api.MigrationOptions{})
	if m := e.waitMigration("steady", 30*time.Second); m.Phase != api.MigCompleted {
		t.Fatalf("the migration: %s %s", m.Phase, m.Error)
	}
	moved := time.Now()
	var after *store.LoadHistory
	wait.For(t, 30*time.Second, "h2 to continue the history", func() (bool, error) {
		after = history()
		return after != nil && after.CPU.End.After(moved.Add(time.Second)), fmt.Errorf("%+v", after)
	})
	if n := len(before.CPU.Values); len(after.CPU.Values) < n+10 || !slices.Equal(after.CPU.Values[:n], before.CPU.Values) {
		t.Fatalf("h2's history does not continue h1's: %d buckets before the move, %d after (first ones %v, were %v)",
			n, len(after.CPU.Values), after.CPU.Values[:min(n, len(after.CPU.Values))], before.CPU.Values)
	}
	wait.For(t, 10*time.Second, "h2 to forecast from it", func() (bool, error) {
		nodes, err := e.st.ListNodes(ctx)
		for _, n := range nodes {
			if n.Name == "h2" && n.Load != nil {
				g, ok := n.Load.Guests["steady"]
				return ok && n.Load.Method != "none" && n.Load.Peak >= g.Peak && g.Peak > 0.2,
					fmt.Errorf("h2's load %+v", n.Load)
			}
		}
		return false, err
	})
}

// TestGuestLoadHistoryFromPrometheus: with a Prometheus server as the
// metrics source, a guest's history is read from it (one range query per
// closed bucket; here a fake server that has seen the guest for an hour)
// instead of being kept in the store, and is kept as it was while the
// server does not answer.
func TestGuestLoadHistoryFromPrometheus(t *testing.T) {
	var mu sync.Mutex
	down, asked := false, 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		asked++
		q := r.URL.Query()
		if down || r.URL.Path != "/api/v1/query_range" || !strings.Contains(q.Get("query"), `vm="steady"`) {
			http.Error(w, "no", http.StatusServiceUnavailable)
			return
		}
		start, _ := strconv.ParseInt(q.Get("start"), 10, 64)
		end, _ := strconv.ParseInt(q.Get("end"), 10, 64)
		step, _ := strconv.ParseInt(q.Get("step"), 10, 64)
		var pts []string
		for ts := max(start, end-3600); ts <= end; ts += step {
			pts = append(pts, fmt.Sprintf(`[%d,"0.3"]`, ts))
		}
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[%s]}]}}`, strings.Join(pts, ","))
	}))
	defer srv.Close()
	src, err := promhist.Parse("prometheus://" + strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{hosts: 1, controlPlane: true, loadEvery: 100 * time.Millisecond,
		loadPeriod: 48 * time.Second, loadHorizon: 5 * time.Second, capacity: 1, loadSource: src}) // 1 s buckets
	ctx := context.Background()
	vm := e.create("steady", "h1", false)
	e.oneCopy(vm, "h1").SetCPU(0.3)
	guest := func() (api.GuestLoad, *api.HostLoad) {
		nodes, err := e.st.ListNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Name == "h1" && n.Load != nil {
				return n.Load.Guests["steady"], n.Load
			}
		}
		return api.GuestLoad{}, nil
	}
	wait.For(t, 30*time.Second, "h1 to forecast from Prometheus' history", func() (bool, error) {
		g, l := guest()
		return l != nil && l.HistorySource == src.String() && g.History >= 100 && math.Abs(g.Peak-0.3) < 0.05,
			fmt.Errorf("guest %+v, host %+v", g, l)
	})
	if h, err := e.st.LoadHistory(ctx, "steady", vm.Spec.UUID); err != nil || h != nil {
		t.Fatalf("the history was kept in the store too: %+v %v", h, err)
	}
	mu.Lock()
	down, before := true, asked
	mu.Unlock()
	// Polled, not slept: until the agent has asked the down server twice
	// (two buckets closed since), and reported its load after that.
	var n int
	var refused time.Time
	wait.For(t, 30*time.Second, "the agent to ask the down server twice", func() (bool, error) {
		mu.Lock()
		n = asked - before
		mu.Unlock()
		if n >= 2 && refused.IsZero() {
			refused = time.Now()
		}
		_, l := guest()
		return !refused.IsZero() && l != nil && l.Sampled.After(refused), fmt.Errorf("asked %d times", n)
	})
	if g, _ := guest(); n == 0 || g.History < 100 {
		t.Fatalf("with Prometheus down (asked %d times since): the guest's history %d buckets", n, g.History)
	}
}
