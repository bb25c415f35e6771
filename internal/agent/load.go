package agent

import (
	"context"
	"math"
	"runtime"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/predict"
	"github.com/ferryvm/ferry/internal/store"
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
	guests   map[string]*guestLoad
}

// guestLoad is one guest's CPU bookkeeping.
type guestLoad struct {
	uuid    string
	saved   time.Time // the end of the history last written to the store
	fetched time.Time // the bucket its history was last read from Prometheus in
	pid     int
	cpuTime time.Duration
	at      time.Time
	now     float64 // CPUs over the last sampling
	waited  time.Duration
	waiting float64 // CPUs' worth of time it waited for over the last sampling
	// healthMS is the median time its last health checks took.
	healthMS float64
	hist     *telemetry.Buckets
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
	return &loadSampler{step: step, horizon: horizon, capacity: capacity, guests: map[string]*guestLoad{}}
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
		l := s.sample(ctx, a, time.Now())
		a.mu.Lock()
		a.load = l
		a.mu.Unlock()
	}
}

// sample reads every local guest's CPU time, records the rates, and
// returns the host's load with its forecast: the sum of its guests'
// forecasts, each from the guest's own history (which follows the guest
// from host to host through the store), so that a host's forecast
// changes the moment a guest arrives or leaves.
func (s *loadSampler) sample(ctx context.Context, a *Agent, now time.Time) *api.HostLoad {
	seen := map[string]bool{}
	for _, in := range a.instances() {
		if name, ok := s.sampleGuest(ctx, a, in, now); ok {
			seen[name] = true
		}
	}
	for name := range s.guests {
		if !seen[name] {
			delete(s.guests, name)
		}
	}
	return s.report(a, now)
}

// sampleGuest reads one guest's CPU time and wait, and records its use in
// its history; it returns the guest's name, and false when its QEMU could
// not be read.
func (s *loadSampler) sampleGuest(ctx context.Context, a *Agent, in *instance, now time.Time) (string, bool) {
	in.mu.Lock()
	name, pid, uuid := in.name, in.rec.PID, in.rec.UUID
	// While it migrates, its QEMU's CPU is the copy's as much as the
	// guest's: the host counts it, the guest's history does not.
	migrating := in.srcTunnel != nil || in.tgtTunnel != nil
	healthMS := in.healthMedianMS()
	in.mu.Unlock()
	used, err := a.rt.CPUTime(pid)
	if err != nil {
		return name, false
	}
	waited, werr := a.rt.CPUWait(pid)
	g := s.guests[name]
	if g == nil || g.uuid != uuid {
		g = &guestLoad{uuid: uuid, hist: s.restore(ctx, a, name, uuid, now)}
		s.guests[name] = g
	} else if a.cfg.LoadSource != nil && now.Truncate(s.step).After(g.fetched) {
		// Kept by Prometheus: read again once a bucket has closed (and
		// kept as it was while Prometheus does not answer).
		if h, err := s.fetch(ctx, a, name, now); err == nil {
			g.hist = h
		}
	}
	if a.cfg.LoadSource != nil {
		g.fetched = now.Truncate(s.step)
	}
	if werr != nil {
		waited = g.waited // unknown this time: no wait counted
	}
	if g.pid == pid && now.After(g.at) {
		secs := now.Sub(g.at).Seconds()
		g.now = math.Max(0, (used-g.cpuTime).Seconds()/secs)
		g.waiting = math.Max(0, (waited-g.waited).Seconds()/secs)
		if !migrating {
			g.hist.Add(now, g.now)
		}
	}
	// A new QEMU (the guest restarted or arrived) starts a new count.
	g.pid, g.cpuTime, g.waited, g.at, g.healthMS = pid, used, waited, now, healthMS
	s.save(ctx, a, name, g)
	return name, true
}

// report is the host's load: its guests' use, wait and forecasts summed.
func (s *loadSampler) report(a *Agent, now time.Time) *api.HostLoad {
	l := &api.HostLoad{Capacity: s.capacity, Horizon: s.horizon.String(), Sampled: now.UTC(),
		Guests: map[string]api.GuestLoad{}, StepS: s.step.Seconds(), HistorySource: "store"}
	if a.cfg.LoadSource != nil {
		l.HistorySource = a.cfg.LoadSource.String()
	}
	var sum []float64
	seasonal, forecast := 0, 0
	for name, g := range s.guests {
		hist := g.hist.Values()
		peak, _, method, fc := s.forecast(hist, g.now)
		l.Guests[name] = api.GuestLoad{CPU: g.now, Peak: peak, History: len(hist), Waiting: g.waiting, HealthMS: g.healthMS}
		l.CPU += g.now
		l.Waiting += g.waiting
		if fc == nil {
			fc = []float64{g.now} // no forecast yet: as it is now
		} else {
			forecast++
		}
		if method == "holt-winters" {
			seasonal++
		}
		sum = addForecast(sum, fc)
	}
	switch {
	case forecast == 0:
		l.Method, l.Peak = "none", l.CPU
		return l
	case seasonal == len(s.guests):
		l.Method = "holt-winters"
	default:
		l.Method = "holt"
	}
	l.Forecast, l.Peak = sum, l.CPU
	for i, v := range sum {
		if v > l.Peak {
			l.Peak, l.PeakInS = v, float64(i+1)*l.StepS
		}
	}
	return l
}

// addForecast adds forecast fc to sum step by step; a forecast shorter
// than the other (a guest without one, counted as it is now) holds its
// last value.
func addForecast(sum, fc []float64) []float64 {
	n := max(len(sum), len(fc))
	out := make([]float64, n)
	for i := range out {
		out[i] = at(sum, i) + at(fc, i)
	}
	return out
}

// at is v[i], or v's last value past its end (0 for none).
func at(v []float64, i int) float64 {
	if len(v) == 0 {
		return 0
	}
	return v[min(i, len(v)-1)]
}

// restore returns a guest's history as kept in the store (by the host it
// came from, or this one before a restart) or by the Prometheus server the
// agent reads it from, or a new one.
func (s *loadSampler) restore(ctx context.Context, a *Agent, name, uuid string, now time.Time) *telemetry.Buckets {
	capacity := periodsKept * stepsPerPeriod
	if a.cfg.LoadSource != nil {
		if h, err := s.fetch(ctx, a, name, now); err == nil {
			return h
		}
		return telemetry.NewBuckets(s.step, capacity)
	}
	if a.st != nil {
		h, err := a.st.LoadHistory(ctx, name, uuid)
		if err != nil {
			a.log.Debug("reading a guest's load history", "vm", name, "err", err)
		} else if h != nil {
			return telemetry.RestoreBuckets(h.CPU, s.step, capacity)
		}
	}
	return telemetry.NewBuckets(s.step, capacity)
}

// fetch reads a guest's history from the Prometheus server.
func (s *loadSampler) fetch(ctx context.Context, a *Agent, name string, now time.Time) (*telemetry.Buckets, error) {
	capacity := periodsKept * stepsPerPeriod
	st, err := a.cfg.LoadSource.CPU(ctx, name, s.step, now.Add(-time.Duration(capacity)*s.step), now)
	if err != nil {
		a.log.Warn("reading a guest's load history from Prometheus", "vm", name, "err", err)
		return nil, err
	}
	return telemetry.RestoreBuckets(st, s.step, capacity), nil
}

// save writes a guest's history to the store when a bucket has closed
// since it was last written.
func (s *loadSampler) save(ctx context.Context, a *Agent, name string, g *guestLoad) {
	st := g.hist.State()
	if a.st == nil || a.cfg.LoadSource != nil || !st.End.After(g.saved) || len(st.Values) == 0 {
		return
	}
	if err := a.st.PutLoadHistory(ctx, name, &store.LoadHistory{UUID: g.uuid, CPU: st}); err != nil {
		a.log.Debug("keeping a guest's load history", "vm", name, "err", err)
		return
	}
	g.saved = st.End
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
