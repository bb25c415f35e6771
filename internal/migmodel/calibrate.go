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
	// Switchover is the pause beyond sending the last pages, as the
	// guest's clients see it: device state, the target taking over, its
	// CPUs starting and the guest answering again.
	Switchover time.Duration `json:"switchover"`
	// PostcopyStall is, for post-copy, the further stall of a guest that
	// writes memory (1 MiB/s or more) on the target while the pages it
	// writes first come from the source, in seconds. (Measured stalls did
	// not follow the dirty rate: docs/BENCHMARKS.md.)
	PostcopyStall float64 `json:"postcopy_stall,omitempty"`
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
// target's QEMU starting, an idle guest answered again 300-380 ms after
// it paused (QEMU's downtime 125-175 ms of it), and a guest writing 24 MiB/s
// stalled about a second longer after a post-copy switchover.
func Defaults() Calibration {
	base := Constants{Setup: 300 * time.Millisecond, Efficiency: 0.9, Switchover: 250 * time.Millisecond}
	c := Calibration{}
	for _, s := range All {
		c[s] = base
	}
	mf := c[Multifd]
	mf.Setup += 50 * time.Millisecond
	c[Multifd] = mf
	cp := mf
	// Nothing is assumed to compress until a guest's pages were sampled
	// (Guest.CompressRatio) or moves calibrated it: a guess would have
	// Ferry pay compression's CPU for nothing.
	cp.CompressRatio, cp.CompressSpeed = 1, 200e6
	c[Compress] = cp
	pc := base
	pc.PostcopyStall = 1
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
	// ServicePause is the pause the guest's clients saw, where it was
	// measured (0: only QEMU's Downtime is known).
	ServicePause time.Duration `json:"service_pause,omitempty"`
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
		k = fitPause(strat, k, ss)
		k.Samples = len(ss)
		out[strat] = k
	}
	return out
}

// fitPause fits a strategy's pause constants to its samples: the pause
// beyond sending the last pages (each sample's pause less what the model,
// with the fitted stream, says its last pages took), and for post-copy
// the stall per MiB/s dirtied, and the switchover of its idle guests.
func fitPause(strat string, k Constants, ss []Sample) Constants {
	// The pause beyond sending the last pages: each sample's downtime
	// less what the model, with the fitted stream, says its last pages
	// took.
	var pauses []float64
	for _, s := range ss {
		if strat == Postcopy {
			// No last pages: the switch comes after the first pass.
			pauses = append(pauses, pauseOf(s).Seconds())
			continue
		}
		fit := Calibration{strat: k}
		p := Predict(strat, s.Guest, s.Link, Limits{DowntimeStart: min(20*time.Millisecond, s.MaxDowntime), DowntimeMax: s.MaxDowntime}, fit)
		last := p.Downtime - k.Switchover
		pauses = append(pauses, math.Max(0, (pauseOf(s)-last).Seconds()))
	}
	if strat == Postcopy {
		// The pause less the idle switchover, of the busy guests among
		// them: the median, as stalls do not follow the dirty rate.
		var stalls []float64
		for i, s := range ss {
			if s.Guest.DirtyRate >= busyDirtyRate {
				stalls = append(stalls, math.Max(0, pauses[i]-Defaults()[Postcopy].Switchover.Seconds()))
			}
		}
		if len(stalls) > 0 {
			k.PostcopyStall = median(stalls)
		}
		var idle []float64
		for i, s := range ss {
			if s.Guest.DirtyRate < 1<<20 {
				idle = append(idle, pauses[i])
			}
		}
		if len(idle) > 0 {
			k.Switchover = time.Duration(median(idle) * float64(time.Second))
		}
	} else {
		k.Switchover = time.Duration(median(pauses) * float64(time.Second))
	}
	return k
}

// pauseOf is a sample's pause as the guest's clients saw it where that was
// measured, else QEMU's downtime.
func pauseOf(s Sample) time.Duration {
	if s.ServicePause > 0 {
		return s.ServicePause
	}
	return s.Downtime
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
