package ha

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/metrics"
	"github.com/ferryvm/ferry/internal/store"
)

// A host lost FlapLosses times within FlapWindow is flapping: instead of
// being fenced over and over, it is put in maintenance until an operator
// undrains it.
const (
	FlapLosses = 3
	FlapWindow = 10 * time.Minute
)

// Hosts is the leader controller that follows the hosts' health: it sees a
// host's lease expire (its node record, bound to the lease, is gone) and
// says so once, and it takes hosts out of service while they still answer
// — flapping ones, and ones that report themselves degraded — by putting
// them in maintenance, so that their guests move away live. Restarts reads
// from it which hosts are dead and since when.
type Hosts struct {
	st  *store.Store
	t   Timing
	log *slog.Logger
	now func() time.Time

	mu        sync.Mutex
	deadSince map[string]time.Time   // host -> when its lease was seen gone
	seen      map[string]bool        // hosts alive at the previous round
	losses    map[string][]time.Time // host -> when it was lost, within FlapWindow
	drained   map[string]bool        // hosts put in maintenance here (event sent once)
	lastPass  atomic.Int64           // unix ns of the last round (read by Leading without the lock)
	// leading is when this host's current spell as leader began.
	leading time.Time
}

// NewHosts returns the host-health controller for timing t.
func NewHosts(st *store.Store, t Timing, log *slog.Logger) *Hosts {
	if log == nil {
		log = slog.Default()
	}
	return &Hosts{st: st, t: t, log: log.With("controller", "hosts"), now: time.Now,
		deadSince: map[string]time.Time{}, losses: map[string][]time.Time{}, drained: map[string]bool{}}
}

// Name implements leader.Controller.
func (h *Hosts) Name() string { return "hosts" }

// Leading reports whether this host's leader ran a round recently (the
// leader runs one at least every 2 s).
func (h *Hosts) Leading() bool {
	return time.Since(time.Unix(0, h.lastPass.Load())) < 3*time.Second
}

// DeadSince says since when a host's lease is known to be gone.
func (h *Hosts) DeadSince(host string) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.deadSince[host]
	return t, ok
}

// Pass implements leader.Controller.
func (h *Hosts) Pass(ctx context.Context, r *leader.Round) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.Leading() {
		// A new spell as leader: hosts it never saw get a lease's time
		// to show up (lost).
		h.leading, h.seen = h.now(), nil
	}
	h.lastPass.Store(time.Now().UnixNano())
	h.lost(ctx, r)
	return h.outOfService(ctx, r)
}

// lost notes hosts whose lease is gone: those seen alive before (a host
// without guests can flap too), and those guests are placed on — once this
// leader has led for a lease and the margin: a host it has not seen yet
// may be starting (a cluster coming up) or its record may still be on its
// way (a new leader), and its lease, if it has one, has not run out
// before then.
func (h *Hosts) lost(ctx context.Context, r *leader.Round) {
	now := h.now()
	alive := map[string]bool{}
	for _, n := range r.Nodes {
		alive[n.Name] = true
		delete(h.deadSince, n.Name)
	}
	var gone []string
	if now.Sub(h.leading) >= h.t.LeaseTTL+h.t.Margin {
		for _, vm := range r.VMs {
			gone = append(gone, vm.Node)
		}
	}
	for host := range h.seen {
		gone = append(gone, host)
	}
	h.seen = alive
	for _, host := range gone {
		if _, seen := h.deadSince[host]; host == "" || alive[host] || seen {
			continue
		}
		h.deadSince[host] = now
		metrics.HAHostsLost.Inc()
		event(ctx, h.st, h.log, api.Event{Time: now.UTC(), Kind: "host-lost", Node: host,
			Message: fmt.Sprintf("host %s: lease expired; HA guests restart elsewhere after %s", host, h.t.Margin)})
		var recent []time.Time
		for _, at := range append(h.losses[host], now) {
			if now.Sub(at) <= FlapWindow {
				recent = append(recent, at)
			}
		}
		h.losses[host] = recent
	}
}

// outOfService puts flapping, degraded and at-risk hosts in maintenance —
// degraded and at-risk ones only while some healthy host remains (shared
// storage filling up everywhere is not helped by moving guests around). A
// host at risk of failing (its own forecast from its health signals) is
// evacuated by live migration while it still works, so its guests never
// see the failure; it stays in maintenance until an operator undrains it.
func (h *Hosts) outOfService(ctx context.Context, r *leader.Round) error {
	healthy := 0
	for _, n := range r.Nodes {
		if n.State == "ready" && !n.Maintenance && len(n.Degraded) == 0 && !atRisk(&n) && len(h.losses[n.Name]) < FlapLosses {
			healthy++
		}
	}
	for i := range r.Nodes {
		n := &r.Nodes[i]
		why, kind := "", "host-drained"
		switch {
		case len(h.losses[n.Name]) >= FlapLosses:
			why = fmt.Sprintf("it was lost %d times within %s (flapping); fix it and undrain it", len(h.losses[n.Name]), FlapWindow)
		case len(n.Degraded) > 0 && healthy > 0:
			why = "it reports itself degraded: " + strings.Join(n.Degraded, "; ")
		case atRisk(n) && healthy > 0:
			why, kind = riskWhy(n.Risk), "host-at-risk"
		}
		if n.Maintenance {
			// Losses while in maintenance do not count: an operator who
			// undrains a fixed host starts it with a clean slate.
			h.losses[n.Name] = nil
			continue
		}
		if why == "" {
			delete(h.drained, n.Name)
			continue
		}
		if err := h.st.SetMaintenance(ctx, n.Name, true); err != nil {
			return err
		}
		n.Maintenance = true // the rest of the round sees it
		h.losses[n.Name] = nil
		if !h.drained[n.Name] {
			h.drained[n.Name] = true
			h.log.Warn("host put in maintenance", "node", n.Name, "why", why)
			event(ctx, h.st, h.log, api.Event{Kind: kind, Node: n.Name,
				Message: fmt.Sprintf("host %s put in maintenance (its guests move away live): %s", n.Name, why)})
		}
	}
	return nil
}

// atRisk tells a host that forecasts its own failure.
func atRisk(n *api.Node) bool { return n.Risk != nil && n.Risk.AtRisk }

// riskWhy says why a host is at risk, with its three strongest reasons.
func riskWhy(r *api.HostRisk) string {
	var rs []string
	for i, x := range r.Reasons {
		if i == 3 {
			break
		}
		rs = append(rs, x.Reason)
	}
	return fmt.Sprintf("it is at risk of failing within %s (%.0f %%): %s; check it and undrain it",
		r.Horizon, 100*r.Probability, strings.Join(rs, "; "))
}

// event records something operators should see; failures only log.
func event(ctx context.Context, st *store.Store, log *slog.Logger, ev api.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if err := st.PutEvent(ctx, ev); err != nil {
		log.Warn("recording event", "kind", ev.Kind, "err", err)
	}
}
