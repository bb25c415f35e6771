package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/ipam"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

// startupRun is one measurement of `ferry bench startup`.
type startupRun struct {
	AgentReadyS   float64 `json:"agent_ready_s"`    // ferry agent --dev started -> API answers
	CreateToHTTPS float64 `json:"create_to_http_s"` // vm create -> guest answers HTTP
	TotalS        float64 `json:"total_s"`          // agent start -> guest answers HTTP
	RawQEMUS      float64 `json:"raw_qemu_s"`       // baseline: plain QEMU launch -> guest answers HTTP (the kernel Ferry boots)
	// RawBzImageS: plain QEMU booting the compressed kernel, as Ferry did
	// before it booted the uncompressed one through PVH.
	RawBzImageS float64 `json:"raw_qemu_bzimage_s"`
}

func benchStartupCmd(g *globals) *cobra.Command {
	var runs int
	var asJSON bool
	var imageDir string
	c := &cobra.Command{
		Use:   "startup",
		Short: "Time from `ferry agent --dev` to a created guest answering HTTP, against plain QEMU",
		Long: `Starts a fresh single-host Ferry (a ferry agent --dev subprocess in a
temporary directory), creates a tiny guest and times until the guest answers
HTTP from the host. The baseline, measured in the same run, boots the same
image the same way (the uncompressed kernel through PVH) with plain QEMU (no
Ferry) until it answers HTTP; plain QEMU booting the compressed kernel (how
Ferry booted guests before) is timed beside it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			// The agent starts TCG guests without huge pages; so does the
			// baseline (like for like).
			if err := qemu.DisableTHP(); err != nil {
				return err
			}
			img, err := image.Find(imageDir)
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			var out []startupRun
			for i := 0; i < runs; i++ {
				r, err := startupOnce(ctx, self, imageDir)
				if err != nil {
					return fmt.Errorf("run %d: %w", i+1, err)
				}
				if r.RawQEMUS, err = rawBoot(ctx, img, api.BootPVH); err != nil {
					return fmt.Errorf("run %d baseline: %w", i+1, err)
				}
				if r.RawBzImageS, err = rawBoot(ctx, img, api.BootBzImage); err != nil {
					return fmt.Errorf("run %d compressed-kernel baseline: %w", i+1, err)
				}
				out = append(out, r)
				if !asJSON {
					fmt.Fprintf(os.Stderr, "run %d: agent ready %.2fs, create->http %.2fs, total %.2fs; raw qemu %.2fs (compressed kernel %.2fs)\n",
						i+1, r.AgentReadyS, r.CreateToHTTPS, r.TotalS, r.RawQEMUS, r.RawBzImageS)
				}
			}
			tot := make([]float64, len(out))
			raw := make([]float64, len(out))
			bz := make([]float64, len(out))
			for i, r := range out {
				tot[i], raw[i], bz[i] = r.TotalS, r.RawQEMUS, r.RawBzImageS
			}
			res := map[string]any{
				"benchmark": "startup", "date": time.Now().UTC().Format(time.RFC3339), "runs": out,
				"accel": "tcg", "memory_mib": 256,
				"total_s_median": median(tot), "total_s_max": maxOf(tot),
				"raw_qemu_s_median":         median(raw),
				"raw_qemu_bzimage_s_median": median(bz),
				"ratio_total_to_raw_median": median(tot) / median(raw),
				"qemu":                      qemuVersionOf(ctx),
			}
			if asJSON {
				return printJSON(os.Stdout, res)
			}
			fmt.Printf("ferry agent --dev -> guest answers HTTP: median %.2fs, max %.2fs (plain QEMU boot: median %.2fs, ratio %.2f; compressed kernel %.2fs)\n",
				median(tot), maxOf(tot), median(raw), median(tot)/median(raw), median(bz))
			return nil
		},
	}
	c.Flags().IntVar(&runs, "runs", 3, "how many runs")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	c.Flags().StringVar(&imageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	return c
}

func startupOnce(ctx context.Context, self, imageDir string) (startupRun, error) {
	var r startupRun
	d, err := testbed.NewDev(testbed.DevOptions{Bin: self, ImageDir: imageDir})
	if err != nil {
		return r, err
	}
	defer d.Cleanup()
	t0 := time.Now()
	if err := d.Start(ctx); err != nil {
		return r, err
	}
	r.AgentReadyS = time.Since(t0).Seconds()
	t1 := time.Now()
	vm, err := d.Client.CreateVM(ctx, api.VMCreateRequest{Name: "bench"})
	if err != nil {
		return r, err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	vm, err = d.Client.WaitVM(wctx, "bench", func(vm *api.VM) (bool, error) {
		if vm != nil && vm.Status.Phase == api.PhaseFailed {
			return false, fmt.Errorf("vm failed: %s", vm.Status.Message)
		}
		return vm != nil && vm.Status.Endpoint != "" && vm.Status.Phase == api.PhaseRunning, nil
	})
	if err != nil {
		return r, err
	}
	if err := waitHTTP(wctx, vm.Status.Endpoint); err != nil {
		return r, err
	}
	r.CreateToHTTPS = time.Since(t1).Seconds()
	r.TotalS = time.Since(t0).Seconds()
	d.Client.DeleteVM(ctx, "bench")
	return r, nil
}

// qemuVersionOf is the installed QEMU's version line.
func qemuVersionOf(ctx context.Context) string {
	v, err := qemu.BinaryVersion(ctx)
	if err != nil {
		return ""
	}
	return v
}

// rawBoot boots the tiny image with plain QEMU (its kernel loaded as boot
// says) and times until HTTP answers.
func rawBoot(ctx context.Context, img *image.Tiny, boot string) (float64, error) {
	kernel, err := img.KernelFor(boot)
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("/tmp", "fyb")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ports, err := testbed.FreePorts(1)
	if err != nil {
		return 0, err
	}
	id := uuid.NewString()
	cfg := &qemu.Config{Name: "raw", UUID: id, MemoryMiB: 256, CPUs: 1, Accel: "tcg",
		Kernel: kernel, Initrd: img.Initrd,
		Append:    "console=ttyS0 quiet panic=1 ferry.ip=198.19.0.10/16 ferry.gw=" + ipam.Gateway.String(),
		QMPSocket: filepath.Join(dir, "q"), PidFile: filepath.Join(dir, "pid"), Watchdog: true,
		Net: &qemu.Net{Mode: "user", MAC: "52:54:00:13:00:0a", UserNet: ipam.Subnet.String(), UserHost: ipam.Gateway.String(),
			HostFwd: []qemu.HostFwd{{HostAddr: "127.0.0.1", HostPort: ports[0], GuestAddr: "198.19.0.10", GuestPort: 80}}}}
	t0 := time.Now()
	pid, err := qemu.Launch(ctx, cfg, filepath.Join(dir, "log"))
	if err != nil {
		return 0, err
	}
	defer func() {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		qemu.Kill(kctx, pid, id)
		cancel()
	}()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := waitHTTP(wctx, fmt.Sprintf("127.0.0.1:%d", ports[0])); err != nil {
		return 0, err
	}
	return time.Since(t0).Seconds(), nil
}

func waitHTTP(ctx context.Context, endpoint string) error {
	hc := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+endpoint+"/health", nil)
		if resp, err := hc.Do(req); err == nil {
			var h struct {
				Status string `json:"status"`
			}
			json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if h.Status == "ok" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest at %s never answered HTTP: %w", endpoint, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func maxOf(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
