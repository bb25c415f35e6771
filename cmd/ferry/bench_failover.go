package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/spf13/cobra"
)

// failoverRun is one host death under an HA guest. Times are from the
// moment every process of the host was killed.
type failoverRun struct {
	Host        string  `json:"host"`
	DetectionMS float64 `json:"detection_ms"`       // the leader reported the host unreachable
	LeaseMS     float64 `json:"lease_expired_ms"`   // the HA manager saw the host's lease expire
	RestartMS   float64 `json:"restart_issued_ms"`  // it placed the guest on a surviving host
	AnswerMS    float64 `json:"answering_again_ms"` // the client got an HTTP answer from the new boot
	NewHost     string  `json:"new_host"`
	Error       string  `json:"error,omitempty"`
}

type failoverStats struct {
	Median float64 `json:"median_ms"`
	Max    float64 `json:"max_ms"`
}

func benchFailoverCmd() *cobra.Command {
	var runs int
	var asJSON bool
	var imageDir string
	c := &cobra.Command{
		Use:   "failover",
		Short: "Kill a host under a running HA guest and time detection, restart and the guest answering again",
		Long: `Builds a 3-host testbed (h1 holds the API and is kept out of the way in
maintenance), and for each run creates a 256 MiB HA guest, waits until a client
in the client namespace gets HTTP answers from it, then kills every process of
the guest's host at once (agent, etcd member, watchdog, QEMU). It reports the
time until the leader reported the host unreachable (detection: its alive key
went quiet), until the HA manager saw the host's lease expire, until it placed
the guest on a surviving host (restart issued), and until the client got an
HTTP answer from the guest's new boot. The killed host is brought back between
runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			res, err := benchFailover(cmd.Context(), self, imageDir, runs, !asJSON)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(os.Stdout, res)
			}
			for _, k := range []string{"detection", "lease_expired", "restart_issued", "answering_again"} {
				s := res[k].(failoverStats)
				fmt.Printf("%-16s median %6.0f ms  max %6.0f ms\n", k, s.Median, s.Max)
			}
			return nil
		},
	}
	c.Flags().IntVar(&runs, "runs", 5, "host deaths to measure")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	c.Flags().StringVar(&imageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	return c
}

func benchFailover(ctx context.Context, self, imageDir string, runs int, verbose bool) (map[string]any, error) {
	if _, err := image.Find(imageDir); err != nil {
		return nil, err
	}
	say := sayer(verbose)
	b, cl, err := benchBed(ctx, "fbf", 3, self, imageDir, say)
	if err != nil {
		return nil, err
	}
	defer b.Down()
	// h1 serves the API this benchmark talks to: keep guests off it.
	if _, err := cl.DrainNode(ctx, b.Hosts[0].Name); err != nil {
		return nil, err
	}
	var rs []failoverRun
	for run := 1; run <= runs; run++ {
		r := failoverOnce(ctx, b, cl, fmt.Sprintf("fo%d", run))
		say("run %d: %+v", run, r)
		rs = append(rs, r)
	}
	stats := func(get func(failoverRun) float64) failoverStats {
		var v []float64
		for _, r := range rs {
			if r.Error == "" {
				v = append(v, get(r))
			}
		}
		return failoverStats{Median: median(v), Max: maxOf(v)}
	}
	t := ha.DefaultTiming()
	failed := 0
	for _, r := range rs {
		if r.Error != "" {
			failed++
		}
	}
	return map[string]any{
		"benchmark": "failover", "date": time.Now().UTC().Format(time.RFC3339), "qemu": qemuVersionOf(ctx),
		"hosts": 3, "guest_memory_mib": 256, "accel": "tcg", "runs": rs, "failed_runs": failed,
		"lease_ttl_ms": t.LeaseTTL.Milliseconds(), "self_fence_ms": t.FenceAfter.Milliseconds(),
		"watchdog_ms": t.WatchdogAfter.Milliseconds(), "margin_ms": t.Margin.Milliseconds(),
		"detection":       stats(func(r failoverRun) float64 { return r.DetectionMS }),
		"lease_expired":   stats(func(r failoverRun) float64 { return r.LeaseMS }),
		"restart_issued":  stats(func(r failoverRun) float64 { return r.RestartMS }),
		"answering_again": stats(func(r failoverRun) float64 { return r.AnswerMS }),
	}, nil
}

// failoverOnce creates an HA guest, kills its host, measures, and cleans up.
func failoverOnce(ctx context.Context, b *testbed.Bed, cl *client.Client, vmName string) (r failoverRun) {
	fail := func(err error) failoverRun { r.Error = err.Error(); return r }
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: vmName, HA: true}); err != nil {
		return fail(err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cl.DeleteVM(dctx, vmName)
		cl.WaitVM(dctx, vmName, func(vm *api.VM) (bool, error) { return vm == nil, nil })
	}()
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	vm, err := cl.WaitVM(wctx, vmName, func(vm *api.VM) (bool, error) { return healthy(vm), nil })
	cancel()
	if err != nil {
		return fail(fmt.Errorf("guest did not come up: %w", err))
	}
	ip := strings.Split(vm.Spec.IP, "/")[0]
	hc := b.HTTPClient(b.ClientNS, 300*time.Millisecond)
	boot, err := bootID(ctx, hc, ip)
	if err != nil {
		return fail(fmt.Errorf("client cannot reach the guest: %w", err))
	}
	host := -1
	for i, h := range b.Hosts {
		if h.Name == vm.Node {
			host = i
		}
	}
	if host <= 0 {
		return fail(fmt.Errorf("guest placed on %q, not on a host that may be killed", vm.Node))
	}
	r.Host = vm.Node
	time.Sleep(time.Second) // let the lease renewals settle into their rhythm
	killed := time.Now()
	if err := b.KillHost(host); err != nil {
		return fail(err)
	}
	defer func() {
		if err := b.StartAgent(ctx, host); err == nil {
			b.WaitNodes(ctx, len(b.Hosts))
		}
		// Killed again and again, the host counts as flapping and the HA
		// manager drains it; as an operator would once it is fixed, bring
		// it back into service.
		time.Sleep(time.Second)
		cl.UndrainNode(ctx, b.Hosts[host].Name)
	}()
	deadline := killed.Add(60 * time.Second)
	for {
		if id, err := bootID(ctx, hc, ip); err == nil && id != boot {
			r.AnswerMS = ms(time.Since(killed))
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the guest did not answer from a new boot within 60 s"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.readEvents(ctx, cl, killed, vmName); err != nil {
		return fail(err)
	}
	return r
}

// readEvents times detection, the lease's expiry and the restart from the
// cluster's events after the kill.
func (r *failoverRun) readEvents(ctx context.Context, cl *client.Client, killed time.Time, vmName string) error {
	evs, err := cl.Events(ctx, 100)
	if err != nil {
		return err
	}
	for _, e := range evs {
		if e.Time.Before(killed) {
			continue
		}
		switch {
		case e.Kind == "host-unreachable" && e.Node == r.Host && r.DetectionMS == 0:
			r.DetectionMS = ms(e.Time.Sub(killed))
		case e.Kind == "host-lost" && e.Node == r.Host && r.LeaseMS == 0:
			r.LeaseMS = ms(e.Time.Sub(killed))
		case e.Kind == "ha-restart" && e.VM == vmName && r.RestartMS == 0:
			r.RestartMS = ms(e.Time.Sub(killed))
			r.NewHost = e.Node
		}
	}
	if r.DetectionMS == 0 || r.LeaseMS == 0 || r.RestartMS == 0 {
		return fmt.Errorf("no host-unreachable, host-lost or ha-restart event after the kill")
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func bootID(ctx context.Context, hc *http.Client, ip string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ip+"/health", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var h struct {
		BootID string `json:"boot_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return "", err
	}
	return h.BootID, nil
}
