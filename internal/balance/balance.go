// Package balance holds the balancer: the leader controller that moves
// guests off hosts whose guests want more CPU than the host has.
//
// Each host reports what its guests use of its CPUs and a forecast of it
// (agent load sampling; Holt-Winters over a daily season). In predictive
// mode the balancer acts on the forecast: a host whose forecast peak
// within the horizon passes the threshold sheds a guest, chosen as the
// cheapest move that relieves it (the migration predictor's time), started
// late enough not to move for nothing and early enough to finish before
// the peak. In reactive mode, for comparison, it acts once a host has been
// over the threshold for a while. Both go through the one placement engine
// (a target's own forecast peak plus the guest's must stay under a lower
// target share), and a guest the balancer moved stays put for a cooldown:
// with the gap between threshold and target, that is the hysteresis that
// keeps it from ping-ponging. Every move is an event with its reason, and
// the plan, moves to come included, is in the store for `ferry balance plan`.
package balance

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/google/uuid"
)

// Config tunes the balancer.
type Config struct {
	Mode string // api.BalanceOff, BalanceReactive or BalancePredictive
	// Threshold is the share of a host's capacity above which it is
	// overloaded (default 0.8); Target the share a move may fill its
	// target to (default 0.7).
	Threshold, Target float64
	// Sustain is how long a host must be over the threshold before the
	// reactive balancer acts (default 2 minutes: a guest booting or a
	// short burst is no overload), and how long the predictive one waits
	// when a host has too little history for a forecast.
	Sustain time.Duration
	// Cooldown is how long a guest the balancer moved stays put (default
	// 10 minutes).
	Cooldown time.Duration
	// Margin is how long before the forecast peak a predictive move is
	// meant to have finished (default 10 s).
	Margin time.Duration
	// Heal moves guests served badly where they are (see heal.go),
	// whatever the mode; HealWait, HealMinWait and HealHealthMS are its
	// limits (defaults 0.5, 0.25 CPUs, 250 ms); a guest must be served
	// badly for Sustain before it moves.
	Heal         bool
	HealWait     float64
	HealMinWait  float64
	HealHealthMS float64
}

func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = api.BalancePredictive
	}
	if c.Threshold <= 0 {
		c.Threshold = 0.8
	}
	if c.Target <= 0 || c.Target > c.Threshold {
		c.Target = min(0.7, c.Threshold)
	}
	if c.Sustain <= 0 {
		c.Sustain = 2 * time.Minute
	}
	if c.Cooldown <= 0 {
		c.Cooldown = 10 * time.Minute
	}
	if c.Margin <= 0 {
		c.Margin = 10 * time.Second
	}
	if c.HealWait <= 0 {
		c.HealWait = 0.5
	}
	if c.HealMinWait <= 0 {
		c.HealMinWait = 0.25
	}
	if c.HealHealthMS <= 0 {
		c.HealHealthMS = 250
	}
	return c
}

// Balancer is the leader controller.
type Balancer struct {
	st  *store.Store
	cfg Config
	log *slog.Logger
	// overSince is when each host was first seen over the threshold;
	// movedAt when the balancer last moved each guest.
	overSince map[string]time.Time
	movedAt   map[string]time.Time
	// pending is, per host, the last guest moved off it: the host is not
	// judged again until the guest has left and the host has reported its
	// load since (its record lags the move by up to a heartbeat).
	pending map[string]pendingMove
	written []byte // the last plan written (without its time)
	// badSince is when each guest was first seen served badly.
	badSince map[string]time.Time
}

// pendingMove is a move off a host whose effect is not reported yet.
type pendingMove struct {
	vm   string
	left time.Time // when the guest was first seen elsewhere
}

// New returns a balancer.
func New(st *store.Store, cfg Config, log *slog.Logger) *Balancer {
	if log == nil {
		log = slog.Default()
	}
	return &Balancer{st: st, cfg: cfg.withDefaults(), log: log.With("controller", "balance"),
		overSince: map[string]time.Time{}, movedAt: map[string]time.Time{}, pending: map[string]pendingMove{}, badSince: map[string]time.Time{}}
}

// Name implements leader.Controller.
func (b *Balancer) Name() string { return "balance" }

// Pass implements leader.Controller: it plans, records the plan when it
// changed, and queues the moves whose time has come.
func (b *Balancer) Pass(ctx context.Context, r *leader.Round) error {
	if b.cfg.Mode == api.BalanceOff && !b.cfg.Heal {
		return nil
	}
	now := time.Now()
	plan, err := b.plan(ctx, r, now)
	if err != nil {
		return err
	}
	for _, m := range plan.Moves {
		if m.StartAt.After(now) {
			continue
		}
		if err := b.queue(ctx, r, m); err != nil {
			return err
		}
	}
	return b.record(ctx, plan, r.Guard)
}

// record writes the plan when it changed.
func (b *Balancer) record(ctx context.Context, p *api.BalancePlan, guard store.Guard) error {
	cmp := *p
	cmp.Made = time.Time{}
	cmp.Hosts = append([]api.BalanceHost(nil), p.Hosts...)
	for i := range cmp.Hosts { // figures that move every sampling
		cmp.Hosts[i].CPU, cmp.Hosts[i].Peak, cmp.Hosts[i].PeakInS, cmp.Hosts[i].Waiting = 0, 0, 0, 0
	}
	key, _ := json.Marshal(cmp)
	if string(key) == string(b.written) && time.Since(p.Made) < time.Minute {
		return nil
	}
	if err := b.st.PutBalancePlan(ctx, p, guard); err != nil {
		return err
	}
	b.written = key
	return nil
}

// candidate is a guest that could relieve an overloaded host.
type candidate struct {
	vm     api.VM
	cpu    float64
	to     string
	pred   *api.MigrationPrediction
	totalS float64
}

// plan judges every host and plans one move per overloaded host.
func (b *Balancer) plan(ctx context.Context, r *leader.Round, now time.Time) (*api.BalancePlan, error) {
	p := &api.BalancePlan{Mode: b.cfg.Mode, Threshold: b.cfg.Threshold, Target: b.cfg.Target, Made: now.UTC()}
	busy := map[string]bool{} // guests moving now, and hosts a move leaves
	for _, m := range r.Migrations {
		if !api.MigrationTerminal(m.Phase) {
			busy[m.VM], busy["host/"+m.Source] = true, true
		}
	}
	vms := map[string]api.VM{}
	for _, vm := range r.VMs {
		vms[vm.Spec.Name] = vm
	}
	var samples [][]byte
	for _, n := range r.Nodes {
		l := n.Load
		if l == nil || n.State != "ready" || n.Maintenance || l.Capacity <= 0 {
			continue
		}
		h := api.BalanceHost{Name: n.Name, Capacity: l.Capacity, CPU: l.CPU, Peak: l.Peak, PeakInS: l.PeakInS, Method: l.Method, Waiting: l.Waiting}
		level, until := b.level(l)
		h.Over = b.cfg.Mode != api.BalanceOff && level > b.cfg.Threshold*l.Capacity
		p.Hosts = append(p.Hosts, h)
		if !h.Over {
			delete(b.overSince, n.Name)
			continue
		}
		if _, ok := b.overSince[n.Name]; !ok {
			b.overSince[n.Name] = now
		}
		if busy["host/"+n.Name] || b.awaiting(n, vms, now) {
			continue // one move at a time out of a host: judge it again after
		}
		if samples == nil {
			var err error
			if samples, err = b.st.MigSamples(ctx, 200); err != nil {
				return nil, err
			}
		}
		shed := level - b.cfg.Target*l.Capacity
		c, why := b.choose(ctx, r, n, vms, busy, shed, samples, now)
		if c == nil {
			p.Stuck = append(p.Stuck, api.BalanceStuck{Host: n.Name, Why: why})
			continue
		}
		start := now
		if b.forecasting(l) {
			// As late as still finishes before the peak, so that a
			// forecast that changes its mind costs no move.
			start = now.Add(until - time.Duration(c.totalS*float64(time.Second)) - b.cfg.Margin)
			if start.Before(now) {
				start = now
			}
		} else if over := now.Sub(b.overSince[n.Name]); over < b.cfg.Sustain {
			start = now.Add(b.cfg.Sustain - over)
		}
		p.Moves = append(p.Moves, api.BalanceMove{VM: c.vm.Spec.Name, From: n.Name, To: c.to, CPU: c.cpu,
			PredictedS: c.totalS, StartAt: start.UTC(), Why: b.why(n, level, until, c)})
		r.View.Reserve(c.to, c.vm.Spec)
		r.View.ReserveCPU(c.to, c.cpu)
		busy[c.vm.Spec.Name] = true
	}
	if b.cfg.Heal {
		if samples == nil {
			var err error
			if samples, err = b.st.MigSamples(ctx, 200); err != nil {
				return nil, err
			}
		}
		b.heal(ctx, r, p, vms, busy, samples, now)
	}
	sort.Slice(p.Hosts, func(i, j int) bool { return p.Hosts[i].Name < p.Hosts[j].Name })
	return p, nil
}

// awaiting tells whether the last move off host n has not shown in its
// load report yet.
func (b *Balancer) awaiting(n api.Node, vms map[string]api.VM, now time.Time) bool {
	pm, ok := b.pending[n.Name]
	if !ok {
		return false
	}
	if vm, ok := vms[pm.vm]; ok && vm.Node == n.Name {
		if b.movedAt[pm.vm].Before(now.Add(-b.cfg.Cooldown)) {
			delete(b.pending, n.Name) // the move never happened
			return false
		}
		return true
	}
	if pm.left.IsZero() {
		pm.left = now
		b.pending[n.Name] = pm
	}
	if n.Load.Sampled.After(pm.left) {
		delete(b.pending, n.Name)
		return false
	}
	return true
}

// forecasting tells whether the balancer acts on the host's forecast.
func (b *Balancer) forecasting(l *api.HostLoad) bool {
	return b.cfg.Mode == api.BalancePredictive && l.Method != "none"
}

// level is the use the balancer judges a host by, and how long until it
// passes the threshold: its forecast peak and when the forecast first
// passes the threshold (predictive, once there is a forecast), else its use
// now.
func (b *Balancer) level(l *api.HostLoad) (float64, time.Duration) {
	if !b.forecasting(l) {
		return l.CPU, 0
	}
	limit := b.cfg.Threshold * l.Capacity
	if l.CPU > limit {
		return l.Peak, 0
	}
	for i, v := range l.Forecast {
		if v > limit {
			return l.Peak, time.Duration(float64(i+1)*l.StepS*float64(time.Second)) - time.Since(l.Sampled)
		}
	}
	return l.Peak, time.Duration(l.PeakInS*float64(time.Second)) - time.Since(l.Sampled)
}

// guestLevel is a guest's use as the balancer counts it.
func (b *Balancer) guestLevel(l *api.HostLoad, g api.GuestLoad) float64 {
	if b.forecasting(l) {
		return g.Peak
	}
	return g.CPU
}

// choose picks the guest to move off host n: among the guests the
// placement engine can send somewhere within the target share, the
// cheapest move (the predictor's total time) of those that relieve the host
// alone, else the one that relieves it most.
func (b *Balancer) choose(ctx context.Context, r *leader.Round, n api.Node, vms map[string]api.VM, busy map[string]bool,
	shed float64, samples [][]byte, now time.Time) (*candidate, string) {
	var cands []candidate
	var whyNot []string
	for name, g := range n.Load.Guests {
		vm, ok := vms[name]
		if !ok || vm.Node != n.Name || busy[name] || vm.Spec.Deleting ||
			vm.Spec.Power != api.PowerRunning || vm.Status.Phase != api.PhaseRunning {
			continue
		}
		if at, ok := b.movedAt[name]; ok && now.Sub(at) < b.cfg.Cooldown {
			whyNot = append(whyNot, fmt.Sprintf("%s moved %s ago (cooldown %s)", name, now.Sub(at).Round(time.Second), b.cfg.Cooldown))
			continue
		}
		cpu := b.guestLevel(n.Load, g)
		if cpu <= 0 {
			continue
		}
		to, no := r.View.Pick(placement.Request{Spec: vm.Spec, Live: &vm, CPU: cpu, CPUShare: b.cfg.Target})
		if to == "" {
			whyNot = append(whyNot, fmt.Sprintf("%s: %s", name, placement.Reasons(no)))
			continue
		}
		pred, total, ok := b.predictMove(ctx, r, &vm, n.Name, to, samples)
		if !ok {
			continue
		}
		cands = append(cands, candidate{vm: vm, cpu: cpu, to: to, pred: pred, totalS: total})
	}
	if len(cands) == 0 {
		if len(whyNot) == 0 {
			return nil, "no running guest of its own to move"
		}
		sort.Strings(whyNot)
		return nil, "no guest can move: " + fmt.Sprint(whyNot)
	}
	sort.Slice(cands, func(i, j int) bool {
		ri, rj := cands[i].cpu >= shed, cands[j].cpu >= shed
		switch {
		case ri != rj:
			return ri
		case ri && cands[i].totalS != cands[j].totalS:
			return cands[i].totalS < cands[j].totalS
		case !ri && cands[i].cpu != cands[j].cpu:
			return cands[i].cpu > cands[j].cpu
		}
		return cands[i].vm.Spec.Name < cands[j].vm.Spec.Name
	})
	return &cands[0], ""
}

// predictMove is the migration predictor's view of moving vm from one
// host to another with the automatic strategy over their measured link:
// the prediction and its chosen strategy's total time in seconds.
func (b *Balancer) predictMove(ctx context.Context, r *leader.Round, vm *api.VM, from, to string, samples [][]byte) (*api.MigrationPrediction, float64, bool) {
	link, err := b.st.LinkStat(ctx, from, to)
	if err != nil {
		link = nil
	}
	opts := api.MigrationOptions{Strategy: api.StrategyAuto}
	if err := migrate.Validate(&opts); err != nil {
		return nil, 0, false
	}
	pred := migrate.Predict(migrate.Predicting{VM: vm, Src: r.View.Node(from), Dst: r.View.Node(to), Link: link, Opts: opts, Samples: samples})
	total := 0.0
	if c := pred.ChosenPrediction(); c != nil {
		total = c.TotalMS / 1000
	}
	return pred, total, true
}

// why says, in words, why a move is made.
func (b *Balancer) why(n api.Node, level float64, until time.Duration, c *candidate) string {
	l := n.Load
	judged := fmt.Sprintf("%s's guests use %.2f of its %.2f CPUs (over %.0f %%)", n.Name, level, l.Capacity, 100*b.cfg.Threshold)
	if b.forecasting(l) {
		judged = fmt.Sprintf("%s's guests are forecast (%s) to pass %.0f %% of its %.2f CPUs in %s, peaking at %.2f",
			n.Name, l.Method, 100*b.cfg.Threshold, l.Capacity, max(until, 0).Round(time.Second), level)
	}
	return fmt.Sprintf("%s: moving %s (%.2f CPUs) to %s, predicted to take %.0f s by %s", judged, c.vm.Spec.Name, c.cpu,
		c.to, c.totalS, c.pred.Chosen)
}

// queue starts a planned move as a migration, with an event saying why.
func (b *Balancer) queue(ctx context.Context, r *leader.Round, m api.BalanceMove) error {
	var vm *api.VM
	for i := range r.VMs {
		if r.VMs[i].Spec.Name == m.VM {
			vm = &r.VMs[i]
		}
	}
	if vm == nil {
		return nil
	}
	rev := int64(0)
	for _, mr := range r.Migrations {
		if mr.VM == m.VM {
			rev = mr.Rev
		}
	}
	opts := api.MigrationOptions{Strategy: api.StrategyAuto}
	if err := migrate.Validate(&opts); err != nil {
		return err
	}
	src, dst := r.View.Node(m.From), r.View.Node(m.To)
	pred, err := migrate.Decide(ctx, b.st, migrate.Deciding{VM: vm, Src: src, Dst: dst}, &opts)
	if err != nil {
		b.log.Warn("balance: cannot decide the move", "vm", m.VM, "to", m.To, "err", err)
		return nil
	}
	plan, err := migrate.PlanFor(opts, vm, src, dst)
	if err != nil {
		b.log.Warn("balance: cannot plan the move", "vm", m.VM, "to", m.To, "err", err)
		return nil
	}
	mig := &api.Migration{ID: uuid.NewString(), VM: m.VM, Source: m.From, Target: m.To, Phase: api.MigQueued,
		Options: opts, Plan: plan, Started: time.Now().UTC(), Reason: "balance: " + m.Why, Prediction: pred}
	if m.Heal {
		mig.Reason = "heal: " + m.Why
	}
	ok, err := b.st.PutMigrationGuarded(ctx, mig, rev, r.Guard)
	if err != nil || !ok {
		return err
	}
	b.movedAt[m.VM] = time.Now()
	b.pending[m.From] = pendingMove{vm: m.VM}
	b.log.Info("balance: migration queued", "vm", m.VM, "from", m.From, "to", m.To, "why", m.Why)
	kind := "balance-move"
	if m.Heal {
		kind = "heal-move"
	}
	if err := b.st.PutEvent(ctx, api.Event{Kind: kind, VM: m.VM, Node: m.From, Message: m.Why}); err != nil {
		b.log.Warn("recording event", "err", err)
	}
	return nil
}
