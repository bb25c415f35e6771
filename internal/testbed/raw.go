package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/google/uuid"
)

// RawGuest is the tiny image run by plain QEMU in the testbed's hosts,
// outside Ferry, and moved with plain QMP: the baseline benchmarks and
// tests compare Ferry's migrations with. It sits on the guests' overlay
// like Ferry's guests, at RawIP.
type RawGuest struct {
	b    *Bed
	img  *image.Tiny
	qemu string // the QEMU binary ("": the installed one)
	dir  string
	disk string
	id   string
	pids []int
	// Src and Dst are the QMP monitors of the QEMU on host 0 and the
	// target's on host 1 (once started).
	Src, Dst qemu.QMP
}

// The baseline guest's address, MAC and tap (in every host).
const RawIP, rawMAC, rawTap = "198.19.250.10", "52:54:00:13:fa:0a", "fyraw"

// BootRaw boots the tiny image with plain QEMU (binary; "" for the
// installed one) on host 0 and waits until it answers from the client
// namespace. Close removes it.
func (b *Bed) BootRaw(ctx context.Context, img *image.Tiny, binary string) (*RawGuest, error) {
	g := &RawGuest{b: b, img: img, qemu: binary, dir: filepath.Join(b.Dir, "raw"), disk: filepath.Join(b.StorageDir, "raw-disk0.qcow2"), id: uuid.NewString()}
	os.RemoveAll(g.dir)
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		return nil, err
	}
	os.Remove(g.disk)
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", g.disk, "1G").CombinedOutput(); err != nil {
		g.Close()
		return nil, fmt.Errorf("qemu-img: %v: %s", err, out)
	}
	var err error
	if g.Src, err = g.launch(ctx, 0, ""); err != nil {
		g.Close()
		return nil, err
	}
	hc := b.HTTPClient(b.ClientNS, 2*time.Second)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := hc.Get("http://" + RawIP + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return g, nil
			}
		}
		if time.Now().After(deadline) {
			g.Close()
			return nil, fmt.Errorf("the raw guest never answered")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// config is the baseline guest's QEMU on host i.
func (g *RawGuest) config(i int) (*qemu.Config, error) {
	kernel, err := g.img.KernelFor(api.BootPVH)
	if err != nil {
		return nil, err
	}
	return &qemu.Config{Name: "raw", UUID: g.id, MemoryMiB: 256, CPUs: 1, Accel: "tcg",
		Kernel: kernel, Initrd: g.img.Initrd,
		Append:    "console=ttyS0 quiet panic=1 ferry.name=raw ferry.ip=" + RawIP + "/16",
		QMPSocket: filepath.Join(g.dir, fmt.Sprintf("q%d", i)), PidFile: filepath.Join(g.dir, fmt.Sprintf("p%d", i)),
		Disks: []qemu.Disk{{Path: g.disk, Format: "qcow2"}}, Watchdog: true,
		Net:    &qemu.Net{Mode: "tap", Tap: rawTap, MAC: rawMAC, MTU: 1450},
		Prefix: []string{"ip", "netns", "exec", g.b.Hosts[i].NS}, Binary: g.qemu}, nil
}

// launch starts QEMU on host i (incoming: "defer" for a target) on a tap
// of the overlay bridge.
func (g *RawGuest) launch(ctx context.Context, i int, incoming string) (qemu.QMP, error) {
	ns := g.b.Hosts[i].NS
	for _, args := range [][]string{
		{"-n", ns, "tuntap", "add", "dev", rawTap, "mode", "tap", "vnet_hdr"},
		{"-n", ns, "link", "set", rawTap, "master", "ferry0", "mtu", "1450", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return qemu.QMP{}, fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	cfg, err := g.config(i)
	if err != nil {
		return qemu.QMP{}, err
	}
	cfg.Incoming = incoming
	pid, err := qemu.Launch(ctx, cfg, filepath.Join(g.dir, fmt.Sprintf("log%d", i)))
	if err != nil {
		return qemu.QMP{}, err
	}
	g.pids = append(g.pids, pid)
	return qemu.DialQMP(ctx, cfg.QMPSocket)
}

// StartTarget starts the paused target QEMU on host 1.
func (g *RawGuest) StartTarget(ctx context.Context) (err error) {
	g.Dst, err = g.launch(ctx, 1, "defer")
	return err
}

// Migrate starts a migration as a careful operator would by hand: events
// on both sides, QEMU's TLS if asked (the hosts' migration certificates,
// only host 0 admitted), the source's parameters (nil: QEMU's defaults),
// then migrate. The caller follows it on Src and Dst.
func (g *RawGuest) Migrate(ctx context.Context, tls bool, params map[string]any) error {
	b := g.b
	migDir := func(i int) string { return filepath.Join(b.Hosts[i].DataDir, "pki", pki.MigrationDir) }
	for _, c := range []qemu.QMP{g.Src, g.Dst} {
		if err := c.SetMigrationCapabilities(ctx, map[string]bool{"events": true}); err != nil {
			return err
		}
	}
	if tls {
		if err := g.Dst.SetupIncomingTLS(ctx, qemu.MigrationTLS{Dir: migDir(1), AllowDN: pki.MigrationDN(b.Hosts[0].Name)}); err != nil {
			return err
		}
		if err := g.Src.SetupOutgoingTLS(ctx, qemu.MigrationTLS{Dir: migDir(0), Hostname: b.Hosts[1].Name}); err != nil {
			return err
		}
	}
	uri := "tcp:" + b.Hosts[1].Addr + ":" + strconv.Itoa(49152+int(time.Now().UnixNano()%1000))
	if err := g.Dst.MigrateIncoming(ctx, uri); err != nil {
		return err
	}
	if len(params) > 0 {
		if err := g.Src.SetMigrationParameters(ctx, params); err != nil {
			return err
		}
	}
	return g.Src.Migrate(ctx, uri)
}

// WaitResumed waits for the target's RESUME (it runs by itself when the
// stream completes) and returns when the stream completed and when the
// target ran.
func (g *RawGuest) WaitResumed(ctx context.Context, limit time.Duration) (streamDone, running time.Time, err error) {
	timeout := time.After(limit)
	for running.IsZero() {
		select {
		case ev := <-g.Dst.Events():
			switch ev.Name {
			case "RESUME":
				running = ev.Timestamp
			case "MIGRATION":
				var d struct {
					Status string `json:"status"`
				}
				json.Unmarshal(ev.Data, &d)
				if d.Status == "completed" {
					streamDone = ev.Timestamp
				}
			}
		case <-timeout:
			return streamDone, running, fmt.Errorf("the raw migration did not finish within %s", limit)
		case <-ctx.Done():
			return streamDone, running, ctx.Err()
		}
	}
	return streamDone, running, nil
}

// Close kills the baseline's QEMUs and removes its taps and files.
func (g *RawGuest) Close() {
	for _, c := range []qemu.QMP{g.Src, g.Dst} {
		if c.Monitor != nil {
			c.Close()
		}
	}
	for _, pid := range g.pids {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		qemu.Kill(kctx, pid, g.id)
		cancel()
	}
	for _, h := range g.b.Hosts {
		exec.Command("ip", "-n", h.NS, "link", "del", rawTap).Run()
	}
	os.RemoveAll(g.dir)
	os.Remove(g.disk)
}

// SetDirty has the guest at ip (its ferry-guest) dirty rate MiB/s of a
// sizeMiB buffer, whole pages of random bytes if random (they do not
// compress), else three words per page; then waits a second for the rate
// to establish itself.
func SetDirty(ctx context.Context, hc *http.Client, ip string, rate float64, sizeMiB int, random bool) error {
	fill := "sparse"
	if random {
		fill = "random"
	}
	req, _ := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("http://%s/dirty?rate=%g&size=%d&fill=%s", ip, rate, sizeMiB, fill), nil)
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("asking the guest to dirty memory: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("asking the guest to dirty memory: %s", resp.Status)
	}
	time.Sleep(time.Second)
	return nil
}

// MemoryCheck is the guest's check of the pages it dirtied.
type MemoryCheck struct {
	OK       bool   `json:"ok"`
	Bad      int    `json:"dirty_pages_bad"`
	Pages    int    `json:"dirty_pages_checked"`
	FirstBad string `json:"first_bad"`
	HotBad   string `json:"hot_bad"`
}

// CheckMemory asks the guest at ip whether every page it dirtied holds
// what it wrote (a page sent stale in a migration shows here).
func CheckMemory(hc *http.Client, ip string) (MemoryCheck, error) {
	var c MemoryCheck
	resp, err := hc.Get("http://" + ip + "/memory")
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return c, fmt.Errorf("GET /memory: %s", resp.Status)
	}
	return c, json.NewDecoder(resp.Body).Decode(&c)
}
