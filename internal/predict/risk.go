// Package predict forecasts what is about to happen to a host: the
// probability that it fails within a horizon, from the trends of its health
// signals.
//
// The risk model is deliberately simple and explainable. For each signal it
// fits a straight line to the recent history (the rate of a counter, the
// level of a gauge); only a rise that is statistically significant (the
// slope's t-statistic over a threshold) is extrapolated to the horizon, so a
// flat signal however noisy is judged by its level. The probability that the
// signal is past its failure limit at the horizon is read from a normal
// distribution around the projection whose spread is the line's prediction
// error. Alarms (uncorrectable memory errors, a failed SMART
// self-assessment) are failures already and score near certainty. A host's
// probability combines its signals as if independent, and every figure
// keeps the signals that drove it, in words.
package predict

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/health"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// RiskConfig tunes the risk model.
type RiskConfig struct {
	// Horizon is how far ahead the risk is judged (default 30 minutes).
	Horizon time.Duration
	// Window is how much history a trend is fitted to (default four
	// horizons); alarms older than it are forgiven.
	Window time.Duration
	// Significance is the t-statistic a rise must reach to be
	// extrapolated (default 3, about one flat series in 700 by chance).
	Significance float64
	// MinPoints is how many points a trend needs (default 6); with fewer,
	// only the current level counts.
	MinPoints int
	// Limits overrides the failure limits by signal name, by source and
	// last element ("nic/carrier_changes") or by source ("thermal"): a
	// level for gauges, a rate per second for counters.
	Limits map[string]float64
	// TimeScale is for replaying traces compressed in time (a testbed's
	// "day" lasting minutes): counters' limits, rates per second, are
	// multiplied by it, as the traces' rates are. 0 and 1 leave them.
	TimeScale float64
}

// DefaultLimits are the failure limits used when neither the hardware nor
// the configuration states one: levels for gauges, rates per second for
// counters. They are judgements, documented in docs/PREDICTIVE.md, and each
// can be overridden.
var DefaultLimits = map[string]float64{
	"edac":                10.0 / 60, // correctable memory errors: 10 a minute
	"block":               1.0 / 60,  // I/O errors: 1 a minute
	"smart":               1.0 / 60,  // reallocated/pending sectors, media errors: 1 a minute
	"smart/temperature":   70,        // a disk's own sensor, °C
	"nic":                 10,        // receive/transmit errors: 10 a second
	"nic/carrier_changes": 2.0 / 60,  // link flaps: 2 a minute
	"thermal":             95,        // °C when the zone states no critical trip point
	"hwmon":               95,
	"agent/qemu_errors":   2.0 / 60, // QEMU failures: 2 a minute
	"agent/lease_renewal": 2,        // seconds a renewal takes
}

func (c RiskConfig) withDefaults() RiskConfig {
	if c.Horizon <= 0 {
		c.Horizon = 30 * time.Minute
	}
	if c.Window <= 0 {
		c.Window = 4 * c.Horizon
	}
	if c.Significance <= 0 {
		c.Significance = 3
	}
	if c.MinPoints < 3 {
		c.MinPoints = 6
	}
	return c
}

// limit returns the failure limit of a signal: the hardware's own, the
// configuration's, or the default.
func (c RiskConfig) limit(sig string, hw float64) float64 {
	if hw > 0 {
		return hw
	}
	parts := strings.Split(sig, "/")
	keys := []string{sig, parts[0] + "/" + parts[len(parts)-1], parts[0]}
	for _, m := range []map[string]float64{c.Limits, DefaultLimits} {
		for _, k := range keys {
			if v, ok := m[k]; ok {
				return v
			}
		}
	}
	return math.Inf(1)
}

// SignalRisk is one signal's contribution to a host's risk.
type SignalRisk struct {
	Signal      string  `json:"signal"`
	Kind        string  `json:"kind"`
	Probability float64 `json:"probability"`
	// Now is the signal's current level (gauges) or rate per second
	// (counters); Slope its significant rise per second (0 when flat);
	// Projected its expected value at the horizon.
	Now       float64 `json:"now"`
	Slope     float64 `json:"slope"`
	Projected float64 `json:"projected"`
	Limit     float64 `json:"limit"`
	Reason    string  `json:"reason"`
}

// HostRisk is a host's probability of failing within the horizon, with the
// signals that drove it, most probable first.
type HostRisk struct {
	Probability float64       `json:"probability"`
	Horizon     time.Duration `json:"horizon"`
	Signals     []SignalRisk  `json:"signals,omitempty"`
}

// Signal is one signal's history as the risk model reads it.
type Signal struct {
	Name   string
	Kind   health.Kind
	Unit   string
	Limit  float64 // the hardware's own limit, 0 for none
	Points []telemetry.Point
}

// maxProbability keeps a figure honest: no trend is a certainty.
const maxProbability = 0.99

// reportFloor is the smallest contribution named among a host's reasons.
const reportFloor = 0.01

// Assess returns a host's risk at now from its signals.
func Assess(cfg RiskConfig, now time.Time, signals []Signal) HostRisk {
	cfg = cfg.withDefaults()
	hr := HostRisk{Horizon: cfg.Horizon}
	survive := 1.0
	for _, s := range signals {
		r := assessSignal(cfg, now, s)
		survive *= 1 - r.Probability
		if r.Probability >= reportFloor {
			hr.Signals = append(hr.Signals, r)
		}
	}
	hr.Probability = 1 - survive
	sort.SliceStable(hr.Signals, func(i, j int) bool { return hr.Signals[i].Probability > hr.Signals[j].Probability })
	return hr
}

// assessSignal scores one signal.
func assessSignal(cfg RiskConfig, now time.Time, s Signal) SignalRisk {
	r := SignalRisk{Signal: s.Name, Kind: s.Kind.String(), Limit: cfg.limit(s.Name, s.Limit)}
	pts := within(s.Points, now.Add(-cfg.Window))
	if len(pts) == 0 {
		return r
	}
	switch s.Kind {
	case health.Alarm:
		r.Now = pts[len(pts)-1].V
		if rise := r.Now - pts[0].V; rise > 0 {
			r.Probability = maxProbability
			r.Reason = fmt.Sprintf("%s: %g new in the last %s, a failure already", s.Name, rise, roundDur(now.Sub(pts[0].T)))
		}
		return r
	case health.Counter:
		if cfg.TimeScale > 0 {
			r.Limit *= cfg.TimeScale
		}
	case health.Fault:
		r.Now = pts[len(pts)-1].V
		if r.Now != 0 {
			r.Probability = maxProbability
			r.Reason = fmt.Sprintf("%s: reported (%g), a failure already", s.Name, r.Now)
		}
		return r
	}
	unit, scale := s.Unit, 1.0
	if s.Kind == health.Counter {
		unit, scale = s.Unit+"/min", 60
		if !judgeCounter(cfg, now, pts, &r) {
			return r
		}
	} else {
		judgeGauge(cfg, now, pts, &r)
	}
	if r.Probability >= reportFloor {
		trend := "flat"
		if r.Slope > 0 {
			trend = fmt.Sprintf("rising %.3g %s a minute", r.Slope*scale*60, unit)
		}
		r.Reason = fmt.Sprintf("%s at %.3g %s, %s: %.3g %s expected in %s (limit %.3g %s)",
			s.Name, r.Now*scale, unit, trend, r.Projected*scale, unit, roundDur(cfg.Horizon), r.Limit*scale, unit)
	}
	return r
}

// trendable tells whether a history is long enough to extrapolate to the
// horizon: enough points, and spanning at least half the horizon (a line
// is never stretched to more than twice its own length ahead).
func trendable(cfg RiskConfig, n int, span time.Duration) bool {
	return n >= cfg.MinPoints && 2*span >= cfg.Horizon
}

// judgeGauge scores a level: its significant rise extrapolated, or its
// recent level and noise.
func judgeGauge(cfg RiskConfig, now time.Time, pts []telemetry.Point, r *SignalRisk) {
	r.Now = pts[len(pts)-1].V
	r.Projected = r.Now
	var sigma float64
	if tf, ok := bestTrend(cfg, now, pts, false); ok {
		r.Slope, r.Projected, sigma = tf.slope, tf.projected, tf.sigma
	} else if trendable(cfg, len(pts), pts[len(pts)-1].T.Sub(pts[0].T)) {
		r.Projected, sigma = recentLevel(pts)
	}
	r.Probability = exceedance(r.Projected, sigma, r.Limit)
}

// trendSpans are the stretches of recent history a trend is fitted over,
// in horizons: the last two, and the last one alone (a rise that began
// lately, which a longer fit would flatten).
var trendSpans = []time.Duration{2, 1}

// trendFit is a believed rise: its slope a second, the value it projects
// at the horizon, and the projection's standard error.
type trendFit struct{ slope, projected, sigma float64 }

// bestTrend fits a line to each recent stretch (a counter's rates over
// sub-stretches holding several events each) and returns, among the
// significant rises, the one that projects highest.
func bestTrend(cfg RiskConfig, now time.Time, pts []telemetry.Point, counter bool) (trendFit, bool) {
	var best trendFit
	found := false
	h := cfg.Horizon.Seconds()
	for _, k := range trendSpans {
		sub := within(pts, now.Add(-k*cfg.Horizon))
		if len(sub) < 2 {
			continue
		}
		series := sub
		if counter {
			series = rates(sub, min(rateBuckets, int(increase(sub)/eventsPerBucket)))
		}
		if !trendable(cfg, len(series), sub[len(sub)-1].T.Sub(sub[0].T)) {
			continue
		}
		f := fitLine(now, series)
		if f.slope <= 0 || f.t < cfg.Significance {
			continue
		}
		if c := (trendFit{f.slope, f.at(h), f.predictionError(h)}); !found || c.projected > best.projected {
			best, found = c, true
		}
	}
	return best, found
}

// eventsPerBucket is how many events a counter's stretch should hold on
// average before its rate counts as a point of a trend: with fewer, a
// Poisson count's noise (±45 % at five) swamps any trend.
const eventsPerBucket = 5

// quietEvents is how many events a counter at its limit would bring over
// the time a quiet counter is judged on: with no event seen, its rate's
// uncertainty (one event over the time) then puts the limit three
// standard errors away.
const quietEvents = 3

// judgeCounter scores a counter by its rate: a significant rise of the
// rate over stretches of the history extrapolated, or otherwise its rate
// over the last third of the history, with a counting process's (Poisson)
// uncertainty. It returns false when the history is too short to judge:
// under half the horizon.
func judgeCounter(cfg RiskConfig, now time.Time, pts []telemetry.Point, r *SignalRisk) bool {
	if len(pts) < 2 {
		return false
	}
	span := pts[len(pts)-1].T.Sub(pts[0].T)
	if 2*span < cfg.Horizon {
		// Too short a history to tell a rate from chance (no error in
		// ten seconds says little about a limit of one a minute).
		return false
	}
	// The recent rate, and its uncertainty: over the last third of the
	// history, but at least as long as the limit takes to bring
	// quietEvents.
	recent := span / 3
	if q := quietEvents / r.Limit; q > recent.Seconds() {
		recent = time.Duration(math.Min(q, span.Seconds()) * float64(time.Second))
	}
	from := within(pts, pts[len(pts)-1].T.Add(-recent))
	if len(from) < 2 {
		from = pts[len(pts)-2:]
	}
	n, dt := increase(from), from[len(from)-1].T.Sub(from[0].T).Seconds()
	if dt <= 0 || (n == 0 && r.Limit*dt < quietEvents) {
		// Silence over less time than the limit needs to bring a few
		// events is no evidence either way: a host whose QEMU has not
		// crashed in the ten seconds since it started is not at risk.
		return false
	}
	r.Now, r.Projected = n/dt, n/dt
	sigma := math.Sqrt(math.Max(n, 1)) / dt
	if tf, ok := countTrend(cfg, now, pts); ok && tf.projected > r.Projected {
		r.Slope, r.Projected, sigma = tf.slope, tf.projected, math.Max(sigma, tf.sigma)
	}
	r.Probability = exceedance(r.Projected, sigma, r.Limit)
	return true
}

// countTrend tests a counter's events for a rising rate and projects it.
// The events (each sample's increase, placed at its time) are tested with
// the Laplace trend test, the reliability engineer's test for failures
// coming ever more often: under a steady rate their mean time sits in the
// middle of the window, and the statistic counts how many standard errors
// later it sits. A significant rise is projected with the power-law
// process (Crow-AMSAA), whose rate λ(t) ∝ t^(β-1) is fitted by maximum
// likelihood: β̂ = n / Σ ln(T/tᵢ). One burst is not a trend: the events
// must come in at least MinPoints samples, and no sample counts for more
// than three times the mean of the samples with events.
func countTrend(cfg RiskConfig, now time.Time, pts []telemetry.Point) (trendFit, bool) {
	// The whole window: sparse events need all of it to show a trend.
	pts = within(pts, now.Add(-cfg.Window))
	if len(pts) < 2 || 2*pts[len(pts)-1].T.Sub(pts[0].T) < cfg.Horizon {
		return trendFit{}, false
	}
	type ev struct{ t, c float64 }
	var evs []ev
	var total float64
	for i := 1; i < len(pts); i++ {
		if d := pts[i].V - pts[i-1].V; d > 0 {
			evs = append(evs, ev{pts[i].T.Sub(pts[0].T).Seconds(), d})
			total += d
		}
	}
	if len(evs) < cfg.MinPoints {
		return trendFit{}, false
	}
	capAt := 3 * total / float64(len(evs))
	var n, sumT, sumLog float64
	T := pts[len(pts)-1].T.Sub(pts[0].T).Seconds()
	for _, e := range evs {
		c := math.Min(e.c, capAt)
		n += c
		sumT += c * e.t
		sumLog += c * math.Log(T/e.t)
	}
	u := (sumT/n - T/2) / (T * math.Sqrt(1/(12*n)))
	if u < cfg.Significance || sumLog <= 0 {
		return trendFit{}, false
	}
	beta := n / sumLog
	rateNow := beta * n / T
	growth := (T + cfg.Horizon.Seconds()) / T
	proj := rateNow * math.Pow(growth, beta-1)
	// The projection's error, from β̂'s (about β̂/√n) through the power.
	sigma := proj * math.Sqrt((1+math.Pow(beta*math.Log(growth), 2))/n)
	return trendFit{slope: (proj - rateNow) / cfg.Horizon.Seconds(), projected: proj, sigma: sigma}, true
}

// increase is how much a counter grew over the points, resets aside.
func increase(pts []telemetry.Point) float64 {
	var n float64
	for i := 1; i < len(pts); i++ {
		if d := pts[i].V - pts[i-1].V; d > 0 {
			n += d
		}
	}
	return n
}

// within returns the points at or after t.
func within(pts []telemetry.Point, t time.Time) []telemetry.Point {
	i := sort.Search(len(pts), func(i int) bool { return !pts[i].T.Before(t) })
	return pts[i:]
}

// rateBuckets is the most stretches a counter's history is cut into to see
// a trend in its rate. Sparse counters (a flap a minute sampled every few
// seconds) are all zeros and ones sample by sample; over stretches holding
// several events each, their rate, and its trend, can be seen.
const rateBuckets = 12

// rates turns a counter's values into rates per second over up to b
// consecutive stretches of the history, each placed at its last sample. A
// counter that went down was reset (a driver reloaded): the interval
// across the reset counts no events.
func rates(pts []telemetry.Point, b int) []telemetry.Point {
	n := len(pts) - 1
	if n < 1 || b < 1 {
		return nil
	}
	b = min(b, n)
	out := make([]telemetry.Point, 0, b)
	for k := 0; k < b; k++ {
		from, to := k*n/b, (k+1)*n/b
		var dv float64
		for i := from + 1; i <= to; i++ {
			if d := pts[i].V - pts[i-1].V; d > 0 {
				dv += d
			}
		}
		if dt := pts[to].T.Sub(pts[from].T).Seconds(); dt > 0 {
			out = append(out, telemetry.Point{T: pts[to].T, V: dv / dt})
		}
	}
	return out
}

// line is a least-squares fit y = a + slope·x over x, seconds from now.
type line struct {
	a, slope, t float64
	n           int
	meanX, sxx  float64
	s2          float64 // residual variance
}

// fitLine fits a line to the points, with x measured in seconds from now.
func fitLine(now time.Time, pts []telemetry.Point) line {
	n := float64(len(pts))
	var sx, sy float64
	for _, p := range pts {
		sx += p.T.Sub(now).Seconds()
		sy += p.V
	}
	mx, my := sx/n, sy/n
	var sxx, sxy float64
	for _, p := range pts {
		dx := p.T.Sub(now).Seconds() - mx
		sxx += dx * dx
		sxy += dx * (p.V - my)
	}
	l := line{n: len(pts), meanX: mx, sxx: sxx}
	if sxx == 0 {
		l.a = my
		return l
	}
	l.slope = sxy / sxx
	l.a = my - l.slope*mx
	var sse float64
	for _, p := range pts {
		e := p.V - l.at(p.T.Sub(now).Seconds())
		sse += e * e
	}
	if len(pts) > 2 {
		l.s2 = sse / (n - 2)
	}
	if se := math.Sqrt(l.s2 / sxx); se > 0 {
		l.t = l.slope / se
	} else if l.slope > 0 {
		l.t = math.Inf(1) // a perfectly straight rise
	}
	return l
}

func (l line) at(x float64) float64 { return l.a + l.slope*x }

// predictionError is the standard error of a new observation at x.
func (l line) predictionError(x float64) float64 {
	if l.sxx == 0 {
		return math.Sqrt(l.s2)
	}
	return math.Sqrt(l.s2 * (1 + 1/float64(l.n) + (x-l.meanX)*(x-l.meanX)/l.sxx))
}

// recentLevel is the mean of the last third of the points (at least three)
// and the spread of all of them around their mean: a flat signal's
// expected level and its noise.
func recentLevel(pts []telemetry.Point) (level, sigma float64) {
	k := len(pts) / 3
	if k < 3 {
		k = min(3, len(pts))
	}
	for _, p := range pts[len(pts)-k:] {
		level += p.V
	}
	level /= float64(k)
	var mean, ss float64
	for _, p := range pts {
		mean += p.V
	}
	mean /= float64(len(pts))
	for _, p := range pts {
		ss += (p.V - mean) * (p.V - mean)
	}
	if len(pts) > 1 {
		sigma = math.Sqrt(ss / float64(len(pts)-1))
	}
	return level, sigma
}

// exceedance is the probability that a normal value of the given mean and
// spread is at or above limit, capped below certainty.
func exceedance(mean, sigma, limit float64) float64 {
	if math.IsInf(limit, 1) {
		return 0
	}
	var p float64
	if sigma <= 0 {
		if mean >= limit {
			p = 1
		}
	} else {
		p = 0.5 * math.Erfc((limit-mean)/(sigma*math.Sqrt2))
	}
	return math.Min(p, maxProbability)
}

// roundDur prints a duration to the second.
func roundDur(d time.Duration) time.Duration { return d.Round(time.Second) }
