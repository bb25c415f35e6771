// Package history keeps the recent past of the figures the dashboard draws:
// each host's load and underlay traffic by class, each link's round trip
// and loss. Every API server samples them from the state it already
// follows and keeps the last hour in memory, so that a page opened now
// shows the hour before it, not only what happened since it was opened.
//
// The samples share one clock: a ring of sample times and, per series, a
// ring of float32 values on the same slots (NaN where the subject reported
// nothing). The number of series is bounded; with the defaults the
// history holds at most HistoryMaxSeries × 720 values (about 6 MB).
package history

import (
	"context"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
)

// Defaults: a sample every 5 s, an hour kept, links re-read every 30 s (as
// often as hosts measure them), and at most MaxSeries series.
const (
	DefaultStep      = 5 * time.Second
	DefaultKeep      = 720
	DefaultLinkEvery = 30 * time.Second
	MaxSeries        = 2048
)

// staleTraffic is how old a host's traffic figure may be and still be
// sampled (its agent reports every 2 s).
const staleTraffic = 10 * time.Second

// Source is where the figures come from.
type Source interface {
	Nodes(ctx context.Context) ([]api.Node, error)
	Links(ctx context.Context) ([]api.LinkStat, error)
}

type key struct{ metric, subject string }

// Recorder is the history: Sample adds one time's figures, History reads
// them back.
type Recorder struct {
	step time.Duration
	keep int

	mu      sync.Mutex
	times   []int64 // ring of sample times (Unix ms); 0: slot unused
	next    int     // the slot the next sample goes to
	series  map[key][]float32
	dropped map[key]bool
}

// New returns a Recorder that keeps keep samples taken step apart.
func New(step time.Duration, keep int) *Recorder {
	return &Recorder{step: step, keep: keep, times: make([]int64, keep), series: map[key][]float32{}, dropped: map[key]bool{}}
}

// Sample records the figures of nodes and links at now: every ready host's
// load, the traffic of hosts that reported it lately, and every link's
// last measurement.
func (r *Recorder) Sample(now time.Time, nodes []api.Node, links []api.LinkStat) {
	vals := map[key]float64{}
	for _, n := range nodes {
		if n.State != "ready" {
			continue
		}
		vals[key{"load1", n.Name}] = n.Load1
		if t := n.Traffic; t != nil && now.Sub(t.Measured) < staleTraffic {
			for dir, c := range map[string]api.TrafficClasses{"sent": t.Sent, "received": t.Received} {
				vals[key{dir + "_control", n.Name}] = c.Control
				vals[key{dir + "_guest", n.Name}] = c.Guest
				vals[key{dir + "_migration", n.Name}] = c.Migration
			}
		}
	}
	for _, l := range links {
		if l.RTTAt.IsZero() {
			continue
		}
		s := l.From + "/" + l.To
		vals[key{"link_rtt_ms", s}] = l.RTTMS
		vals[key{"link_loss_pct", s}] = l.LossPct
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	slot := r.next
	r.next = (r.next + 1) % r.keep
	r.times[slot] = now.UnixMilli()
	for k, v := range r.series {
		v[slot] = float32(math.NaN())
		if r.empty(v) {
			delete(r.series, k) // a subject gone for the whole history
		}
	}
	for k, v := range vals {
		s, ok := r.series[k]
		if !ok {
			if len(r.series) >= MaxSeries {
				r.dropped[k] = true
				continue
			}
			delete(r.dropped, k)
			s = make([]float32, r.keep)
			for i := range s {
				s[i] = float32(math.NaN())
			}
			r.series[k] = s
		}
		s[slot] = float32(v)
	}
}

func (r *Recorder) empty(v []float32) bool {
	for _, x := range v {
		if !math.IsNaN(float64(x)) {
			return false
		}
	}
	return true
}

// History returns the samples taken after since (all with a zero since),
// oldest first, of the metrics whose name starts with prefix ("" for all).
func (r *Recorder) History(since time.Time, prefix string) api.History {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := api.History{StepMS: r.step.Milliseconds(), Times: []int64{}, Series: []api.HistorySeries{}, Dropped: len(r.dropped)}
	var slots []int
	for i := range r.keep {
		slot := (r.next + i) % r.keep // oldest first
		if t := r.times[slot]; t != 0 && (since.IsZero() || t > since.UnixMilli()) {
			slots = append(slots, slot)
			h.Times = append(h.Times, t)
		}
	}
	for k, v := range r.series {
		if len(k.metric) < len(prefix) || k.metric[:len(prefix)] != prefix {
			continue
		}
		s := api.HistorySeries{Metric: k.metric, Subject: k.subject, Values: make([]*float64, len(slots))}
		any := false
		for i, slot := range slots {
			if x := float64(v[slot]); !math.IsNaN(x) {
				s.Values[i] = &x
				any = true
			}
		}
		if any {
			h.Series = append(h.Series, s)
		}
	}
	sort.Slice(h.Series, func(i, j int) bool {
		a, b := h.Series[i], h.Series[j]
		if a.Metric != b.Metric {
			return a.Metric < b.Metric
		}
		return a.Subject < b.Subject
	})
	return h
}

// Run samples src every step until ctx ends; it re-reads the links every
// linkEvery (every step while there are none) and samples the last list it
// read in between.
func (r *Recorder) Run(ctx context.Context, src Source, linkEvery time.Duration, log *slog.Logger) {
	t := time.NewTicker(r.step)
	defer t.Stop()
	var links []api.LinkStat
	var linksAt time.Time
	for {
		now := time.Now()
		if now.Sub(linksAt) >= linkEvery || len(links) == 0 { // none yet: hosts measure soon after they start
			if ls, err := src.Links(ctx); err == nil {
				links, linksAt = ls, now
			} else if ctx.Err() == nil {
				log.Debug("history: reading links", "err", err)
			}
		}
		if nodes, err := src.Nodes(ctx); err == nil {
			r.Sample(now, nodes, links)
		} else if ctx.Err() == nil {
			log.Debug("history: reading hosts", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
