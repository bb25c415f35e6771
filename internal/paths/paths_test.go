package paths

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fakeRouter struct {
	mu     sync.Mutex
	routes map[netip.Addr][]Hop
	src    map[netip.Addr]netip.Addr
}

func (f *fakeRouter) Replace(dst, src netip.Addr, hops []Hop) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[dst], f.src[dst] = append([]Hop(nil), hops...), src
	return nil
}

func (f *fakeRouter) get(dst netip.Addr) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprint(f.routes[dst])
}

// Two hosts on two fabrics (addresses on the loopback device): a path that
// stops answering is withdrawn from the route within DownAfter and comes
// back once it has answered for UpAfter.
func TestPathDownAndBack(t *testing.T) {
	const every, down, up = 20 * time.Millisecond, 100 * time.Millisecond, 300 * time.Millisecond
	port := 17000 + int(time.Now().UnixNano()%1000)
	a := netip.MustParseAddr
	type host struct {
		m       *Monitor
		r       *fakeRouter
		mu      sync.Mutex
		changes []Change
	}
	mk := func(svc string, p0, p1 string) *host {
		h := &host{r: &fakeRouter{routes: map[netip.Addr][]Hop{}, src: map[netip.Addr]netip.Addr{}}}
		m, err := New(Config{Local: []Local{{"f0", netip.MustParsePrefix(p0)}, {"f1", netip.MustParsePrefix(p1)}}, Service: a(svc),
			Port: port, Every: every, DownAfter: down, UpAfter: up, Router: h.r, Log: quiet,
			OnChange: func(c Change) { h.mu.Lock(); h.changes = append(h.changes, c); h.mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		h.m = m
		return h
	}
	h1 := mk("127.0.12.1", "127.0.10.1/24", "127.0.11.1/24")
	h2 := mk("127.0.12.2", "127.0.10.2/24", "127.0.11.2/24")
	h1.m.SetPeers([]Peer{{Name: "h2", Service: a("127.0.12.2"), Paths: []netip.Addr{a("127.0.10.2"), a("127.0.11.2"), a("198.18.9.9")}}})
	h2.m.SetPeers([]Peer{{Name: "h1", Service: a("127.0.12.1"), Paths: []netip.Addr{a("127.0.10.1"), a("127.0.11.1")}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, h := range []*host{h1, h2} {
		go func() {
			if err := h.m.Run(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	both := "[{f0 127.0.10.2} {f1 127.0.11.2}]"
	until := func(what string, d time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > d {
				t.Fatalf("%s: not within %s (h1's route to h2: %s; h1 sees %+v)", what, d, h1.r.get(a("127.0.12.2")), h1.m.State())
			}
			time.Sleep(5 * time.Millisecond)
		}
		return time.Since(start)
	}
	until("both paths in the route", time.Second, func() bool { return h1.r.get(a("127.0.12.2")) == both })
	if src := h1.r.src[a("127.0.12.2")]; src != a("127.0.12.1") {
		t.Errorf("the route's source is %v, want h1's service address", src)
	}
	// Stay up while both answer, for longer than it takes to go down.
	time.Sleep(3 * down)
	if got := h1.r.get(a("127.0.12.2")); got != both {
		t.Fatalf("with both paths answering the route became %s", got)
	}

	// h2's second path fails.
	h2.m.Drop(1, true)
	took := until("the dead path withdrawn", 2*time.Second, func() bool { return h1.r.get(a("127.0.12.2")) == "[{f0 127.0.10.2}]" })
	t.Logf("withdrawn after %s (DownAfter %s)", took, down)
	if took < down-2*every {
		t.Errorf("withdrawn after %s, before DownAfter %s", took, down)
	}
	until("h2 withdrawing it too", time.Second, func() bool { return h2.r.get(a("127.0.12.1")) == "[{f0 127.0.10.1}]" })
	h1.mu.Lock()
	if len(h1.changes) != 1 || h1.changes[0].Up || h1.changes[0].Dev != "f1" || h1.changes[0].Peer != "h2" {
		t.Errorf("changes seen by h1: %+v, want one: h2 over f1 down", h1.changes)
	}
	h1.mu.Unlock()

	// It comes back: restored only after UpAfter of answers.
	h2.m.Drop(1, false)
	took = until("the path restored", 2*time.Second, func() bool { return h1.r.get(a("127.0.12.2")) == both })
	t.Logf("restored after %s (UpAfter %s)", took, up)
	if took < up-2*every {
		t.Errorf("restored after %s, before UpAfter %s", took, up)
	}

	// Both paths dead: the route keeps both rather than none.
	h2.m.Drop(0, true)
	h2.m.Drop(1, true)
	until("both paths down", 2*time.Second, func() bool {
		n := 0
		for _, s := range h1.m.State() {
			if !s.Up {
				n++
			}
		}
		return n == 2
	})
	time.Sleep(3 * every)
	if got := h1.r.get(a("127.0.12.2")); got != both {
		t.Errorf("with every path down the route is %s, want both kept", got)
	}
}

// A path that answers but loses a share of its probes is withdrawn while
// the other path loses none, and restored once it loses none for UpAfter.
func TestLossyPathWithdrawn(t *testing.T) {
	const every, down, up = 20 * time.Millisecond, 100 * time.Millisecond, 300 * time.Millisecond
	port := 18000 + int(time.Now().UnixNano()%1000)
	a := netip.MustParseAddr
	mk := func(svc, p0, p1 string, r *fakeRouter) *Monitor {
		m, err := New(Config{Local: []Local{{"f0", netip.MustParsePrefix(p0)}, {"f1", netip.MustParsePrefix(p1)}}, Service: a(svc),
			Port: port, Every: every, DownAfter: down, UpAfter: up, Router: r, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	r1 := &fakeRouter{routes: map[netip.Addr][]Hop{}, src: map[netip.Addr]netip.Addr{}}
	r2 := &fakeRouter{routes: map[netip.Addr][]Hop{}, src: map[netip.Addr]netip.Addr{}}
	h1 := mk("127.0.22.1", "127.0.20.1/24", "127.0.21.1/24", r1)
	h2 := mk("127.0.22.2", "127.0.20.2/24", "127.0.21.2/24", r2)
	h1.SetPeers([]Peer{{Name: "h2", Service: a("127.0.22.2"), Paths: []netip.Addr{a("127.0.20.2"), a("127.0.21.2")}}})
	h2.SetPeers([]Peer{{Name: "h1", Service: a("127.0.22.1"), Paths: []netip.Addr{a("127.0.20.1"), a("127.0.21.1")}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h1.Run(ctx)
	go h2.Run(ctx)
	both, one := "[{f0 127.0.20.2} {f1 127.0.21.2}]", "[{f0 127.0.20.2}]"
	wait := func(what, want string, d time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for r1.get(a("127.0.22.2")) != want {
			if time.Since(start) > d {
				t.Fatalf("%s: h1's route %s, want %s (h1 sees %+v)", what, r1.get(a("127.0.22.2")), want, h1.State())
			}
			time.Sleep(5 * time.Millisecond)
		}
		return time.Since(start)
	}
	wait("both paths", both, time.Second)
	// h1's second path loses a fifth of its probes: it still answers
	// (no gap reaches DownAfter), but it is withdrawn.
	h1.Lose(1, 0.2)
	took := wait("the lossy path withdrawn", one, 5*time.Second)
	t.Logf("withdrawn %s after a 20 %% loss began", took)
	var why string
	for _, s := range h1.State() {
		if s.Dev == "f1" && !s.Up {
			why = "down"
		}
	}
	if why == "" {
		t.Errorf("f1 not down in %+v", h1.State())
	}
	// Still lossy: it stays out, well past UpAfter.
	time.Sleep(3 * up)
	if got := r1.get(a("127.0.22.2")); got != one {
		t.Fatalf("a path still losing probes came back: %s", got)
	}
	h1.Lose(1, 0)
	took = wait("the path restored", both, 5*time.Second)
	t.Logf("restored %s after the loss ended", took)
	if took < up {
		t.Errorf("restored after %s, before UpAfter %s", took, up)
	}
}
