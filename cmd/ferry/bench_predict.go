package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/ferryvm/ferry/internal/wait"
	"github.com/spf13/cobra"
)

// predictCell is one migration of the matrix: what was predicted for its
// strategy just before it ran, and what it did.
type predictCell struct {
	MemoryMiB int     `json:"memory_mib"`
	DirtyMiBs float64 `json:"dirty_mib_s"`
	Link      string  `json:"link"`
	Strategy  string  `json:"strategy"`
	HeldOut   bool    `json:"held_out"`
	// Calibrated is how many of the cluster's earlier moves with this
	// strategy the prediction's constants were fitted to.
	Calibrated int `json:"calibrated"`

	PredConverges  bool    `json:"predicted_converges"`
	PredTotalMS    float64 `json:"predicted_total_ms"`
	PredDowntimeMS float64 `json:"predicted_downtime_ms"`
	PredBytes      int64   `json:"predicted_bytes"`

	Completed bool    `json:"completed"`
	TotalMS   float64 `json:"total_ms"`
	// DowntimeMS is the pause the guest's clients saw where measured (its
	// first answer on the target), else QEMU's downtime.
	DowntimeMS     float64 `json:"downtime_ms"`
	QEMUDowntimeMS float64 `json:"qemu_downtime_ms"`
	Bytes          int64   `json:"bytes"`
	Error          string  `json:"error,omitempty"`
}

// predictErrors are mean absolute percentage errors over the cells both
// the model and the migration finished.
type predictErrors struct {
	Cells        int     `json:"cells"`
	TotalMAPE    float64 `json:"total_mape"`
	DowntimeMAPE float64 `json:"downtime_mape"`
	BytesMAPE    float64 `json:"bytes_mape"`
	// Agreed counts cells where the model and the migration agreed on
	// whether it finishes at all (of Judged).
	Agreed int `json:"converge_agreed"`
	Judged int `json:"converge_judged"`
}

// Long on purpose: a declarative list, one entry per option, read top to bottom.
func benchPredictCmd() *cobra.Command {
	var (
		mems, links, strategies []string
		dirty                   []float64
		heldOutEvery            int
		timeout                 time.Duration
		asJSON                  bool
		imageDir                string
	)
	c := &cobra.Command{
		Use:   "predict",
		Short: "How well Ferry predicts migrations: a matrix of guest sizes, dirty rates, links and strategies, predicted and measured",
		Long: `Builds a 2-host testbed whose underlay runs through the link emulator and,
for each link (rate/one-way delay), guest memory size and dirty rate, creates a
guest that dirties whole random pages (of a set a quarter of its memory, at most
64 MiB), waits until its host has measured it and the link, then migrates it back
and forth once per strategy: precopy, multifd, compress, auto-converge, postcopy.
Each move runs as asked (a policy without escalations, cancelled after
--timeout); the prediction is the one Ferry made for that strategy just before.
It reports each cell's predicted and actual total time, pause and bytes, and the
mean absolute percentage error of each over the cells both finished — over all
of them, and over the held-out ones alone (every --held-out-every'th move is
kept out of calibration, so that its prediction never learned from it). The
cells run in order, and the model calibrates on the moves before.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			m := predictMatrix{heldOutEvery: heldOutEvery, timeout: timeout, say: sayer(!asJSON)}
			for _, s := range mems {
				mib, err := api.ParseSizeMiB(s)
				if err != nil {
					return fmt.Errorf("--memory %q: %w", s, err)
				}
				m.mems = append(m.mems, mib)
			}
			for _, l := range links {
				p, err := parseLinkSpec(l)
				if err != nil {
					return err
				}
				m.links = append(m.links, namedLink{l, p})
			}
			for _, s := range strategies {
				if !strings.Contains(strings.Join(migrate.PolicyStrategies, ","), s) {
					return fmt.Errorf("--strategies: %q is not one of %v", s, migrate.PolicyStrategies)
				}
			}
			m.strategies, m.dirty = strategies, dirty
			res, err := m.run(cmd.Context(), self, imageDir)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(os.Stdout, res)
			}
			printPredictSummary(res)
			return nil
		},
	}
	f := c.Flags()
	f.StringSliceVar(&mems, "memory", []string{"256M", "1G"}, "guest memory sizes")
	f.Float64SliceVar(&dirty, "dirty", []float64{0, 8, 24}, "dirty rates, MiB/s (whole random pages)")
	f.StringSliceVar(&links, "links", []string{"100M/2ms", "400M/10ms"}, "links between the hosts: RATE/ONE-WAY-DELAY")
	f.StringSliceVar(&strategies, "strategies", migrate.PolicyStrategies, "strategies to run")
	f.IntVar(&heldOutEvery, "held-out-every", 3, "keep every n-th move out of calibration (0: none)")
	f.DurationVar(&timeout, "timeout", 60*time.Second, "cancel a move not done after this long (it did not converge)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	f.StringVar(&imageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	return c
}

type namedLink struct {
	name string
	p    linkemu.Profile
}

// parseLinkSpec reads RATE/DELAY, e.g. 100M/2ms.
func parseLinkSpec(s string) (linkemu.Profile, error) {
	rate, delay, ok := strings.Cut(s, "/")
	var p linkemu.Profile
	var err error
	if p.RateBits, err = linkemu.ParseRate(rate); err != nil {
		return p, fmt.Errorf("--links %q: %w", s, err)
	}
	if ok {
		if p.Delay, err = time.ParseDuration(delay); err != nil {
			return p, fmt.Errorf("--links %q: delay: %w", s, err)
		}
	}
	return p, p.Check()
}

// predictMatrix is one run of the benchmark.
type predictMatrix struct {
	mems         []int
	dirty        []float64
	links        []namedLink
	strategies   []string
	heldOutEvery int
	timeout      time.Duration
	say          func(string, ...any)

	b     *testbed.Bed
	cl    *client.Client
	moves int
}

func (m *predictMatrix) run(ctx context.Context, self, imageDir string) (map[string]any, error) {
	b, cl, err := benchBedWith(ctx, testbed.Options{Name: "fbp", Hosts: 2, Bin: self, ImageDir: imageDir, EmulatedLinks: true}, m.say)
	if err != nil {
		return nil, err
	}
	defer b.Down()
	m.b, m.cl = b, cl
	timeout := m.timeout.String()
	if _, err := cl.CreatePolicy(ctx, api.MigrationPolicyRequest{Name: "bench-as-asked", Selector: map[string]string{"bench": "predict"},
		Escalations: []string{}, Timeout: timeout, AllowedDowntime: "1m", MaxDowntime: "300ms"}); err != nil {
		return nil, err
	}
	var qemuVersion string
	if nodes, err := cl.ListNodes(ctx); err == nil && len(nodes) > 0 && nodes[0].QEMU != nil {
		qemuVersion = nodes[0].QEMU.Version
	}
	var cells []predictCell
	var runErr error
run:
	for _, l := range m.links {
		if runErr = b.SetLink(ctx, "h1", "h2", l.p, false); runErr != nil {
			break
		}
		for _, mem := range m.mems {
			for _, d := range m.dirty {
				cs, err := m.guest(ctx, l, mem, d)
				cells = append(cells, cs...)
				if err != nil {
					runErr = fmt.Errorf("%s, %d MiB, %.0f MiB/s: %w", l.name, mem, d, err)
					break run
				}
			}
		}
	}
	all, held := predictionErrors(cells, false), predictionErrors(cells, true)
	res := map[string]any{
		"benchmark": "predict", "date": time.Now().UTC().Format(time.RFC3339), "qemu": qemuVersion, "accel": "tcg",
		"hosts": 2, "link": "testbed underlay through the user-space link emulator", "timeout_s": m.timeout.Seconds(),
		"cells": cells, "errors": all, "errors_held_out": held,
	}
	if runErr != nil {
		// The cells before stand: say where the run ended.
		res["ended_early"] = runErr.Error()
	}
	return res, nil
}

// guest creates one guest of the matrix and moves it once per strategy.
func (m *predictMatrix) guest(ctx context.Context, l namedLink, mem int, dirty float64) ([]predictCell, error) {
	name := fmt.Sprintf("p%d", m.moves)
	cl := m.cl
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: name, Memory: fmt.Sprintf("%dM", mem), Labels: map[string]string{"bench": "predict"}}); err != nil {
		return nil, err
	}
	defer cl.DeleteVM(context.WithoutCancel(ctx), name)
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	vm, err := cl.WaitVM(wctx, name, func(vm *api.VM) (bool, error) { return healthy(vm), nil })
	cancel()
	if err != nil {
		return nil, err
	}
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")
	if dirty > 0 {
		set := min(64, mem/4)
		if err := testbed.SetDirty(ctx, m.b.HTTPClient(m.b.ClientNS, 5*time.Second), ip, dirty, set, true); err != nil {
			return nil, err
		}
	}
	var cells []predictCell
	for _, s := range m.strategies {
		if err := m.fresh(ctx, name); err != nil {
			return cells, err
		}
		c, err := m.move(ctx, name, s)
		if err != nil {
			return cells, err
		}
		c.MemoryMiB, c.DirtyMiBs, c.Link = mem, dirty, l.name
		m.say("%-10s %5d MiB dirty %4.0f MiB/s %-13s held-out %-5v predicted %8.0fms %6.0fms %s (fits %v) | actual %8.0fms %6.0fms %s (done %v) %s",
			c.Link, mem, dirty, s, c.HeldOut, c.PredTotalMS, c.PredDowntimeMS, humanBytes(c.PredBytes), c.PredConverges,
			c.TotalMS, c.DowntimeMS, humanBytes(c.Bytes), c.Completed, c.Error)
		cells = append(cells, c)
	}
	return cells, nil
}

// fresh waits until the guest was measured anew and the link too: every
// prediction is made from current figures.
func (m *predictMatrix) fresh(ctx context.Context, name string) error {
	asked := time.Now()
	if err := m.cl.ProbeLinks(ctx); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	return wait.Until(wctx, 500*time.Millisecond, func(ctx context.Context) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		vm, err := m.cl.GetVM(ctx, name)
		if err != nil {
			return false, err
		}
		ls, err := m.cl.ListLinks(ctx)
		if err != nil {
			return false, err
		}
		links := 0
		for _, l := range ls {
			if l.MeasuredAt.After(asked) {
				links++
			}
		}
		measured := vm.Status.Memory != nil && vm.Status.Memory.MeasuredAt.After(asked)
		return measured && links >= 2, fmt.Errorf("guest measured %v, %d of 2 links measured again", measured, links)
	})
}

// move migrates the guest to the other host with one strategy, as asked.
func (m *predictMatrix) move(ctx context.Context, name, strategy string) (predictCell, error) {
	m.moves++
	c := predictCell{Strategy: strategy, HeldOut: m.heldOutEvery > 0 && m.moves%m.heldOutEvery == 0}
	vm, err := m.cl.GetVM(ctx, name)
	if err != nil {
		return c, err
	}
	req := api.MigrateRequest{To: "h1", Strategy: strategy, HeldOut: c.HeldOut}
	if vm.Node == "h1" {
		req.To = "h2"
	}
	if strategy == api.StrategyCompress {
		req.Strategy, req.Compress = "", true
	}
	mig, err := m.cl.MigrateVM(ctx, name, req)
	if err != nil {
		return c, err
	}
	if p := mig.Prediction; p != nil {
		for _, sp := range p.Strategies {
			if sp.Strategy == strategy {
				c.PredConverges, c.PredTotalMS, c.PredDowntimeMS, c.PredBytes, c.Calibrated = sp.Converges, sp.TotalMS, sp.DowntimeMS, sp.Bytes, sp.Calibrated
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, m.timeout+2*time.Minute)
	defer cancel()
	mig, err = m.cl.WaitMigration(wctx, name, mig.ID, nil)
	if err != nil {
		return c, err
	}
	c.Completed = mig.Phase == api.MigCompleted
	if !c.Completed {
		c.Error = mig.Phase + ": " + mig.Error
		return c, nil
	}
	// The pause its clients saw is recorded by the source a moment after.
	wait.Until(wctx, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		cur, err := m.cl.GetMigration(ctx, name)
		if err == nil && cur.ID == mig.ID {
			mig = cur
		}
		return mig.ServicePauseMS > 0, nil
	})
	c.TotalMS = float64(mig.Finished.Sub(mig.Started).Microseconds()) / 1000
	c.QEMUDowntimeMS, c.DowntimeMS, c.Bytes = float64(mig.DowntimeMS), float64(mig.DowntimeMS), mig.BytesSent
	if mig.ServicePauseMS > 0 {
		c.DowntimeMS = float64(mig.ServicePauseMS)
	}
	return c, nil
}

// predictionErrors summarises the cells (the held-out ones alone if held).
func predictionErrors(cells []predictCell, held bool) predictErrors {
	var e predictErrors
	var tot, down, bytes []float64
	for _, c := range cells {
		if held && !c.HeldOut {
			continue
		}
		if c.Error == "" || c.PredConverges == c.Completed {
			e.Judged++
			if c.PredConverges == c.Completed {
				e.Agreed++
			}
		}
		if !c.Completed || !c.PredConverges || c.TotalMS == 0 {
			continue
		}
		e.Cells++
		tot = append(tot, math.Abs(c.PredTotalMS-c.TotalMS)/c.TotalMS)
		if c.DowntimeMS > 0 {
			down = append(down, math.Abs(c.PredDowntimeMS-c.DowntimeMS)/c.DowntimeMS)
		}
		if c.Bytes > 0 {
			bytes = append(bytes, math.Abs(float64(c.PredBytes-c.Bytes))/float64(c.Bytes))
		}
	}
	e.TotalMAPE, e.DowntimeMAPE, e.BytesMAPE = mean(tot)*100, mean(down)*100, mean(bytes)*100
	return e
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

func printPredictSummary(res map[string]any) {
	for _, k := range []string{"errors", "errors_held_out"} {
		e := res[k].(predictErrors)
		fmt.Printf("%-16s %2d cells: total %.1f%%, pause %.1f%%, bytes %.1f%% mean absolute error; finishing or not agreed in %d of %d\n",
			k, e.Cells, e.TotalMAPE, e.DowntimeMAPE, e.BytesMAPE, e.Agreed, e.Judged)
	}
}
