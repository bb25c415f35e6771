package migmodel

import (
	"math"
	"sort"
	"time"
)

// Constants are one strategy's figures the model cannot derive from the
// guest and the link: what the cluster's own migrations show.
type Constants struct {
	// Setup is from the request to the first page sent: recording,
	// admission, the target's QEMU starting, the stream's handshakes.
	Setup time.Duration `json:"setup"`
	// Efficiency is the share of the link's bandwidth the stream reaches.
	Efficiency float64 `json:"efficiency"`
	// Switchover is the pause beyond sending the last pages: device state,
	// the target taking over, its CPUs starting.
	Switchover time.Duration `json:"switchover"`
	// CompressRatio is wire bytes per page byte when compressed, and
	// CompressSpeed the compressors' rate, bytes per second (Compress).
	CompressRatio float64 `json:"compress_ratio,omitempty"`
	CompressSpeed float64 `json:"compress_speed,omitempty"`
	// Samples is how many finished migrations these were fitted to (0:
	// the defaults).
	Samples int `json:"samples"`
}

// Calibration holds the constants per strategy.
type Calibration map[string]Constants

// Defaults are the constants before a cluster has migrated anything:
// measured on the project's 2-core TCG machines with QEMU 10.0
// (docs/BENCHMARKS.md), where a migration's setup is dominated by the
// target's QEMU starting.
func Defaults() Calibration {
	base := Constants{Setup: 300 * time.Millisecond, Efficiency: 0.9, Switchover: 30 * time.Millisecond}
	c := Calibration{}
	for _, s := range All {
		c[s] = base
	}
	mf := c[Multifd]
	mf.Setup += 50 * time.Millisecond
	c[Multifd] = mf
	cp := mf
	cp.CompressRatio, cp.CompressSpeed = 0.5, 200e6 // unknown data: half; calibration learns the guests' own
	c[Compress] = cp
	pc := base
	pc.Switchover = 60 * time.Millisecond
	c[Postcopy] = pc
	return c
}

// For is the constants of strategy s (the defaults' where none is known).
func (c Calibration) For(s string) Constants {
	if k, ok := c[s]; ok && k.Efficiency > 0 {
		return k
	}
	return Defaults()[s]
}

// Sample is one finished migration as calibration sees it.
type Sample struct {
	Strategy  string        `json:"strategy"`
	Guest     Guest         `json:"guest"`
	Link      Link          `json:"link"`
	Total     time.Duration `json:"total"`
	Downtime  time.Duration `json:"downtime"`
	Bytes     int64         `json:"bytes"`
	Rounds    int           `json:"rounds"`
	Converged bool          `json:"converged"`
	// MaxDowntime is the downtime limit it ran with.
	MaxDowntime time.Duration `json:"max_downtime"`
}

// MinSamples is how many finished migrations of a strategy calibration
// needs before it replaces the defaults.
const MinSamples = 3

// Calibrate fits each strategy's constants to finished migrations: the
// stream's efficiency and the setup from a line through (bytes/link
// bandwidth, total time) by least squares, the switchover pause from the
// median downtime beyond what the last pages need. Strategies with fewer
// than MinSamples keep their constants from base.
func Calibrate(base Calibration, samples []Sample) Calibration {
	out := Calibration{}
	for k, v := range base {
		out[k] = v
	}
	by := map[string][]Sample{}
	for _, s := range samples {
		if s.Converged && s.Link.Bandwidth > 0 && s.Total > 0 {
			by[s.Strategy] = append(by[s.Strategy], s)
		}
	}
	for strat, ss := range by {
		if len(ss) < MinSamples {
			continue
		}
		k := out.For(strat)
		// total = setup + bytes / (efficiency × bandwidth) + pause
		var xs, ys []float64
		for _, s := range ss {
			xs = append(xs, float64(s.Bytes)/s.Link.Bandwidth)
			ys = append(ys, (s.Total - s.Downtime).Seconds())
		}
		slope, icept, ok := fitLine(xs, ys)
		if ok && slope > 0 {
			k.Efficiency = math.Min(1.5, 1/slope)
			k.Setup = time.Duration(math.Max(0, icept) * float64(time.Second))
		} else {
			// All alike: keep the setup, fit the efficiency alone.
			var eff []float64
			for i := range xs {
				if d := ys[i] - k.Setup.Seconds(); d > 0 {
					eff = append(eff, xs[i]/d)
				}
			}
			if len(eff) > 0 {
				k.Efficiency = math.Min(1.5, median(eff))
			}
		}
		// The pause beyond sending the last pages: each sample's downtime
		// less what the model, with the fitted stream, says its last pages
		// took.
		var pauses []float64
		for _, s := range ss {
			fit := Calibration{strat: k}
			p := Predict(strat, s.Guest, s.Link, Limits{DowntimeStart: min(20*time.Millisecond, s.MaxDowntime), DowntimeMax: s.MaxDowntime}, fit)
			last := p.Downtime - k.Switchover
			pauses = append(pauses, math.Max(0, (s.Downtime-last).Seconds()))
		}
		k.Switchover = time.Duration(median(pauses) * float64(time.Second))
		k.Samples = len(ss)
		out[strat] = k
	}
	return out
}

// fitLine is the least-squares line y = slope·x + icept; ok is false when
// the xs do not spread enough to say.
func fitLine(xs, ys []float64) (slope, icept float64, ok bool) {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	den := n*sxx - sx*sx
	mean := sx / n
	if den <= 0 || math.Sqrt(den)/n < 0.1*mean {
		return 0, 0, false
	}
	slope = (n*sxy - sx*sy) / den
	return slope, (sy - slope*sx) / n, true
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	w := append([]float64(nil), v...)
	sort.Float64s(w)
	if len(w)%2 == 1 {
		return w[len(w)/2]
	}
	return (w[len(w)/2-1] + w[len(w)/2]) / 2
}
