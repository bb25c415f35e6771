package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/testbed"
)

// The load part of `ferry bench predictive`: guests whose CPU use follows a
// compressed day, on hosts capped at loadHostCPUs each, balanced
// predictively or reactively, and packed back onto their home hosts every
// night (as a power-saving consolidation would), so that every day's peak
// has to be met anew.
const (
	loadDay      = 240 * time.Second // a day, compressed 360-fold
	loadHostCPUs = 0.8
	loadEvery    = 2 * time.Second
	loadHorizon  = 30 * time.Second // 3 hours of the day
	// loadHomeAfter is how long after its peak (in days) a guest that was
	// moved is packed back onto its home host: its own load and its home
	// neighbour's are at their base then.
	loadHomeAfter = 0.3
)

// loadGuest is one guest's part in the load trace: its CPU share is Base,
// plus Peak at the time of day Phase (0 to 1), falling off over a quarter
// of a day on either side.
type loadGuest struct {
	Name        string
	Host        string // its home, where it starts and returns every night
	Base, Peak  float64
	Phase       float64
	ip          string
	latencies   []float64 // ms, in the scored days
	unanswered  int       // in the scored days
	lastShare   float64
	shareErrors int
	nights      int // nights it was packed home on (or found home)
}

// share is the guest's CPU share at time t into the trace.
func (g *loadGuest) share(t time.Duration) float64 {
	day := math.Mod(t.Seconds()/loadDay.Seconds(), 1)
	d := math.Abs(day - g.Phase)
	d = math.Min(d, 1-d) // distance in days, around the clock
	bump := 0.0
	if d < 0.25 {
		bump = 0.5 * (1 + math.Cos(math.Pi*d/0.25))
	}
	return g.Base + g.Peak*bump
}

// loadGuests are the trace: h2's two guests both peak in the afternoon,
// h3's both at night; h4 is empty. An idle guest costs its host about 0.1
// CPU under TCG (its timer ticks and agent), so a pair at its peak wants
// about 0.75 of its host's 0.8 CPUs, past the 80 % threshold for some
// 40 s of each day unless one of them moves away ahead of it; one guest at
// its peak with an idle neighbour stays under it.
func loadGuests() []*loadGuest {
	return []*loadGuest{
		{Name: "la1", Host: "h2", Base: 0.02, Peak: 0.34, Phase: 0.6},
		{Name: "la2", Host: "h2", Base: 0.02, Peak: 0.34, Phase: 0.6},
		{Name: "lb1", Host: "h3", Base: 0.02, Peak: 0.34, Phase: 0.1},
		{Name: "lb2", Host: "h3", Base: 0.02, Peak: 0.34, Phase: 0.1},
	}
}

// loadResult is one mode's figures. Those of the scored days, after the
// warm-up days a daily season needs to be learnt (the forecaster keeps a
// season only with two days of history), are the ones compared; the
// whole run's overloaded time and moves are reported beside them.
type loadResult struct {
	Mode           string   `json:"mode"`
	Days           float64  `json:"days"`
	WarmupDays     float64  `json:"warmup_days"`
	OverloadedS    float64  `json:"overloaded_host_s"`     // scored days, summed over hosts
	OverloadedMax  float64  `json:"overloaded_max_s"`      // the worst host's, scored days
	OverloadedAllS float64  `json:"overloaded_all_host_s"` // the whole run
	Migrations     int      `json:"migrations"`            // balance moves in the scored days
	MigrationsAll  int      `json:"migrations_all"`        // balance moves over the whole run
	Consolidations int      `json:"consolidations"`        // nightly moves home (the trace's, both modes alike)
	LatencyP50     float64  `json:"latency_p50_ms"`        // guests' /health answers, scored days
	LatencyP99     float64  `json:"latency_p99_ms"`        //
	Unanswered     int      `json:"unanswered_requests"`   // within 2 s
	Requests       int      `json:"requests"`
	Moves          []string `json:"moves,omitempty"`
	Error          string   `json:"error,omitempty"`
}

// benchLoadMode runs the load trace for days compressed days in one mode,
// scoring the days after warmup.
func benchLoadMode(ctx context.Context, self, imageDir, mode string, days, warmup float64, say func(string, ...any)) loadResult {
	res := loadResult{Mode: mode, Days: days, WarmupDays: warmup}
	fail := func(err error) loadResult { res.Error = err.Error(); return res }
	args := []string{"--health-every", "0", "--load-every", loadEvery.String(), "--load-period", loadDay.String(),
		"--load-horizon", loadHorizon.String(), "--balance", mode, "--balance-sustain", "6s", "--balance-cooldown", "60s"}
	o := testbed.Options{Name: "fpl", Hosts: 4, Bin: self, ImageDir: imageDir, HostCPUs: loadHostCPUs, HostArgs: map[int][]string{}}
	for i := 0; i < 4; i++ {
		o.HostArgs[i] = args
	}
	b, cl, err := benchBedWith(ctx, o, say)
	if err != nil {
		return fail(err)
	}
	defer b.Down()
	if _, err := cl.DrainNode(ctx, b.Hosts[0].Name); err != nil {
		return fail(err)
	}
	guests := loadGuests()
	if err := placeLoadGuests(ctx, cl, guests); err != nil {
		return fail(err)
	}
	hc := b.HTTPClient(b.ClientNS, 2*time.Second)
	start := time.Now()
	scored := start.Add(time.Duration(warmup * float64(loadDay)))
	end := start.Add(time.Duration(days * float64(loadDay)))
	var wg sync.WaitGroup
	for _, g := range guests {
		wg.Add(1)
		go func() { defer wg.Done(); driveGuest(ctx, hc, g, start, scored, end) }()
	}
	over, overAll := map[string]float64{}, 0.0
	for now := time.Now(); now.Before(end); now = time.Now() {
		nodes, err := cl.ListNodes(ctx)
		if err == nil {
			for _, n := range nodes {
				if n.Name != b.Hosts[0].Name && n.Load != nil && n.Load.CPU > 0.8*n.Load.Capacity {
					overAll += loadEvery.Seconds()
					if now.After(scored) {
						over[n.Name] += loadEvery.Seconds()
					}
				}
			}
		}
		res.Consolidations += packHome(ctx, cl, guests, now.Sub(start), say)
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(loadEvery - time.Since(now)):
		}
	}
	wg.Wait()
	res.OverloadedAllS = overAll
	for _, s := range over {
		res.OverloadedS += s
		res.OverloadedMax = math.Max(res.OverloadedMax, s)
	}
	var lat []float64
	for _, g := range guests {
		lat = append(lat, g.latencies...)
		res.Unanswered += g.unanswered
	}
	res.Requests = len(lat) + res.Unanswered
	sort.Float64s(lat)
	res.LatencyP50, res.LatencyP99 = percentile(lat, 0.5), percentile(lat, 0.99)
	if evs, err := cl.Events(ctx, 2000); err == nil {
		for _, e := range evs {
			if e.Kind == "balance-move" && e.Time.After(start) {
				res.MigrationsAll++
				if e.Time.After(scored) {
					res.Migrations++
				}
				res.Moves = append(res.Moves, fmt.Sprintf("+%03.0fs %s", e.Time.Sub(start).Seconds(), e.Message))
			}
		}
	}
	sort.Strings(res.Moves)
	return res
}

// nightDue tells, once a night, when t into the trace is past the hour
// the guest is packed home at (loadHomeAfter days after its peak).
func (g *loadGuest) nightDue(t time.Duration) bool {
	since := t.Seconds()/loadDay.Seconds() - g.Phase - loadHomeAfter + 1e-9 // days since its first night
	if since < 0 || int(since) < g.nights {
		return false
	}
	g.nights = int(since) + 1
	return true
}

// packHome moves each guest away from its home back to it once a day,
// loadHomeAfter days after its peak, and returns how many it started.
// Those moves are the trace's, alike in both modes, not the balancer's.
func packHome(ctx context.Context, cl *client.Client, guests []*loadGuest, t time.Duration, say func(string, ...any)) int {
	n := 0
	for _, g := range guests {
		if !g.nightDue(t) {
			continue
		}
		vm, err := cl.GetVM(ctx, g.Name)
		if err != nil || vm.Node == g.Host {
			continue
		}
		if _, err := cl.MigrateVM(ctx, g.Name, api.MigrateRequest{To: g.Host}); err != nil {
			say("packing %s home to %s: %v", g.Name, g.Host, err)
			continue
		}
		n++
	}
	return n
}

// placeLoadGuests creates the guests and moves each onto its starting host.
func placeLoadGuests(ctx context.Context, cl *client.Client, guests []*loadGuest) error {
	for _, g := range guests {
		if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: g.Name}); err != nil {
			return err
		}
	}
	for _, g := range guests {
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		vm, err := cl.WaitVM(wctx, g.Name, func(vm *api.VM) (bool, error) { return healthy(vm), nil })
		cancel()
		if err != nil {
			return fmt.Errorf("guest %s did not come up: %w", g.Name, err)
		}
		if vm.Node != g.Host {
			m, err := cl.MigrateVM(ctx, g.Name, api.MigrateRequest{To: g.Host})
			if err != nil {
				return fmt.Errorf("moving %s to %s: %w", g.Name, g.Host, err)
			}
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			m, err = cl.WaitMigration(wctx, g.Name, m.ID, nil)
			cancel()
			if err != nil || m.Phase != api.MigCompleted {
				return fmt.Errorf("moving %s to %s: %v %v", g.Name, g.Host, err, m)
			}
		}
		g.ip = strings.Split(vm.Spec.IP, "/")[0]
	}
	return nil
}

// driveGuest sets the guest's CPU share from the trace every second and
// asks for its /health, timing the answers from scored on, until end.
func driveGuest(ctx context.Context, hc *http.Client, g *loadGuest, start, scored, end time.Time) {
	for now := time.Now(); now.Before(end) && ctx.Err() == nil; now = time.Now() {
		s := math.Round(g.share(now.Sub(start))*100) / 100
		if s != g.lastShare {
			req, _ := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("http://%s/cpu?share=%g", g.ip, s), nil)
			if resp, err := hc.Do(req); err == nil {
				resp.Body.Close()
				g.lastShare = s
			} else {
				g.shareErrors++
			}
		}
		t0 := time.Now()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+g.ip+"/health", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		switch {
		case now.Before(scored):
		case err == nil:
			g.latencies = append(g.latencies, float64(time.Since(t0).Microseconds())/1000)
		default:
			g.unanswered++
		}
		time.Sleep(time.Second - time.Since(now))
	}
}

// percentile of sorted values (0 for none).
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}
