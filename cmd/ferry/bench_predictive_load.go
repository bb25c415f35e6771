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
// predictively or reactively.
const (
	loadDay      = 240 * time.Second // a day, compressed 360-fold
	loadHostCPUs = 0.5
	loadEvery    = 2 * time.Second
	loadHorizon  = 30 * time.Second // 3 hours of the day
)

// loadGuest is one guest's part in the load trace: its CPU share is Base,
// plus Peak at the time of day Phase (0 to 1), falling off over a quarter
// of a day on either side.
type loadGuest struct {
	Name        string
	Host        string // where it starts
	Base, Peak  float64
	Phase       float64
	ip          string
	latencies   []float64 // ms
	unanswered  int
	lastShare   float64
	shareErrors int
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
// h3's both at night, h4's stay quiet. Together a pair passes 80 % of its
// host (0.4 CPUs) for a few hours of the day unless one of them moves to
// the quiet host ahead of it.
func loadGuests() []*loadGuest {
	return []*loadGuest{
		{Name: "la1", Host: "h2", Base: 0.03, Peak: 0.24, Phase: 0.6},
		{Name: "la2", Host: "h2", Base: 0.03, Peak: 0.24, Phase: 0.6},
		{Name: "lb1", Host: "h3", Base: 0.03, Peak: 0.24, Phase: 0.1},
		{Name: "lb2", Host: "h3", Base: 0.03, Peak: 0.24, Phase: 0.1},
		{Name: "lq1", Host: "h4", Base: 0.03},
		{Name: "lq2", Host: "h4", Base: 0.03},
	}
}

// loadResult is one mode's figures.
type loadResult struct {
	Mode          string   `json:"mode"`
	Days          float64  `json:"days"`
	OverloadedS   float64  `json:"overloaded_host_s"`   // summed over hosts
	OverloadedMax float64  `json:"overloaded_max_s"`    // the worst host's
	Migrations    int      `json:"migrations"`          // balance moves
	LatencyP50    float64  `json:"latency_p50_ms"`      // guests' /health answers
	LatencyP99    float64  `json:"latency_p99_ms"`      //
	Unanswered    int      `json:"unanswered_requests"` // within 2 s
	Requests      int      `json:"requests"`
	Moves         []string `json:"moves,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// benchLoadMode runs the load trace for days compressed days in one mode.
func benchLoadMode(ctx context.Context, self, imageDir, mode string, days float64, say func(string, ...any)) loadResult {
	res := loadResult{Mode: mode, Days: days}
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
	end := start.Add(time.Duration(days * float64(loadDay)))
	var wg sync.WaitGroup
	for _, g := range guests {
		wg.Add(1)
		go func() { defer wg.Done(); driveGuest(ctx, hc, g, start, end) }()
	}
	over := map[string]float64{}
	for time.Now().Before(end) {
		nodes, err := cl.ListNodes(ctx)
		if err == nil {
			for _, n := range nodes {
				if n.Name != b.Hosts[0].Name && n.Load != nil && n.Load.CPU > 0.8*n.Load.Capacity {
					over[n.Name] += loadEvery.Seconds()
				}
			}
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(loadEvery):
		}
	}
	wg.Wait()
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
				res.Migrations++
				res.Moves = append(res.Moves, fmt.Sprintf("+%.0fs %s", e.Time.Sub(start).Seconds(), e.Message))
			}
		}
	}
	sort.Strings(res.Moves)
	return res
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
// times its answers to /health, until end.
func driveGuest(ctx context.Context, hc *http.Client, g *loadGuest, start, end time.Time) {
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
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			g.latencies = append(g.latencies, float64(time.Since(t0).Microseconds())/1000)
		} else {
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
