package agent

import (
	"context"
	"math"
	"runtime"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/predict"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// DefaultLoadEvery is how often the agent samples its guests' CPU use.
const DefaultLoadEvery = 10 * time.Second

// Defaults of the load forecast: a daily season, judged half an hour ahead.
const (
	DefaultLoadPeriod  = 24 * time.Hour
	DefaultLoadHorizon = 30 * time.Minute
)

// stepsPerPeriod is how many buckets a season is cut into, and
// periodsKept how many seasons of buckets are kept (two are needed to
// see a season, three to trust it).
const (
	stepsPerPeriod = 48
	periodsKept    = 3
)

// loadSampler keeps the history of the guests' CPU use on this host and
// forecasts it.
type loadSampler struct {
	step     time.Duration
	horizon  time.Duration
	capacity float64
	host     *telemetry.Buckets
	guests   map[string]*guestLoad
}

// guestLoad is one guest's CPU bookkeeping.
type guestLoad struct {
	pid     int
	cpuTime time.Duration
	at      time.Time
	now     float64 // CPUs over the last sampling
	hist    *telemetry.Buckets
}

func (a *Agent) newLoadSampler() *loadSampler {
	period, horizon := a.cfg.LoadPeriod, a.cfg.LoadHorizon
	if period <= 0 {
		period = DefaultLoadPeriod
	}
	if horizon <= 0 {
		horizon = DefaultLoadHorizon
	}
	capacity := a.cfg.CapacityCPUs
	if capacity <= 0 {
		capacity = float64(a.cfg.CPUs)
	}
	if capacity <= 0 {
		capacity = float64(runtime.NumCPU())
	}
	step := period / stepsPerPeriod
	return &loadSampler{step: step, horizon: horizon, capacity: capacity,
		host: telemetry.NewBuckets(step, periodsKept*stepsPerPeriod), guests: map[string]*guestLoad{}}
}

// loadLoop samples the guests' CPU use every LoadEvery and publishes the
// host's load and its forecast with the heartbeat.
func (a *Agent) loadLoop(ctx context.Context) {
	every := a.cfg.LoadEvery
	if every == 0 {
		every = DefaultLoadEvery
	}
	if every < 0 {
		return
	}
	s := a.newLoadSampler()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l := s.sample(a, time.Now())
		a.mu.Lock()
		a.load = l
		a.mu.Unlock()
	}
}

// sample reads every local guest's CPU time, records the rates, and
// returns the host's load with its forecast.
func (s *loadSampler) sample(a *Agent, now time.Time) *api.HostLoad {
	seen := map[string]bool{}
	var total float64
	for _, in := range a.instances() {
		in.mu.Lock()
		name, pid := in.name, in.rec.PID
		in.mu.Unlock()
		used, err := a.rt.CPUTime(pid)
		if err != nil {
			continue
		}
		seen[name] = true
		g := s.guests[name]
		if g == nil {
			g = &guestLoad{hist: telemetry.NewBuckets(s.step, periodsKept*stepsPerPeriod)}
			s.guests[name] = g
		}
		if g.pid == pid && now.After(g.at) {
			g.now = math.Max(0, (used-g.cpuTime).Seconds()/now.Sub(g.at).Seconds())
			g.hist.Add(now, g.now)
		}
		// A new QEMU (the guest restarted or arrived) starts a new count.
		g.pid, g.cpuTime, g.at = pid, used, now
		total += g.now
	}
	for name := range s.guests {
		if !seen[name] {
			delete(s.guests, name)
		}
	}
	s.host.Add(now, total)
	l := &api.HostLoad{Capacity: s.capacity, CPU: total, Horizon: s.horizon.String(), Sampled: now.UTC(),
		Guests: map[string]api.GuestLoad{}}
	l.Peak, l.PeakInS, l.Method, l.Forecast = s.forecast(s.host.Values(), total)
	l.StepS = s.step.Seconds()
	for name, g := range s.guests {
		peak, _, _, _ := s.forecast(g.hist.Values(), g.now)
		l.Guests[name] = api.GuestLoad{CPU: g.now, Peak: peak}
	}
	return l
}

// forecast returns the highest of now and the values forecast within the
// horizon, when it comes, the method, and the forecast; with fewer than
// three buckets of history there is no forecast and the peak is now.
func (s *loadSampler) forecast(hist []float64, now float64) (peak, inS float64, method string, fc []float64) {
	steps := max(1, int(math.Ceil(float64(s.horizon)/float64(s.step))))
	fc, seasonal, err := predict.HoltWinters{Period: stepsPerPeriod}.ForecastSeason(hist, steps)
	if err != nil {
		return now, 0, "none", nil
	}
	method = "holt"
	if seasonal {
		method = "holt-winters"
	}
	peak = now
	for i, v := range fc {
		if v > peak {
			peak, inS = v, float64(i+1)*s.step.Seconds()
		}
	}
	return peak, inS, method, fc
}
