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
	var total float64
	for _, in := range a.instances() {
		in.mu.Lock()
		name, pid, uuid := in.name, in.rec.PID, in.rec.UUID
		// While it migrates, its QEMU's CPU is the copy's as much as the
		// guest's: the host counts it, the guest's history does not.
		migrating := in.srcTunnel != nil || in.tgtTunnel != nil
		in.mu.Unlock()
		used, err := a.rt.CPUTime(pid)
		if err != nil {
			continue
		}
		seen[name] = true
		g := s.guests[name]
		if g == nil || g.uuid != uuid {
			g = &guestLoad{uuid: uuid, hist: s.restore(ctx, a, name, uuid)}
			s.guests[name] = g
		}
		if g.pid == pid && now.After(g.at) {
			g.now = math.Max(0, (used-g.cpuTime).Seconds()/now.Sub(g.at).Seconds())
			if !migrating {
				g.hist.Add(now, g.now)
			}
		}
		// A new QEMU (the guest restarted or arrived) starts a new count.
		g.pid, g.cpuTime, g.at = pid, used, now
		total += g.now
		s.save(ctx, a, name, g)
	}
	for name := range s.guests {
		if !seen[name] {
			delete(s.guests, name)
		}
	}
	l := &api.HostLoad{Capacity: s.capacity, CPU: total, Horizon: s.horizon.String(), Sampled: now.UTC(),
		Guests: map[string]api.GuestLoad{}, StepS: s.step.Seconds()}
	var sum []float64
	seasonal, forecast := 0, 0
	for name, g := range s.guests {
		peak, _, method, fc := s.forecast(g.hist.Values(), g.now)
		l.Guests[name] = api.GuestLoad{CPU: g.now, Peak: peak}
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
		l.Method, l.Peak = "none", total
		return l
	case seasonal == len(s.guests):
		l.Method = "holt-winters"
	default:
		l.Method = "holt"
	}
	l.Forecast, l.Peak = sum, total
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
// came from, or this one before a restart), or a new one.
func (s *loadSampler) restore(ctx context.Context, a *Agent, name, uuid string) *telemetry.Buckets {
	capacity := periodsKept * stepsPerPeriod
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

// save writes a guest's history to the store when a bucket has closed
// since it was last written.
func (s *loadSampler) save(ctx context.Context, a *Agent, name string, g *guestLoad) {
	st := g.hist.State()
	if a.st == nil || !st.End.After(g.saved) || len(st.Values) == 0 {
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
