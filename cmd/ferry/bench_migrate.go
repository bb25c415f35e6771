package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

// migResult is one measured migration.
type migResult struct {
	TotalMS     float64 `json:"total_ms"`      // target launch (raw) or API request (Ferry) -> guest runs on the target
	QEMUTotalMS int64   `json:"qemu_total_ms"` // QEMU's own total-time
	DowntimeMS  int64   `json:"downtime_ms"`   // QEMU-reported downtime
	BytesSent   int64   `json:"bytes_sent"`
	GapMS       float64 `json:"client_gap_ms"` // longest gap between successful TCP probes every 10 ms
	// GuestAlive: the guest still answered HTTP 2 s after the move.
	GuestAlive bool   `json:"guest_alive_after"`
	Error      string `json:"error,omitempty"`
}

type migScenario struct {
	DirtyMiBs    float64     `json:"dirty_rate_mib_s"`
	RawCrashes   int         `json:"raw_guests_crashed_after"`
	FerryCrashes int         `json:"ferry_guests_crashed_after"`
	RawRuns      []migResult `json:"raw_qemu_runs"`
	FerryRuns    []migResult `json:"ferry_runs"`
	Raw          migResult   `json:"raw_qemu_median"`
	Ferry        migResult   `json:"ferry_median"`
	// RatioTotal is Ferry's median total time over the baseline's.
	RatioTotal float64 `json:"ratio_total_ferry_to_raw"`
	// Ferry's own migration in plaintext (allowed for the benchmark's
	// cluster), idle guests only: the cost of TLS is Ferry (TLS, the
	// default) over this.
	PlainRuns    []migResult `json:"ferry_plaintext_runs,omitempty"`
	Plain        *migResult  `json:"ferry_plaintext_median,omitempty"`
	RatioTLS     float64     `json:"ratio_total_tls_to_plaintext,omitempty"`
	RatioTLSQEMU float64     `json:"ratio_qemu_total_tls_to_plaintext,omitempty"`
}

// medianResult takes the median of each figure over the successful runs.
func medianResult(rs []migResult) migResult {
	var tot, down, gap, qt, bytes []float64
	var errs []string
	for _, r := range rs {
		if r.Error != "" {
			errs = append(errs, r.Error)
			continue
		}
		tot, down, gap = append(tot, r.TotalMS), append(down, float64(r.DowntimeMS)), append(gap, r.GapMS)
		qt, bytes = append(qt, float64(r.QEMUTotalMS)), append(bytes, float64(r.BytesSent))
	}
	m := migResult{TotalMS: median(tot), DowntimeMS: int64(median(down)), GapMS: median(gap),
		QEMUTotalMS: int64(median(qt)), BytesSent: int64(median(bytes))}
	if len(errs) > 0 {
		m.Error = fmt.Sprintf("%d of %d runs failed: %s", len(errs), len(rs), errs[0])
	}
	return m
}

func benchMigrateCmd() *cobra.Command {
	var rates []float64
	var runs int
	var asJSON bool
	var imageDir, strategy string
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Live migration in a 2-host testbed: Ferry against plain QMP migrate, idle and dirtying guests",
		Long: `Builds a 2-host testbed, and for each dirty rate migrates a 256 MiB guest with
Ferry (API request to guest running on the target) and, as the baseline, the same
guest (same devices, same disk on the shared storage) migrated by plain QMP
migrate between two QEMUs started by hand in the same host namespaces over the
same link. A client in the client namespace probes each guest over TCP every
10 ms and the longest gap between answers is reported.

Ferry's migrations are TLS (the default). For idle guests Ferry also migrates
in plaintext (the benchmark's cluster allows it) and reports TLS against
plaintext: what encryption and source authorization cost.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			res, err := benchMigrate(cmd.Context(), self, imageDir, rates, runs, strategy, !asJSON)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(os.Stdout, res)
			}
			for _, s := range res["scenarios"].([]migScenario) {
				fmt.Printf("dirty %3.0f MiB/s: raw %6.0fms (downtime %3dms, gap %4.0fms)  ferry %6.0fms (downtime %3dms, gap %4.0fms)  ratio %.2f\n",
					s.DirtyMiBs, s.Raw.TotalMS, s.Raw.DowntimeMS, s.Raw.GapMS, s.Ferry.TotalMS, s.Ferry.DowntimeMS, s.Ferry.GapMS, s.RatioTotal)
				if s.Plain != nil {
					fmt.Printf("                 ferry TLS %6.0fms against plaintext %6.0fms: ratio %.2f (QEMU's own total: %.2f)\n",
						s.Ferry.TotalMS, s.Plain.TotalMS, s.RatioTLS, s.RatioTLSQEMU)
				}
			}
			return nil
		},
	}
	c.Flags().Float64SliceVar(&rates, "dirty", []float64{0, 16, 64}, "guest memory dirty rates to measure, MiB/s")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	c.Flags().IntVar(&runs, "runs", 5, "runs per dirty rate (medians are reported)")
	c.Flags().StringVar(&imageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	c.Flags().StringVar(&strategy, "strategy", "precopy", "Ferry's strategy")
	return c
}

func benchMigrate(ctx context.Context, self, imageDir string, rates []float64, runs int, strategy string, verbose bool) (map[string]any, error) {
	img, err := image.Find(imageDir)
	if err != nil {
		return nil, err
	}
	say := sayer(verbose)
	b, cl, err := benchBed(ctx, "fbm", 2, self, imageDir, say)
	if err != nil {
		return nil, err
	}
	defer b.Down()
	hc := b.HTTPClient(b.ClientNS, 5*time.Second)
	// Plaintext runs (idle guests) measure what TLS costs; the cluster must
	// allow them, as an operator would have to.
	if _, err := cl.SetSecurity(ctx, api.SecurityRequest{PlaintextMigration: true, Reason: "benchmark: TLS against plaintext"}); err != nil {
		return nil, err
	}

	var out []migScenario
	n := 0
	for _, rate := range rates {
		sc := migScenario{DirtyMiBs: rate}
		for run := 0; run < runs; run++ {
			n++
			// Alternate which goes first so that neither always meets a
			// machine still busy with the other.
			for _, ferryTurn := range []bool{run%2 == 0, run%2 != 0} {
				if ferryTurn {
					fr, err := ferryMigrateOnce(ctx, b, cl, hc, fmt.Sprintf("bench%d", n), rate, strategy, false)
					if err != nil {
						return nil, err
					}
					say("ferry (TLS), dirty %.0f MiB/s, run %d: %+v", rate, run+1, fr)
					sc.FerryRuns = append(sc.FerryRuns, fr)
					if rate == 0 {
						pr, err := ferryMigrateOnce(ctx, b, cl, hc, fmt.Sprintf("plain%d", n), rate, strategy, true)
						if err != nil {
							return nil, err
						}
						say("ferry (plaintext), dirty %.0f MiB/s, run %d: %+v", rate, run+1, pr)
						sc.PlainRuns = append(sc.PlainRuns, pr)
					}
				} else {
					rr := rawMigrate(ctx, b, img, hc, rate, say)
					say("raw qemu, dirty %.0f MiB/s, run %d: %+v", rate, run+1, rr)
					sc.RawRuns = append(sc.RawRuns, rr)
				}
			}
		}
		sc.Ferry, sc.Raw = medianResult(sc.FerryRuns), medianResult(sc.RawRuns)
		for _, r := range sc.FerryRuns {
			if r.Error == "" && !r.GuestAlive {
				sc.FerryCrashes++
			}
		}
		for _, r := range sc.RawRuns {
			if r.Error == "" && !r.GuestAlive {
				sc.RawCrashes++
			}
		}
		if sc.Raw.TotalMS > 0 {
			sc.RatioTotal = sc.Ferry.TotalMS / sc.Raw.TotalMS
		}
		if len(sc.PlainRuns) > 0 {
			p := medianResult(sc.PlainRuns)
			sc.Plain = &p
			if p.TotalMS > 0 {
				sc.RatioTLS = sc.Ferry.TotalMS / p.TotalMS
			}
			if p.QEMUTotalMS > 0 {
				sc.RatioTLSQEMU = float64(sc.Ferry.QEMUTotalMS) / float64(p.QEMUTotalMS)
			}
		}
		out = append(out, sc)
	}
	return map[string]any{
		"benchmark": "migrate", "date": time.Now().UTC().Format(time.RFC3339),
		"hosts": 2, "guest_memory_mib": 256, "accel": "tcg", "link": "veth pair through a Linux bridge (testbed)",
		"strategy": strategy, "runs_per_rate": runs, "scenarios": out,
	}, nil
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
	testbed.Down(name)
	say("building a %d-host testbed", n)
	b, err := testbed.Up(ctx, testbed.Options{Name: name, Hosts: n, Bin: self, ImageDir: imageDir})
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

func setDirty(ctx context.Context, hc *http.Client, ip string, rate float64) error {
	req, _ := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("http://%s/dirty?rate=%g&size=128", ip, rate), nil)
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("asking the guest to dirty memory: %w", err)
	}
	resp.Body.Close()
	if rate > 0 {
		time.Sleep(time.Second) // let the rate establish itself
	}
	return nil
}

// prober connects to the guest's port 80 every 10 ms from the client
// namespace and remembers the longest time without a successful connection.
type prober struct {
	mu     sync.Mutex
	last   time.Time
	maxGap time.Duration
	done   chan struct{}
	wg     sync.WaitGroup
}

func startProber(ns, ip string) *prober {
	p := &prober{last: time.Now(), done: make(chan struct{})}
	dial := testbed.DialIn(ns)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			c, err := dial(ctx, "tcp", ip+":80")
			cancel()
			if err != nil {
				continue
			}
			c.Close()
			now := time.Now()
			p.mu.Lock()
			if g := now.Sub(p.last); g > p.maxGap {
				p.maxGap = g
			}
			p.last = now
			p.mu.Unlock()
		}
	}()
	return p
}

// stop ends probing and returns the longest gap in milliseconds.
func (p *prober) stop() float64 {
	close(p.done)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if g := time.Since(p.last); g > p.maxGap {
		p.maxGap = g
	}
	return float64(p.maxGap.Microseconds()) / 1000
}

// rawMigrate boots the tiny guest with plain QEMU in host 1, then migrates
// it with plain QMP to a QEMU started in host 2, and times it.
func rawMigrate(ctx context.Context, b *testbed.Bed, img *image.Tiny, hc *http.Client, rate float64, say func(string, ...any)) migResult {
	fail := func(err error) migResult { return migResult{Error: err.Error()} }
	dir := filepath.Join(b.Dir, "raw")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	disk := filepath.Join(b.StorageDir, "raw-disk0.qcow2")
	os.Remove(disk)
	defer os.Remove(disk)
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", disk, "256M").CombinedOutput(); err != nil {
		return fail(fmt.Errorf("qemu-img: %v: %s", err, out))
	}
	const ip, mac, tap = "198.19.250.10", "52:54:00:13:fa:0a", "fyraw"
	id := uuid.NewString()
	cfgFor := func(i int) *qemu.Config {
		h := b.Hosts[i]
		return &qemu.Config{Name: "raw", UUID: id, MemoryMiB: 256, CPUs: 1, Accel: "tcg",
			Kernel: img.Kernel, Initrd: img.Initrd,
			Append:    "console=ttyS0 quiet panic=1 ferry.name=raw ferry.ip=" + ip + "/16",
			QMPSocket: filepath.Join(dir, fmt.Sprintf("q%d", i)), PidFile: filepath.Join(dir, fmt.Sprintf("p%d", i)),
			Disks: []qemu.Disk{{Path: disk, Format: "qcow2"}}, Watchdog: true,
			Net:    &qemu.Net{Mode: "tap", Tap: tap, MAC: mac, MTU: 1450},
			Prefix: []string{"ip", "netns", "exec", h.NS}}
	}
	var pids []int
	defer func() {
		for _, pid := range pids {
			kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			qemu.Kill(kctx, pid, id)
			cancel()
		}
		for _, h := range b.Hosts {
			exec.Command("ip", "-n", h.NS, "link", "del", tap).Run()
		}
	}()
	mkTap := func(i int) error {
		ns := b.Hosts[i].NS
		for _, args := range [][]string{
			{"-n", ns, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"},
			{"-n", ns, "link", "set", tap, "master", "ferry0", "mtu", "1450", "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %v: %v: %s", args, err, out)
			}
		}
		return nil
	}
	if err := mkTap(0); err != nil {
		return fail(err)
	}
	src := cfgFor(0)
	pid, err := qemu.Launch(ctx, src, filepath.Join(dir, "log0"))
	if err != nil {
		return fail(err)
	}
	pids = append(pids, pid)
	sq, err := qemu.Dial(ctx, src.QMPSocket)
	if err != nil {
		return fail(err)
	}
	defer sq.Close()
	// Wait until the guest answers, then let it dirty memory.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := hc.Get("http://" + ip + "/health")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("raw guest never answered: %v", err))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Let the fresh guest settle as long as Ferry's had before its first move.
	time.Sleep(5 * time.Second)
	if err := setDirty(ctx, hc, ip, rate); err != nil {
		return fail(err)
	}
	pr := startProber(b.ClientNS, ip)
	gapDone := false
	defer func() {
		if !gapDone {
			pr.stop()
		}
	}()

	t0 := time.Now()
	if err := mkTap(1); err != nil {
		return fail(err)
	}
	dst := cfgFor(1)
	port := 49152 + int(time.Now().UnixNano()%1000)
	uri := "tcp:" + b.Hosts[1].Addr + ":" + strconv.Itoa(port)
	dst.Incoming = uri
	dpid, err := qemu.Launch(ctx, dst, filepath.Join(dir, "log1"))
	if err != nil {
		return fail(err)
	}
	pids = append(pids, dpid)
	dq, err := qemu.Dial(ctx, dst.QMPSocket)
	if err != nil {
		return fail(err)
	}
	defer dq.Close()
	if err := sq.SetMigrationCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		return fail(err)
	}
	if err := sq.SetMigrationParameters(ctx, map[string]any{"downtime-limit": 300, "max-bandwidth": int64(1) << 40}); err != nil {
		return fail(err)
	}
	if err := sq.Migrate(ctx, uri); err != nil {
		return fail(err)
	}
	// The target runs by itself when the stream completes: wait for RESUME.
	var info qemu.MigrationInfo
	for {
		select {
		case ev := <-dq.Events():
			if ev.Name != "RESUME" {
				continue
			}
		case <-time.After(10 * time.Minute):
			return fail(fmt.Errorf("raw migration did not finish"))
		}
		break
	}
	total := time.Since(t0)
	for i := 0; i < 50; i++ {
		if info, err = sq.QueryMigrate(ctx); err == nil && info.Status == "completed" && info.TotalTime > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	gap := pr.stop()
	gapDone = true
	r := migResult{TotalMS: float64(total.Microseconds()) / 1000, QEMUTotalMS: info.TotalTime, DowntimeMS: info.Downtime, GapMS: gap,
		GuestAlive: aliveAfter(hc, ip)}
	if info.RAM != nil {
		r.BytesSent = info.RAM.Transferred
	}
	if info.Status != "completed" {
		r.Error = "raw migration: " + info.Status + " " + info.ErrorDesc
	}
	return r
}

// ferryMigrateOnce creates a fresh guest, lets it settle and dirty memory,
// migrates it with Ferry while a client probes it, and deletes it.
func ferryMigrateOnce(ctx context.Context, b *testbed.Bed, cl *client.Client, hc *http.Client, vmName string, rate float64, strategy string, plaintext bool) (migResult, error) {
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: vmName}); err != nil {
		return migResult{}, err
	}
	defer cl.DeleteVM(ctx, vmName)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	vm, err := cl.WaitVM(wctx, vmName, func(vm *api.VM) (bool, error) { return healthy(vm), nil })
	cancel()
	if err != nil {
		return migResult{}, err
	}
	time.Sleep(5 * time.Second) // the same settling time the baseline's guest gets
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")
	to := b.Hosts[0].Name
	if vm.Node == to {
		to = b.Hosts[1].Name
	}
	if err := setDirty(ctx, hc, ip, rate); err != nil {
		return migResult{}, err
	}
	pr := startProber(b.ClientNS, ip)
	m, err := cl.MigrateVM(ctx, vmName, api.MigrateRequest{To: to, Strategy: strategy, Plaintext: plaintext})
	if err != nil {
		pr.stop()
		return migResult{Error: err.Error()}, nil
	}
	wctx, cancel = context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	m, err = cl.WaitMigration(wctx, vmName, m.ID, nil)
	time.Sleep(300 * time.Millisecond) // let the prober see the guest again
	gap := pr.stop()
	if err != nil {
		return migResult{Error: err.Error()}, nil
	}
	// Ferry's total ends when the guest runs on the target, as the
	// baseline's ends at the target's RESUME event.
	end := m.Finished
	for _, e := range m.Timeline {
		if e.Step == "guest resumed on target" {
			end = e.At
		}
	}
	r := migResult{TotalMS: float64(end.Sub(m.Started).Microseconds()) / 1000, QEMUTotalMS: m.TotalTimeMS,
		DowntimeMS: m.DowntimeMS, BytesSent: m.Progress.TransferredBytes, GapMS: gap, GuestAlive: aliveAfter(hc, ip)}
	if m.Phase != api.MigCompleted {
		r.Error = m.Phase + ": " + m.Error
	}
	return r, nil
}

// aliveAfter waits 2 s and checks the guest still answers: a guest whose
// memory arrived damaged crashes within moments of the move.
func aliveAfter(hc *http.Client, ip string) bool {
	time.Sleep(2 * time.Second)
	resp, err := hc.Get("http://" + ip + "/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}
