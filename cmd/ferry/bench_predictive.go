package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/healthtrace"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/spf13/cobra"
)

// predictiveHorizon is the risk horizon on the compressed traces: 30
// minutes of a real host's life.
const predictiveHorizon = 45 * time.Second

// failureRun is one failing trace played on a host, with a healthy trace
// on another, in one mode.
type failureRun struct {
	Mode        string `json:"mode"`
	Failing     string `json:"failing_trace"`
	Healthy     string `json:"healthy_trace"`
	HeldOut     bool   `json:"held_out"`
	FailingHost string `json:"failing_host"`
	HealthyHost string `json:"healthy_host"`
	Guests      int    `json:"guests_on_failing_host"`
	// AtRiskS is when the failing host first reported itself at risk
	// (trace seconds; -1 never); EvacuatedS when its last guest had left.
	AtRiskS    float64 `json:"at_risk_s"`
	EvacuatedS float64 `json:"evacuated_s"`
	// EvacuatedBeforeDeath: every guest had moved away live before the
	// host died.
	EvacuatedBeforeDeath bool `json:"evacuated_before_death"`
	// FalseAlarms are the healthy hosts (the healthy trace's, and the one
	// with a baseline) judged at risk or drained during the run.
	FalseAlarms []string `json:"false_alarms,omitempty"`
	// Reboots are the guests that booted again after the death (HA
	// restarts); Lost those not running again within two minutes.
	Reboots int    `json:"guest_reboots"`
	Lost    int    `json:"guests_lost"`
	Reason  string `json:"reason,omitempty"` // what the at-risk event said
	Error   string `json:"error,omitempty"`
}

func benchPredictiveCmd() *cobra.Command {
	var asJSON bool
	var imageDir string
	var modes, parts []string
	var loadDays, warmupDays float64
	c := &cobra.Command{
		Use:   "predictive",
		Short: "Replay load and host failure traces, predictive against reactive: overloaded time, latency, migrations; evacuations, false alarms, reboots",
		Long: `Load: builds a 4-host testbed whose hosts' guests may use 0.8 CPU each (a
cgroup quota), with four guests whose CPU use (driven through ferry-guest) follows a
day compressed to 4 minutes: two on h2 peak in the afternoon, two on h3 at night;
h4 is empty. A pair at its peak overloads its host unless one of them moves; every
night the trace packs a moved guest back onto its home host (as a power-saving
consolidation would), so each day's peak is met anew. The hosts sample their guests'
use every 2 s and forecast it 30 s ahead (each guest's history follows it when it
moves); the balancer runs predictive or reactive (6 s sustain). It reports, for the
days after the warm-up (a season is learnt from two days), the seconds hosts spent
over 80 % of their capacity, the balancer's migrations, and the guests' answer times
to /health (asked every second from the client namespace).

Failures: builds a 6-host testbed (h1-h3 hold the etcd members and the API and are kept in
maintenance) with two HA guests, and replays the host health traces of internal/healthtrace through each
host's --health-root, compressed 40-fold (150 s of trace are 100 minutes; the
risk horizon is 45 s, 30 minutes of real time). Each run moves both guests onto
one host, plays a failing trace on it and a healthy one on another (the third
host plays a quiet baseline), and kills the failing host at the trace's end.

Predictive: the agents read their signals every second and judge their risk; a
host at risk is evacuated by live migration. Reactive: the agents read nothing
(--health-every 0), the host dies with its guests and HA restarts them; since
nothing reads the traces, reactive runs kill the host 20 s after the guests are
in place instead of waiting out the trace.

It reports, per mode and for the tuning and held-out traces apart: failing hosts
whose guests had all moved away before the death (recall), healthy hosts judged
at risk (false alarms), and guest reboots caused by the deaths.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			if _, err := image.Find(imageDir); err != nil {
				return err
			}
			say := sayer(true) // progress on stderr; the figures on stdout
			res := map[string]any{"benchmark": "predictive", "date": time.Now().UTC().Format(time.RFC3339),
				"qemu": qemuVersionOf(cmd.Context()), "accel": "tcg"}
			var summary []failureSummary
			var loads []loadResult
			if slices.Contains(parts, "load") {
				for _, mode := range modes {
					say("load trace, %s", mode)
					r := benchLoadMode(cmd.Context(), self, imageDir, mode, loadDays, warmupDays, say)
					say("%+v", r)
					loads = append(loads, r)
				}
				res["load"] = map[string]any{"hosts": 4, "day_s": loadDay.Seconds(), "host_cpus": loadHostCPUs,
					"horizon_s": loadHorizon.Seconds(), "threshold": 0.8, "guests": loadGuests(), "runs": loads}
			}
			if slices.Contains(parts, "failures") {
				var runs []failureRun
				for _, mode := range modes {
					rs, err := benchPredictiveMode(cmd.Context(), self, imageDir, mode, say)
					if err != nil {
						// What was measured is still printed.
						res["failures_error"] = fmt.Sprintf("%s: %v", mode, err)
						say("%s: %v", mode, err)
						break
					}
					runs = append(runs, rs...)
				}
				summary = summarizeFailures(runs)
				res["failures"] = map[string]any{"hosts": 6, "compression": healthtrace.Compression, "horizon_s": predictiveHorizon.Seconds(),
					"guests": 2, "runs": runs, "summary": summary}
			}
			if asJSON {
				return printJSON(os.Stdout, res)
			}
			for _, l := range loads {
				fmt.Printf("load %-10s days %g-%g: overloaded %4.0f host-s (worst host %4.0f s)  migrations %d  latency p50 %.0f ms p99 %.0f ms  unanswered %d/%d;  whole run: overloaded %4.0f host-s, migrations %d, consolidations %d\n",
					l.Mode, l.WarmupDays, l.Days, l.OverloadedS, l.OverloadedMax, l.Migrations, l.LatencyP50, l.LatencyP99, l.Unanswered, l.Requests,
					l.OverloadedAllS, l.MigrationsAll, l.Consolidations)
			}
			for _, s := range summary {
				fmt.Printf("failures %-10s %-8s recall %d/%d  false alarms %d/%d  guest reboots %d (lost %d)\n",
					s.Mode, s.Set, s.Evacuated, s.Failing, s.FalseAlarms, s.Healthy, s.Reboots, s.Lost)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	c.Flags().StringVar(&imageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	c.Flags().StringSliceVar(&modes, "modes", []string{"predictive", "reactive"}, "modes to run")
	c.Flags().StringSliceVar(&parts, "parts", []string{"load", "failures"}, "what to run: load (balancing a daily load) and failures (host failure traces)")
	c.Flags().Float64Var(&loadDays, "load-days", 4, "compressed days (4 minutes each) the load trace runs per mode")
	c.Flags().Float64Var(&warmupDays, "warmup-days", 2, "days of the load trace not scored: a daily season is learnt from two days of history")
	return c
}

// failureSummary is one mode's figures over one set of traces.
type failureSummary struct {
	Mode        string `json:"mode"`
	Set         string `json:"set"` // tuning or held-out
	Failing     int    `json:"failing_hosts"`
	Evacuated   int    `json:"evacuated_before_death"`
	Healthy     int    `json:"healthy_hosts"`
	FalseAlarms int    `json:"false_alarms"`
	Reboots     int    `json:"guest_reboots"`
	Lost        int    `json:"guests_lost"`
	Errors      int    `json:"failed_runs"`
}

func summarizeFailures(runs []failureRun) []failureSummary {
	idx := map[string]*failureSummary{}
	var order []string
	for _, r := range runs {
		set := "tuning"
		if r.HeldOut {
			set = "held-out"
		}
		k := r.Mode + "/" + set
		s := idx[k]
		if s == nil {
			s = &failureSummary{Mode: r.Mode, Set: set}
			idx[k] = s
			order = append(order, k)
		}
		if r.Error != "" {
			s.Errors++
			continue
		}
		s.Failing++
		if r.EvacuatedBeforeDeath {
			s.Evacuated++
		}
		s.Healthy += 2 // the healthy trace's host and the baseline's
		s.FalseAlarms += len(r.FalseAlarms)
		s.Reboots += r.Reboots
		s.Lost += r.Lost
	}
	out := make([]failureSummary, 0, len(order))
	for _, k := range order {
		out = append(out, *idx[k])
	}
	return out
}

// benchPredictiveMode builds a testbed for one mode and plays every
// failing trace once, each beside a healthy one.
func benchPredictiveMode(ctx context.Context, self, imageDir, mode string, say func(string, ...any)) ([]failureRun, error) {
	args := []string{"--health-every", "0"}
	if mode == "predictive" {
		args = []string{"--health-every", "1s", "--risk-horizon", predictiveHorizon.String(),
			"--risk-time-scale", fmt.Sprint(healthtrace.Compression)}
	} else if mode != "reactive" {
		return nil, fmt.Errorf("mode %q is not predictive or reactive", mode)
	}
	// Hosts' agents are restarted between runs (and the healthy host's
	// before its run): with the default 2 s lease, a restart that takes
	// more than 1.6 s on this loaded machine has the watchdog fence the
	// host's HA guests (seen on 2026-12-07: 1.94 s, three runs lost to it).
	// The benchmark is about forecasting failures, not the lease: every
	// host runs a 5 s one, in both modes.
	args = append(args, "--lease-ttl", "5s")
	// Six hosts: h1-h3 hold the etcd members and the API and stay in
	// maintenance (killing an etcd member's host is a different story,
	// docs/HA.md); h4-h6 hold the guests and the traces.
	o := testbed.Options{Name: "fpv", Hosts: 6, Bin: self, ImageDir: imageDir, HostArgs: map[int][]string{}}
	for i := 0; i < o.Hosts; i++ {
		o.HostArgs[i] = args
	}
	b, cl, err := benchBedWith(ctx, o, say)
	if err != nil {
		return nil, err
	}
	defer b.Down()
	for _, h := range b.Hosts[:testbed.Servers(len(b.Hosts))] {
		if _, err := cl.DrainNode(ctx, h.Name); err != nil {
			return nil, err
		}
	}
	guests := []string{"pg1", "pg2"}
	for _, g := range guests {
		if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: g, HA: true}); err != nil {
			return nil, err
		}
	}
	for _, g := range guests {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := cl.WaitVM(wctx, g, func(vm *api.VM) (bool, error) { return healthy(vm), nil })
		cancel()
		if err != nil {
			return nil, fmt.Errorf("guest %s did not come up: %w", g, err)
		}
	}
	var failing, healthyTraces []healthtrace.Trace
	for _, tr := range healthtrace.All() {
		if tr.Failing {
			failing = append(failing, tr)
		} else {
			healthyTraces = append(healthyTraces, tr)
		}
	}
	// Tuning traces first, then the held-out ones, each set pairing its
	// failing traces with its healthy ones in turn.
	sort.SliceStable(failing, func(i, j int) bool { return !failing[i].HeldOut && failing[j].HeldOut })
	var runs []failureRun
	for i, f := range failing {
		h := healthtrace.Baseline()
		var pool []healthtrace.Trace
		for _, t := range healthyTraces {
			if t.HeldOut == f.HeldOut {
				pool = append(pool, t)
			}
		}
		if len(pool) > 0 {
			h = pool[i%len(pool)]
		}
		// The roles turn: this run's healthy host fails next, its quiet
		// one plays the next healthy trace, so no agent carries a failing
		// trace's history into another run (the failing host restarts).
		p := &failurePlay{b: b, cl: cl, mode: mode, guests: guests, failing: f, healthy: h,
			fi: 3 + i%3, hi: 3 + (i+1)%3, oi: 3 + (i+2)%3, seed: int64(i + 1)}
		r := p.run(ctx)
		say("%s run %d (%s on %s, %s on %s): %+v", mode, i+1, f.Name, r.FailingHost, h.Name, r.HealthyHost, r)
		runs = append(runs, r)
	}
	return runs, nil
}

// failurePlay is one run: a failing trace on host fi, a healthy one on hi,
// the baseline on oi (and on h1, which holds the API).
type failurePlay struct {
	b               *testbed.Bed
	cl              *client.Client
	mode            string
	guests          []string
	failing         healthtrace.Trace
	healthy         healthtrace.Trace
	fi, hi, oi      int
	seed            int64
	players         map[int]*healthtrace.Player
	start           time.Time
	atRisk, drained map[string]bool
}

func (p *failurePlay) run(ctx context.Context) (r failureRun) {
	bh := p.b.Hosts
	r = failureRun{Mode: p.mode, Failing: p.failing.Name, Healthy: p.healthy.Name, HeldOut: p.failing.HeldOut,
		FailingHost: bh[p.fi].Name, HealthyHost: bh[p.hi].Name, AtRiskS: -1, EvacuatedS: -1}
	fail := func(err error) failureRun { r.Error = err.Error(); return r }
	p.players = map[int]*healthtrace.Player{}
	for i, h := range bh {
		p.players[i] = healthtrace.NewPlayer(healthtrace.Baseline(), h.HealthRoot(), p.seed*10+int64(i)+5)
	}
	p.players[p.fi] = healthtrace.NewPlayer(p.failing, bh[p.fi].HealthRoot(), p.seed*10+1)
	p.players[p.hi] = healthtrace.NewPlayer(p.healthy, bh[p.hi].HealthRoot(), p.seed*10+2)
	if err := p.step(0); err != nil {
		return fail(err)
	}
	defer p.recover(ctx)
	// The healthy host has been in its trace's state all along: a host
	// that runs hot runs hot before the run starts, it does not jump there
	// from the quiet baseline at its start (a jump of 35 °C in a second is
	// a rise worth an alarm, and it was the healthy trace's false alarms
	// on 2026-11-30). Its agent starts afresh on the trace's first state,
	// so the history it judges is the trace's.
	if p.healthy.Name != healthtrace.Baseline().Name {
		if err := p.b.StopAgent(p.hi, syscall.SIGTERM); err != nil {
			return fail(err)
		}
		if err := p.b.StartAgent(ctx, p.hi); err != nil {
			return fail(err)
		}
		if err := p.b.WaitNodes(ctx, len(bh)); err != nil {
			return fail(err)
		}
	}
	boots, err := p.gather(ctx, bh[p.fi].Name)
	if err != nil {
		return fail(err)
	}
	r.Guests = len(boots)
	p.start = time.Now()
	p.atRisk, p.drained = map[string]bool{}, map[string]bool{}
	dies := p.failing.DiesAt
	if p.mode == "reactive" {
		dies = 20 * time.Second // nothing reads the traces
	}
	for {
		t := time.Since(p.start)
		if t >= dies {
			break
		}
		if err := p.step(t); err != nil {
			return fail(err)
		}
		if err := p.watch(ctx, &r, t); err != nil {
			return fail(err)
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(time.Second - time.Since(p.start.Add(t))):
		}
	}
	r.EvacuatedBeforeDeath = r.EvacuatedS >= 0
	for _, h := range []int{p.hi, p.oi} {
		if name := bh[h].Name; p.atRisk[name] || p.drained[name] {
			r.FalseAlarms = append(r.FalseAlarms, name)
		}
	}
	if err := p.b.KillHost(p.fi); err != nil {
		return fail(err)
	}
	r.Reboots, r.Lost = p.countReboots(ctx, boots)
	return r
}

// step writes every host's trace at trace time t.
func (p *failurePlay) step(t time.Duration) error {
	for _, pl := range p.players {
		if err := pl.Step(t); err != nil {
			return err
		}
	}
	return nil
}

// gather moves every guest onto host and returns their boots.
func (p *failurePlay) gather(ctx context.Context, host string) (map[string]string, error) {
	boots := map[string]string{}
	for _, g := range p.guests {
		vm, err := p.cl.GetVM(ctx, g)
		if err != nil {
			return nil, err
		}
		if vm.Node != host {
			m, err := p.cl.MigrateVM(ctx, g, api.MigrateRequest{To: host})
			if err != nil {
				return nil, fmt.Errorf("moving %s to %s: %w", g, host, err)
			}
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			m, err = p.cl.WaitMigration(wctx, g, m.ID, nil)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("moving %s to %s: %w", g, host, err)
			}
			if m.Phase != api.MigCompleted {
				return nil, fmt.Errorf("moving %s to %s: %s (%s)", g, host, m.Phase, m.Error)
			}
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		vm, err = p.cl.WaitVM(wctx, g, func(vm *api.VM) (bool, error) { return healthy(vm) && vm.Node == host, nil })
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s on %s: %w", g, host, err)
		}
		boots[g] = vm.Status.Guest.BootID
	}
	return boots, nil
}

// watch notes who is at risk or drained, and when the failing host's
// guests had all left it.
func (p *failurePlay) watch(ctx context.Context, r *failureRun, t time.Duration) error {
	nodes, err := p.cl.ListNodes(ctx)
	if err != nil {
		return nil // the API host is busy: look again next second
	}
	for _, n := range nodes {
		if !p.guestHost(n.Name) {
			continue
		}
		if n.Risk != nil && n.Risk.AtRisk {
			p.atRisk[n.Name] = true
			if n.Name == r.FailingHost && r.AtRiskS < 0 {
				r.AtRiskS = t.Seconds()
				if len(n.Risk.Reasons) > 0 {
					r.Reason = n.Risk.Reasons[0].Reason
				}
			}
		}
		if n.Maintenance {
			p.drained[n.Name] = true
		}
	}
	if r.EvacuatedS >= 0 || p.mode == "reactive" {
		return nil
	}
	vms, err := p.cl.ListVMs(ctx)
	if err != nil {
		return nil
	}
	for _, vm := range vms {
		if vm.Node == r.FailingHost || vm.Status.Phase != api.PhaseRunning {
			return nil
		}
	}
	r.EvacuatedS = t.Seconds()
	return nil
}

// countReboots waits until every guest runs and answers again after the
// death, and counts the ones that booted anew and the ones that did not
// come back within two minutes.
func (p *failurePlay) countReboots(ctx context.Context, boots map[string]string) (reboots, lost int) {
	for g, boot := range boots {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		vm, err := p.cl.WaitVM(wctx, g, func(vm *api.VM) (bool, error) {
			return healthy(vm) && vm.Node != p.b.Hosts[p.fi].Name, nil
		})
		cancel()
		switch {
		case err != nil:
			lost++
		case vm.Status.Guest.BootID != boot:
			reboots++
		}
	}
	return reboots, lost
}

// guestHost tells the hosts that hold guests and traces (not the etcd
// members').
func (p *failurePlay) guestHost(name string) bool {
	for _, i := range []int{p.fi, p.hi, p.oi} {
		if p.b.Hosts[i].Name == name {
			return true
		}
	}
	return false
}

// recover makes the next run independent of this one, as an operator's
// repair would and more: every guest host is written a quiet baseline and
// its agent started afresh (they hold no etcd member, so this costs the
// store nothing), so that no host carries this run's trace in its risk
// history; then the hosts are taken out of maintenance once none is at
// risk, and the guests are waited for until they run and answer. Without
// it, a host that had failed or played a trace could still be judged at
// risk, or left in maintenance, in the next run: a false alarm that was
// the last run's, and no host left to move to.
func (p *failurePlay) recover(ctx context.Context) {
	for i, h := range p.b.Hosts {
		healthtrace.NewPlayer(healthtrace.Baseline(), h.HealthRoot(), p.seed*10+int64(i)+5).Step(0)
	}
	var problems []string
	for _, i := range []int{p.fi, p.hi, p.oi} {
		if err := p.b.StopAgent(i, syscall.SIGTERM); err != nil {
			problems = append(problems, fmt.Sprintf("stopping %s: %v", p.b.Hosts[i].Name, err))
		}
		if err := p.b.StartAgent(ctx, i); err != nil {
			problems = append(problems, fmt.Sprintf("starting %s: %v", p.b.Hosts[i].Name, err))
		}
	}
	if err := p.b.WaitNodes(ctx, len(p.b.Hosts)); err != nil {
		problems = append(problems, err.Error())
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, i := range []int{p.fi, p.hi, p.oi} {
			p.cl.UndrainNode(ctx, p.b.Hosts[i].Name)
		}
		if p.settled(ctx) {
			return
		}
		time.Sleep(2 * time.Second)
	}
	problems = append(problems, "hosts or guests not settled after 90 s")
	fmt.Fprintf(os.Stderr, "recovering after the run: %s\n", strings.Join(problems, "; "))
}

// settled tells whether every guest host is ready, out of maintenance and
// not at risk, and every guest runs and answers.
func (p *failurePlay) settled(ctx context.Context) bool {
	nodes, err := p.cl.ListNodes(ctx)
	if err != nil {
		return false
	}
	for _, n := range nodes {
		if p.guestHost(n.Name) && (n.State != "ready" || n.Maintenance || (n.Risk != nil && n.Risk.AtRisk)) {
			return false
		}
	}
	for _, g := range p.guests {
		vm, err := p.cl.GetVM(ctx, g)
		if err != nil || !healthy(vm) {
			return false
		}
	}
	return true
}
