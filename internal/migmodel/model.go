// Package migmodel predicts a live migration before it starts: how long it
// takes, how long the guest pauses and how many bytes cross the link, for
// each strategy, from the guest's memory, dirty rate and zero pages and the
// link's bandwidth and round-trip time. The model follows what QEMU does
// (migration/ram.c): it sends every page once, then in rounds what the
// guest dirtied meanwhile, and switches over when what is left fits the
// downtime limit at the measured rate; auto-converge throttles the guest's
// CPUs in steps while it dirties faster than the link carries; post-copy
// switches after the first pass and fetches the rest with the guest running
// on the target; multifd spreads pages over parallel streams and may
// compress them. It simulates the migration in small steps of time, so that
// these interact as they do in QEMU (a throttle that rises every two
// seconds, a downtime limit that Ferry raises from the third round).
// Calibration (calibrate.go) fits its per-strategy constants to the
// cluster's own finished migrations.
package migmodel

import (
	"fmt"
	"math"
	"time"
)

// Strategies the model knows; Compress is multifd with compressed pages.
const (
	Precopy      = "precopy"
	AutoConverge = "auto-converge"
	Postcopy     = "postcopy"
	Multifd      = "multifd"
	Compress     = "compress"
)

// All is every strategy, in the order ties are broken (simplest first).
var All = []string{Precopy, Multifd, Compress, AutoConverge, Postcopy}

const page = 4096

// Guest is what is known of the guest to move.
type Guest struct {
	MemoryBytes int64 `json:"memory_bytes"`
	// DirtyRate is how fast the guest writes pages it had not written since
	// the last look, bytes per second (QMP calc-dirty-rate).
	DirtyRate float64 `json:"dirty_rate"`
	// WorkingSet bounds what the guest can dirty in one round, bytes (0:
	// its whole memory).
	WorkingSet int64 `json:"working_set,omitempty"`
	// ZeroShare is the share of its pages that hold only zeros (sent as a
	// few bytes each).
	ZeroShare float64 `json:"zero_share"`
	// CompressRatio is what its other pages shrink to when compressed,
	// as measured (0: unknown; the calibration's figure is used).
	CompressRatio float64 `json:"compress_ratio,omitempty"`
	// DirtyCompressRatio is the same of the pages it writes over again,
	// what the rounds after the first send (0: CompressRatio's).
	DirtyCompressRatio float64 `json:"dirty_compress_ratio,omitempty"`
}

// Link is the path between the two hosts.
type Link struct {
	Bandwidth float64       `json:"bandwidth"` // bytes per second
	RTT       time.Duration `json:"rtt"`
}

// Limits are what the migration may do.
type Limits struct {
	// DowntimeStart is the first downtime limit; Ferry doubles it from the
	// third round on up to DowntimeMax.
	DowntimeStart, DowntimeMax time.Duration
	// MaxBandwidth caps the stream, bytes per second (0: the link's).
	MaxBandwidth float64
	// Timeout gives up a simulation that has not finished (0: 10 minutes).
	Timeout time.Duration
	// MaxThrottle caps auto-converge's CPU throttle, percent (0: 99).
	MaxThrottle int
	// Allowed is the longest pause the policy allows the guest (0:
	// DowntimeMax): a strategy whose pause would be longer does not fit.
	Allowed time.Duration
}

// Prediction is the model's answer for one strategy.
type Prediction struct {
	Strategy string `json:"strategy"`
	// Converges: the migration finishes within the downtime limit and the
	// timeout. When false, the figures are where the simulation stopped.
	Converges bool          `json:"converges"`
	Total     time.Duration `json:"total"`
	Downtime  time.Duration `json:"downtime"`
	Bytes     int64         `json:"bytes"`
	Rounds    int           `json:"rounds"`
	// Throttle is the CPU throttle auto-converge reached, percent.
	Throttle int `json:"throttle,omitempty"`
	// PostcopyFor is how long the guest runs on the target while pages
	// still come from the source (each missing page costs it a round trip).
	PostcopyFor time.Duration `json:"postcopy_for,omitempty"`
	Why         string        `json:"why"`
}

// Predict simulates one strategy.
func Predict(strategy string, g Guest, l Link, lim Limits, cal Calibration) Prediction {
	c := cal.For(strategy)
	s := &sim{strategy: strategy, g: g, lim: lim, c: c}
	s.init(l)
	return s.run()
}

// PredictAll simulates every strategy in strategies (All when empty).
func PredictAll(strategies []string, g Guest, l Link, lim Limits, cal Calibration) []Prediction {
	if len(strategies) == 0 {
		strategies = All
	}
	out := make([]Prediction, 0, len(strategies))
	for _, s := range strategies {
		out = append(out, Predict(s, g, l, lim, cal))
	}
	return out
}

// sim is one simulated migration.
type sim struct {
	strategy string
	g        Guest
	lim      Limits
	c        Constants

	bw                      float64 // the link's bytes/s, capped by the limits
	rate                    float64 // bytes/s the stream carries (payload before compression)
	wire                    float64 // wire bytes per payload byte of a non-zero page
	perZero                 float64 // wire bytes per zero page
	workSet                 float64
	t                       float64 // seconds since the migration began
	bytes                   float64
	throttle                int
	highCount               int
	lastCheck               float64
	periodXfer, periodDirty float64
}

func (s *sim) init(l Link) {
	bw := l.Bandwidth
	if s.lim.MaxBandwidth > 0 {
		bw = math.Min(bw, s.lim.MaxBandwidth)
	}
	s.bw = bw
	s.rate = bw * s.c.Efficiency
	s.wire, s.perZero = 1+16.0/page, 9
	if s.strategy == Compress {
		// Pages shrink on the wire: the first pass's as the guest's pages
		// do, the later rounds' as the pages it writes do.
		s.compress(s.g.CompressRatio)
	}
	if s.lim.Timeout <= 0 {
		s.lim.Timeout = 10 * time.Minute
	}
	if s.lim.MaxThrottle <= 0 {
		s.lim.MaxThrottle = 99
	}
	s.workSet = float64(s.g.WorkingSet)
	if s.workSet <= 0 || s.workSet > float64(s.g.MemoryBytes) {
		s.workSet = float64(s.g.MemoryBytes)
	}
	s.t = s.c.Setup.Seconds()
}

// compress sets the wire's bytes per page byte to ratio (0: the
// calibration's) and the rate to match; the compressors' own speed may
// bound it instead of the link.
func (s *sim) compress(ratio float64) {
	s.wire = s.c.CompressRatio
	if ratio > 0 {
		s.wire = math.Max(ratio, 0.01)
	}
	s.rate = s.bw * s.c.Efficiency / s.wire
	if s.c.CompressSpeed > 0 {
		s.rate = math.Min(s.rate, s.c.CompressSpeed)
	}
}

// dirtyRate is the guest's rate under the current throttle.
func (s *sim) dirtyRate() float64 { return s.g.DirtyRate * float64(100-s.throttle) / 100 }

func (s *sim) run() Prediction {
	p := Prediction{Strategy: s.strategy}
	if s.rate <= 0 {
		p.Why = "no bandwidth to the target is known"
		return p
	}
	mem := float64(s.g.MemoryBytes)
	zero := mem * s.g.ZeroShare
	// The first pass: every page once (zero pages as a few bytes each).
	first := (mem - zero) + zero/page*s.perZero/s.wire
	limit := math.Min(s.lim.DowntimeStart.Seconds(), s.limitCap())
	remaining, dirty := first, 0.0
	rounds := 1 // QEMU's dirty-sync count
	const step = 0.005
	deadline := s.lim.Timeout.Seconds() + s.t
	for s.t < deadline {
		// A round has ended, or what is left fits the limit: QEMU syncs
		// the dirty bitmap (the pages dirtied meanwhile join what is left)
		// and switches over if it still fits.
		if remaining <= 0 || remaining <= s.rate*limit {
			remaining += dirty
			dirty = 0
			if remaining <= s.rate*limit {
				return s.switchover(p, remaining, rounds)
			}
			rounds++
			if s.strategy == Compress && rounds == 2 && s.g.DirtyCompressRatio > 0 {
				s.compress(s.g.DirtyCompressRatio)
			}
			if s.strategy == Postcopy {
				// Ferry starts post-copy at the second sync.
				return s.postcopy(p, remaining)
			}
			limit = s.nextLimit(rounds, limit)
			s.checkThrottle()
		}
		sent := math.Min(remaining, s.rate*step)
		s.send(sent)
		remaining -= sent
		d := math.Min(s.dirtyRate()*step, math.Max(0, s.workSet-dirty))
		dirty += d
		s.periodDirty += d
		s.t += step
	}
	p.Total = time.Duration(s.t * float64(time.Second))
	p.Bytes = int64(s.bytes)
	p.Rounds, p.Throttle = rounds, s.throttle
	p.Why = fmt.Sprintf("does not finish within %s: the guest dirties %s of a link carrying %s",
		s.lim.Timeout, rateStr(s.dirtyRate()), rateStr(s.rate))
	return p
}

func (s *sim) send(payload float64) {
	s.bytes += payload * s.wire
	s.periodXfer += payload * s.wire
}

// nextLimit is Ferry's downtime limit for round r (migrate.NextDowntimeMS:
// doubled from the third round on, up to the maximum).
func (s *sim) nextLimit(r int, cur float64) float64 {
	if r < 3 {
		return cur
	}
	return math.Min(s.limitCap(), math.Max(2*cur, s.lim.DowntimeStart.Seconds()))
}

// limitCap is the largest downtime limit QEMU is given: the operator's
// (QEMU's limit covers only the last pages; the guest's pause adds the
// switchover's own, Constants.Switchover).
func (s *sim) limitCap() float64 {
	return math.Max(0.001, s.lim.DowntimeMax.Seconds())
}

// checkThrottle is auto-converge at a bitmap sync, at most once a second:
// twice in a row dirtying more than half of what was sent raises the
// throttle (20 % first, then 10 % more each time).
func (s *sim) checkThrottle() {
	if s.strategy != AutoConverge || s.t-s.lastCheck < 1 {
		return
	}
	high := s.periodDirty > s.periodXfer*0.5
	s.lastCheck, s.periodDirty, s.periodXfer = s.t, 0, 0
	if !high {
		return
	}
	if s.highCount++; s.highCount < 2 {
		return
	}
	s.highCount = 0
	if s.throttle == 0 {
		s.throttle = 20
	} else {
		s.throttle = min(s.throttle+10, s.lim.MaxThrottle)
	}
}

func (s *sim) switchover(p Prediction, remaining float64, rounds int) Prediction {
	s.send(remaining)
	down := remaining/s.rate + s.c.Switchover.Seconds()
	s.t += down
	p.Converges = true
	p.Total = time.Duration(s.t * float64(time.Second))
	p.Downtime = time.Duration(down * float64(time.Second))
	p.Bytes, p.Rounds, p.Throttle = int64(s.bytes), rounds, s.throttle
	p.Why = fmt.Sprintf("%d round(s) at %s; the guest dirties %s", rounds, rateStr(s.rate), rateStr(s.dirtyRate()))
	if s.throttle > 0 {
		p.Why += fmt.Sprintf(", throttled to %d %% of its CPU", 100-s.throttle)
	}
	return p
}

// postcopy: the guest stops only to move its device state, then runs on
// the target while what it dirtied during the first pass follows. Its
// pause, as its clients see it, adds the stall of its first moments
// there, when the pages it writes must first come from the source
// (Constants.PostcopyStall, for a guest that writes at all). The stall
// overlaps the pages arriving: the move's total time ends when the last
// of them has, stall or not.
func (s *sim) postcopy(p Prediction, rest float64) Prediction {
	down := s.c.Switchover.Seconds()
	if s.g.DirtyRate >= busyDirtyRate {
		down += s.c.PostcopyStall
	}
	s.send(rest)
	pc := rest / s.rate
	s.t += s.c.Switchover.Seconds() + pc
	p.Converges = true
	p.Total = time.Duration(s.t * float64(time.Second))
	p.Downtime = time.Duration(down * float64(time.Second))
	p.PostcopyFor = time.Duration(pc * float64(time.Second))
	p.Bytes, p.Rounds = int64(s.bytes), 1
	p.Why = fmt.Sprintf("one pass at %s, then %s of dirtied pages with the guest on the target", rateStr(s.rate), sizeStr(rest))
	return p
}

// busyDirtyRate is the dirty rate from which a guest stalls after a
// post-copy switchover (bytes per second).
const busyDirtyRate = 1 << 20

func rateStr(bps float64) string { return sizeStr(bps) + "/s" }

func sizeStr(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.0f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}
