package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/spf13/cobra"
)

// Variants of a move the benchmark measures. Ferry's are migrations through
// its API; the baselines are plain QMP migrate between two QEMUs started by
// hand in the same host namespaces, over the same link.
const (
	varFerry        = "ferry"           // Ferry's default: the agents' TLS tunnel
	varFerryQEMUTLS = "ferry-qemu-tls"  // Ferry with QEMU's own TLS channel
	varFerryPlain   = "ferry-plaintext" // Ferry without encryption (allowed for the benchmark)
	varRawTLS       = "qmp-tls"         // plain QMP with QEMU's TLS, the same certificates and source authorization
	varRawPlain     = "qmp-plaintext"   // plain QMP without encryption
)

var allVariants = []string{varFerry, varFerryQEMUTLS, varFerryPlain, varRawTLS, varRawPlain}

// migResult is one measured move.
type migResult struct {
	// TotalMS: Ferry from the API request, a baseline from launching the
	// target QEMU, to the guest running on the target.
	TotalMS     float64 `json:"total_ms"`
	QEMUTotalMS int64   `json:"qemu_total_ms"` // QEMU's own total-time
	DowntimeMS  int64   `json:"downtime_ms"`   // as the source QEMU reports it
	BytesSent   int64   `json:"bytes_sent"`
	// GapMS is the longest time without a successful TCP connection to the
	// guest from the client namespace (probing every 10 ms).
	GapMS float64 `json:"client_gap_ms"`
	// The switchover, from QEMU's event timestamps and the client's probes:
	// the guest stopped on the source -> its stream complete on the target
	// -> the guest running there -> the client's first connection after.
	StopToStreamMS  float64 `json:"stop_to_stream_complete_ms"`
	StreamToRunMS   float64 `json:"stream_complete_to_running_ms"`
	RunToAnswerMS   float64 `json:"running_to_client_answer_ms"`
	StopToAnswerMS  float64 `json:"stop_to_client_answer_ms"`
	GuestAlive      bool    `json:"guest_alive_after"` // still answering 2 s after the move
	MemoryIntact    bool    `json:"memory_intact"`     // ferry-guest's memory check passed
	MemoryCheckInfo string  `json:"memory_check,omitempty"`
	Error           string  `json:"error,omitempty"`
}

// variantResult is one variant's runs at one dirty rate.
type variantResult struct {
	Runs   []migResult `json:"runs"`
	Median migResult   `json:"median"`
	Dead   int         `json:"guests_dead_after"` // not answering, or memory damaged, after the move
	Failed int         `json:"migrations_failed"` // the move did not complete
}

type migScenario struct {
	DirtyMiBs float64                   `json:"dirty_rate_mib_s"`
	Variants  map[string]*variantResult `json:"variants"`
	// Ratios of median totals.
	RatioTLS        float64 `json:"ratio_ferry_to_qmp_tls"`                 // like for like, encrypted
	RatioPlain      float64 `json:"ratio_ferry_plaintext_to_qmp_plaintext"` // like for like, plaintext
	TLSCost         float64 `json:"ratio_ferry_tls_to_ferry_plaintext"`     // what encryption costs Ferry
	TLSCostQEMU     float64 `json:"ratio_ferry_qemu_tls_to_ferry_plaintext"`
	TLSCostBaseline float64 `json:"ratio_qmp_tls_to_qmp_plaintext"`
}

func benchMigrateCmd() *cobra.Command {
	var rates []float64
	var runs int
	var asJSON bool
	var imageDir, strategy string
	var variants []string
	var baselineQEMU string
	var maxDowntime time.Duration
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Live migration in a 2-host testbed: Ferry against plain QMP migrate, like for like, idle and dirtying guests",
		Long: `Builds a 2-host testbed and, for each dirty rate and run, moves a fresh 256 MiB
guest once per variant, the variants taking turns:

  ferry            Ferry's default: QEMU streams to the agents, which carry it over TLS
  ferry-qemu-tls   Ferry with QEMU's own TLS channel
  ferry-plaintext  Ferry without encryption (the benchmark's cluster allows it)
  qmp-tls          plain QMP migrate between two QEMUs started by hand, with QEMU's
                   TLS, the same certificates and the same source authorization
  qmp-plaintext    the same without encryption

Every guest boots the same kernel and initramfs with the same devices and the same
kind of disk on the shared storage; the baselines run in the same host namespaces
over the same link with the same 300 ms downtime limit and no bandwidth limit.
A client in the client namespace connects to the guest every 10 ms; the longest
gap and the switchover's parts are reported. Each guest must still answer 2 s
after its move with its memory intact (ferry-guest's check of every page it
dirtied), or it counts as dead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, v := range variants {
				if !slices.Contains(allVariants, v) {
					return fmt.Errorf("--variants: %q is not one of %s", v, strings.Join(allVariants, ", "))
				}
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			res, err := benchMigrate(cmd.Context(), self, imageDir, rates, runs, strategy, variants, baselineQEMU, maxDowntime, !asJSON)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(os.Stdout, res)
			}
			printMigrateSummary(res["scenarios"].([]migScenario))
			return nil
		},
	}
	c.Flags().Float64SliceVar(&rates, "dirty", []float64{0, 16, 64}, "guest memory dirty rates to measure, MiB/s")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	c.Flags().IntVar(&runs, "runs", 5, "runs per dirty rate and variant (medians are reported)")
	c.Flags().StringVar(&imageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	c.Flags().StringVar(&strategy, "strategy", "precopy", "Ferry's strategy")
	c.Flags().StringSliceVar(&variants, "variants", allVariants, "variants to measure")
	c.Flags().DurationVar(&maxDowntime, "max-downtime", 300*time.Millisecond, "downtime limit: Ferry's --max-downtime, the baseline's downtime-limit")
	c.Flags().StringVar(&baselineQEMU, "baseline-qemu", "", "QEMU binary for the plain-QMP baseline (default: the installed one), e.g. an older build to compare")
	return c
}

func printMigrateSummary(scs []migScenario) {
	for _, s := range scs {
		fmt.Printf("dirty %.0f MiB/s:\n", s.DirtyMiBs)
		for _, v := range allVariants {
			r := s.Variants[v]
			if r == nil {
				continue
			}
			m := r.Median
			fmt.Printf("  %-16s total %6.0fms  downtime %4dms  gap %4.0fms (stop->stream %3.0f, ->running %3.0f, ->answer %3.0f)  dead %d/%d\n",
				v, m.TotalMS, m.DowntimeMS, m.GapMS, m.StopToStreamMS, m.StreamToRunMS, m.RunToAnswerMS, r.Dead, len(r.Runs))
		}
		fmt.Printf("  ratios: ferry/qmp-tls %.2f  ferry-plaintext/qmp-plaintext %.2f  TLS cost: ferry %.2f, ferry-qemu-tls %.2f, qmp %.2f\n",
			s.RatioTLS, s.RatioPlain, s.TLSCost, s.TLSCostQEMU, s.TLSCostBaseline)
	}
}

func benchMigrate(ctx context.Context, self, imageDir string, rates []float64, runs int, strategy string, variants []string, baselineQEMU string, maxDowntime time.Duration, verbose bool) (map[string]any, error) {
	img, err := image.Find(imageDir)
	if err != nil {
		return nil, err
	}
	say := sayer(verbose)
	// The agents start their TCG guests without huge pages (--guest-thp
	// auto); the baseline's QEMUs, started from here, get the same.
	if err := qemu.DisableTHP(); err != nil {
		return nil, err
	}
	b, cl, err := benchBed(ctx, "fbm", 2, self, imageDir, say)
	if err != nil {
		return nil, err
	}
	defer b.Down()
	hc := b.HTTPClient(b.ClientNS, 5*time.Second)
	// Plaintext runs measure what encryption costs; the cluster must allow
	// them, as an operator would have to.
	if _, err := cl.SetSecurity(ctx, api.SecurityRequest{PlaintextMigration: true, Reason: "benchmark: TLS against plaintext"}); err != nil {
		return nil, err
	}
	nodes, err := cl.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	var qemuVersion string
	for _, n := range nodes {
		if n.QEMU != nil {
			qemuVersion = n.QEMU.Version
		}
	}
	raw := &rawMigrator{b: b, img: img, hc: hc, say: say, qemu: baselineQEMU, downtimeMS: maxDowntime.Milliseconds()}
	baselineVersion := qemuVersion
	if baselineQEMU != "" {
		out, err := exec.CommandContext(ctx, baselineQEMU, "--version").Output()
		if err != nil {
			return nil, fmt.Errorf("--baseline-qemu: %w", err)
		}
		baselineVersion = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	mb := &migBench{b: b, cl: cl, hc: hc, raw: raw, strategy: strategy, maxDowntime: maxDowntime, say: say}
	var out []migScenario
	for _, rate := range rates {
		sc, err := mb.scenario(ctx, rate, runs, variants)
		if err != nil {
			return nil, err
		}
		out = append(out, sc)
	}
	return map[string]any{
		"benchmark": "migrate", "date": time.Now().UTC().Format(time.RFC3339), "qemu": qemuVersion, "baseline_qemu": baselineVersion,
		"hosts": 2, "guest_memory_mib": 256, "accel": "tcg", "link": "veth pair through a Linux bridge (testbed)",
		"strategy": strategy, "runs_per_rate": runs, "max_downtime_ms": maxDowntime.Milliseconds(), "variants": variants, "scenarios": out,
	}, nil
}

// migBench is one run of the migration benchmark: the testbed, the
// baseline and Ferry's options.
type migBench struct {
	b           *testbed.Bed
	cl          *client.Client
	hc          *http.Client
	raw         *rawMigrator
	strategy    string
	maxDowntime time.Duration
	say         func(string, ...any)
	n           int // guests made so far (their names)
}

// scenario measures every variant runs times at one dirty rate, in an order
// that rotates so that no variant always follows another.
func (mb *migBench) scenario(ctx context.Context, rate float64, runs int, variants []string) (migScenario, error) {
	sc := migScenario{DirtyMiBs: rate, Variants: map[string]*variantResult{}}
	for _, v := range variants {
		sc.Variants[v] = &variantResult{}
	}
	for run := 0; run < runs; run++ {
		order := append(append([]string(nil), variants[run%len(variants):]...), variants[:run%len(variants)]...)
		for _, v := range order {
			r, err := mb.once(ctx, v, rate)
			if err != nil {
				return sc, err
			}
			mb.say("%-16s dirty %2.0f MiB/s run %d: total %.0fms downtime %dms gap %.0fms (stop->stream %.0f ->running %.0f ->answer %.0f) alive %v memory %v %s",
				v, rate, run+1, r.TotalMS, r.DowntimeMS, r.GapMS, r.StopToStreamMS, r.StreamToRunMS, r.RunToAnswerMS, r.GuestAlive, r.MemoryIntact, r.Error)
			vr := sc.Variants[v]
			vr.Runs = append(vr.Runs, r)
		}
	}
	for _, vr := range sc.Variants {
		vr.Median = medianResult(vr.Runs)
		for _, r := range vr.Runs {
			switch {
			case r.Error != "":
				vr.Failed++
			case !r.GuestAlive || !r.MemoryIntact:
				vr.Dead++
			}
		}
	}
	ratio := func(a, b string) float64 {
		x, y := sc.Variants[a], sc.Variants[b]
		if x == nil || y == nil || y.Median.TotalMS == 0 {
			return 0
		}
		return x.Median.TotalMS / y.Median.TotalMS
	}
	sc.RatioTLS, sc.RatioPlain = ratio(varFerry, varRawTLS), ratio(varFerryPlain, varRawPlain)
	sc.TLSCost, sc.TLSCostQEMU, sc.TLSCostBaseline = ratio(varFerry, varFerryPlain), ratio(varFerryQEMUTLS, varFerryPlain), ratio(varRawTLS, varRawPlain)
	return sc, nil
}

// once moves one fresh guest dirtying rate MiB/s the way variant v says.
func (mb *migBench) once(ctx context.Context, v string, rate float64) (migResult, error) {
	mb.n++
	switch v {
	case varRawTLS, varRawPlain:
		return mb.raw.move(ctx, rate, v == varRawTLS), nil
	}
	opts := api.MigrateRequest{Strategy: mb.strategy, MaxDowntime: mb.maxDowntime.String()}
	switch v {
	case varFerryQEMUTLS:
		opts.Transport = api.TransportQEMU
	case varFerryPlain:
		opts.Plaintext = true
	}
	return ferryMigrateOnce(ctx, mb.b, mb.cl, mb.hc, fmt.Sprintf("bench%d", mb.n), rate, opts)
}

// medianResult takes the median of each figure over the completed runs.
func medianResult(rs []migResult) migResult {
	var tot, down, gap, qt, bytes, s2s, s2r, r2a, s2a []float64
	var errs []string
	for _, r := range rs {
		if r.Error != "" {
			errs = append(errs, r.Error)
			continue
		}
		tot, down, gap = append(tot, r.TotalMS), append(down, float64(r.DowntimeMS)), append(gap, r.GapMS)
		qt, bytes = append(qt, float64(r.QEMUTotalMS)), append(bytes, float64(r.BytesSent))
		s2s, s2r, r2a, s2a = append(s2s, r.StopToStreamMS), append(s2r, r.StreamToRunMS), append(r2a, r.RunToAnswerMS), append(s2a, r.StopToAnswerMS)
	}
	m := migResult{TotalMS: median(tot), DowntimeMS: int64(median(down)), GapMS: median(gap),
		QEMUTotalMS: int64(median(qt)), BytesSent: int64(median(bytes)),
		StopToStreamMS: median(s2s), StreamToRunMS: median(s2r), RunToAnswerMS: median(r2a), StopToAnswerMS: median(s2a)}
	if len(errs) > 0 {
		m.Error = fmt.Sprintf("%d of %d runs failed: %s", len(errs), len(rs), errs[0])
	}
	return m
}

// sayer prints progress to stderr when verbose.
func sayer(verbose bool) func(string, ...any) {
	return func(f string, a ...any) {
		if verbose {
			fmt.Fprintf(os.Stderr, f+"\n", a...)
		}
	}
}

// benchBed builds a fresh testbed of n hosts for a benchmark (removing
// leftovers of an earlier run of the same name) and a client of h1's API.
// The caller takes it down.
func benchBed(ctx context.Context, name string, n int, self, imageDir string, say func(string, ...any)) (*testbed.Bed, *client.Client, error) {
	return benchBedWith(ctx, testbed.Options{Name: name, Hosts: n, Bin: self, ImageDir: imageDir}, say)
}

// benchBedWith is benchBed with more options.
func benchBedWith(ctx context.Context, o testbed.Options, say func(string, ...any)) (*testbed.Bed, *client.Client, error) {
	testbed.Down(o.Name)
	say("building a %d-host testbed", o.Hosts)
	b, err := testbed.Up(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	cl, err := b.Client(0)
	if err != nil {
		b.Down()
		return nil, nil, err
	}
	return b, cl, nil
}

func healthy(vm *api.VM) bool {
	return vm != nil && vm.Status.Phase == api.PhaseRunning && vm.Status.Guest != nil && vm.Status.Guest.Healthy
}

// setDirty has the guest dirty memory at rate MiB/s over a 128 MiB buffer.
func setDirty(ctx context.Context, hc *http.Client, ip string, rate float64) error {
	if rate == 0 {
		return nil
	}
	return testbed.SetDirty(ctx, hc, ip, rate, 128, false)
}

// checkAfter waits 2 s and checks that the guest still answers and finds
// its memory intact: a guest whose memory arrived damaged crashes within
// moments, or fails the check.
func checkAfter(hc *http.Client, ip string, r *migResult) {
	time.Sleep(2 * time.Second)
	c, err := testbed.CheckMemory(hc, ip)
	if err != nil {
		r.MemoryCheckInfo = err.Error()
		return
	}
	r.GuestAlive, r.MemoryIntact = true, c.OK
	if !c.OK {
		r.MemoryCheckInfo = fmt.Sprintf("%d of %d dirtied pages stale: %s; hot pages: %s", c.Bad, c.Pages, c.FirstBad, c.HotBad)
	}
}
