package predict

import (
	"sync"
	"time"

	"github.com/ferryvm/ferry/internal/health"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// Tracker keeps a host's health history: every reading of every signal, in
// a bounded downsampled history, with what the risk model must know of each
// signal (its kind, unit and the hardware's own limit).
type Tracker struct {
	hist *telemetry.History
	mu   sync.Mutex
	meta map[string]health.Reading
}

// NewTracker returns an empty tracker whose series keep capacity points
// (telemetry.DefaultCapacity when zero).
func NewTracker(capacity int) *Tracker {
	return &Tracker{hist: telemetry.NewHistory(capacity), meta: map[string]health.Reading{}}
}

// Record adds one sampling's readings, taken at t.
func (tr *Tracker) Record(t time.Time, readings []health.Reading) {
	tr.mu.Lock()
	for _, r := range readings {
		tr.meta[r.Signal] = r
	}
	tr.mu.Unlock()
	for _, r := range readings {
		tr.hist.Add(r.Signal, telemetry.Point{T: t, V: r.Value})
	}
}

// Assess returns the host's risk at now from the history it holds.
func (tr *Tracker) Assess(cfg RiskConfig, now time.Time) HostRisk {
	cfg = cfg.withDefaults()
	since := now.Add(-cfg.Window)
	tr.mu.Lock()
	var sigs []Signal
	for _, name := range tr.hist.Names() {
		m, ok := tr.meta[name]
		if !ok {
			continue
		}
		sigs = append(sigs, Signal{Name: name, Kind: m.Kind, Unit: m.Unit, Limit: m.Limit, Points: tr.hist.Since(name, since)})
	}
	tr.mu.Unlock()
	return Assess(cfg, now, sigs)
}

// Forget drops signals not read since t (a device that went away).
func (tr *Tracker) Forget(t time.Time) {
	tr.hist.Forget(t)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	names := map[string]bool{}
	for _, n := range tr.hist.Names() {
		names[n] = true
	}
	for n := range tr.meta {
		if !names[n] {
			delete(tr.meta, n)
		}
	}
}
