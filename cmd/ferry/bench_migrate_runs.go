package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/google/uuid"
)

// ferryMigrateOnce creates a fresh guest, has it dirty memory, migrates it
// with Ferry while a client probes it, checks it afterwards and deletes it.
func ferryMigrateOnce(ctx context.Context, b *testbed.Bed, cl *client.Client, hc *http.Client, vmName string, rate float64, req api.MigrateRequest) (migResult, error) {
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
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")
	req.To = b.Hosts[0].Name
	if vm.Node == req.To {
		req.To = b.Hosts[1].Name
	}
	if err := setDirty(ctx, hc, ip, rate); err != nil {
		return migResult{}, err
	}
	pr := startProber(b.ClientNS, ip)
	defer pr.stop()
	m, err := cl.MigrateVM(ctx, vmName, req)
	if err != nil {
		return migResult{Error: err.Error()}, nil
	}
	wctx, cancel = context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	m, err = cl.WaitMigration(wctx, vmName, m.ID, nil)
	time.Sleep(300 * time.Millisecond) // let the prober see the guest again
	pr.stop()
	if err != nil {
		return migResult{Error: err.Error()}, nil
	}
	// Ferry's total ends when the guest runs on the target, as the
	// baseline's ends at the target's RESUME event.
	var stopped, streamDone, running time.Time
	end := m.Finished
	for _, e := range m.Timeline {
		switch {
		case strings.HasPrefix(e.Step, "guest paused on source"):
			stopped = e.At
		case e.Step == "stream complete on target":
			streamDone = e.At
		case strings.HasPrefix(e.Step, "guest resumed on target"):
			end, running = e.At, e.At
		}
	}
	r := migResult{TotalMS: ms(end.Sub(m.Started)), QEMUTotalMS: m.TotalTimeMS,
		DowntimeMS: m.DowntimeMS, BytesSent: m.Progress.TransferredBytes, GapMS: pr.gap()}
	pr.switchover(&r, stopped, streamDone, running)
	if m.Phase != api.MigCompleted {
		r.Error = m.Phase + ": " + m.Error
		return r, nil
	}
	checkAfter(hc, ip, &r)
	return r, nil
}

// rawMigrator is the baseline: the same guest booted with plain QEMU in
// host 1 and migrated with plain QMP to a QEMU started by hand in host 2.
type rawMigrator struct {
	b   *testbed.Bed
	img *image.Tiny
	hc  *http.Client
	say func(string, ...any)
	// qemu is the baseline's QEMU binary ("": the one Ferry runs).
	qemu string
	// downtimeMS is the baseline's downtime-limit.
	downtimeMS int64
}

// rawRun is one baseline move's guest: its files, tap and processes.
type rawRun struct {
	rm   *rawMigrator
	dir  string
	disk string
	id   string
	pids []int
}

// The baseline guest's address, MAC and tap, on both hosts.
const rawIP, rawMAC, rawTap = "198.19.250.10", "52:54:00:13:fa:0a", "fyraw"

// move boots a fresh baseline guest, has it dirty memory and migrates it,
// in QEMU's TLS (the hosts' migration certificates, only host 1 admitted)
// or in plaintext.
func (rm *rawMigrator) move(ctx context.Context, rate float64, tls bool) migResult {
	fail := func(err error) migResult { return migResult{Error: err.Error()} }
	run := &rawRun{rm: rm, dir: filepath.Join(rm.b.Dir, "raw"), disk: filepath.Join(rm.b.StorageDir, "raw-disk0.qcow2"), id: uuid.NewString()}
	defer run.cleanup()
	sq, err := run.bootSource(ctx)
	if err != nil {
		return fail(err)
	}
	defer sq.Close()
	if err := setDirty(ctx, rm.hc, rawIP, rate); err != nil {
		return fail(err)
	}
	pr := startProber(rm.b.ClientNS, rawIP)
	defer pr.stop()

	t0 := time.Now()
	dq, err := run.startTarget(ctx)
	if err != nil {
		return fail(err)
	}
	defer dq.Close()
	streamDone, running, err := run.migrate(ctx, sq, dq, tls)
	if err != nil {
		return fail(err)
	}
	total := running.Sub(t0)
	var info qemu.MigrationInfo
	for i := 0; i < 50; i++ {
		if info, err = sq.QueryMigrate(ctx); err == nil && info.Status == "completed" && info.TotalTime > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var stopped time.Time
	for len(sq.Events()) > 0 {
		if ev := <-sq.Events(); ev.Name == "STOP" {
			stopped = ev.Timestamp
		}
	}
	time.Sleep(300 * time.Millisecond)
	pr.stop()
	r := migResult{TotalMS: ms(total), QEMUTotalMS: info.TotalTime, DowntimeMS: info.Downtime, GapMS: pr.gap()}
	pr.switchover(&r, stopped, streamDone, running)
	if info.RAM != nil {
		r.BytesSent = info.RAM.Transferred
	}
	if info.Status != "completed" {
		r.Error = "raw migration: " + info.Status + " " + info.ErrorDesc
		return r
	}
	checkAfter(rm.hc, rawIP, &r)
	return r
}

// config is the baseline guest's QEMU on host i.
func (run *rawRun) config(i int) (*qemu.Config, error) {
	kernel, err := run.rm.img.KernelFor(api.BootPVH)
	if err != nil {
		return nil, err
	}
	return &qemu.Config{Name: "raw", UUID: run.id, MemoryMiB: 256, CPUs: 1, Accel: "tcg",
		Kernel: kernel, Initrd: run.rm.img.Initrd,
		Append:    "console=ttyS0 quiet panic=1 ferry.name=raw ferry.ip=" + rawIP + "/16",
		QMPSocket: filepath.Join(run.dir, fmt.Sprintf("q%d", i)), PidFile: filepath.Join(run.dir, fmt.Sprintf("p%d", i)),
		Disks: []qemu.Disk{{Path: run.disk, Format: "qcow2"}}, Watchdog: true,
		Net:    &qemu.Net{Mode: "tap", Tap: rawTap, MAC: rawMAC, MTU: 1450},
		Prefix: []string{"ip", "netns", "exec", run.rm.b.Hosts[i].NS}, Binary: run.rm.qemu}, nil
}

// tap makes the guest's tap on host i, on the overlay bridge.
func (run *rawRun) tap(i int) error {
	ns := run.rm.b.Hosts[i].NS
	for _, args := range [][]string{
		{"-n", ns, "tuntap", "add", "dev", rawTap, "mode", "tap", "vnet_hdr"},
		{"-n", ns, "link", "set", rawTap, "master", "ferry0", "mtu", "1450", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	return nil
}

// launch starts QEMU on host i (incoming: "defer" for the target).
func (run *rawRun) launch(ctx context.Context, i int, incoming string) (qemu.QMP, error) {
	if err := run.tap(i); err != nil {
		return qemu.QMP{}, err
	}
	cfg, err := run.config(i)
	if err != nil {
		return qemu.QMP{}, err
	}
	cfg.Incoming = incoming
	pid, err := qemu.Launch(ctx, cfg, filepath.Join(run.dir, fmt.Sprintf("log%d", i)))
	if err != nil {
		return qemu.QMP{}, err
	}
	run.pids = append(run.pids, pid)
	return qemu.DialQMP(ctx, cfg.QMPSocket)
}

// bootSource makes the disk and boots the guest on host 1 until it answers.
func (run *rawRun) bootSource(ctx context.Context) (qemu.QMP, error) {
	os.RemoveAll(run.dir)
	if err := os.MkdirAll(run.dir, 0o755); err != nil {
		return qemu.QMP{}, err
	}
	os.Remove(run.disk)
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", run.disk, "1G").CombinedOutput(); err != nil {
		return qemu.QMP{}, fmt.Errorf("qemu-img: %v: %s", err, out)
	}
	sq, err := run.launch(ctx, 0, "")
	if err != nil {
		return qemu.QMP{}, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var h map[string]any
		if getJSON(run.rm.hc, "http://"+rawIP+"/health", &h) == nil {
			return sq, nil
		}
		if time.Now().After(deadline) {
			sq.Close()
			return qemu.QMP{}, fmt.Errorf("raw guest never answered")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startTarget starts the paused target on host 2.
func (run *rawRun) startTarget(ctx context.Context) (qemu.QMP, error) {
	return run.launch(ctx, 1, "defer")
}

// migrate configures both QEMUs as a careful operator would by hand (events,
// TLS if asked, the downtime limit, unlimited bandwidth), migrates, and
// waits for the target's RESUME; it returns when the stream completed and
// when the target ran.
func (run *rawRun) migrate(ctx context.Context, sq, dq qemu.QMP, tls bool) (streamDone, running time.Time, err error) {
	b := run.rm.b
	migDir := func(i int) string { return filepath.Join(b.Hosts[i].DataDir, "pki", pki.MigrationDir) }
	for _, c := range []qemu.QMP{sq, dq} {
		if err := c.SetMigrationCapabilities(ctx, map[string]bool{"events": true}); err != nil {
			return streamDone, running, err
		}
	}
	if tls {
		if err := dq.SetupIncomingTLS(ctx, qemu.MigrationTLS{Dir: migDir(1), AllowDN: pki.MigrationDN(b.Hosts[0].Name)}); err != nil {
			return streamDone, running, err
		}
		if err := sq.SetupOutgoingTLS(ctx, qemu.MigrationTLS{Dir: migDir(0), Hostname: b.Hosts[1].Name}); err != nil {
			return streamDone, running, err
		}
	}
	uri := "tcp:" + b.Hosts[1].Addr + ":" + strconv.Itoa(49152+int(time.Now().UnixNano()%1000))
	if err := dq.MigrateIncoming(ctx, uri); err != nil {
		return streamDone, running, err
	}
	if err := sq.SetMigrationParameters(ctx, map[string]any{"downtime-limit": run.rm.downtimeMS, "max-bandwidth": int64(1) << 40}); err != nil {
		return streamDone, running, err
	}
	if err := sq.Migrate(ctx, uri); err != nil {
		return streamDone, running, err
	}
	// The target runs by itself when the stream completes: wait for RESUME.
	for running.IsZero() {
		select {
		case ev := <-dq.Events():
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
		case <-time.After(10 * time.Minute):
			return streamDone, running, fmt.Errorf("raw migration did not finish")
		}
	}
	return streamDone, running, nil
}

// cleanup kills the baseline's QEMUs and removes its taps and files.
func (run *rawRun) cleanup() {
	for _, pid := range run.pids {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		qemu.Kill(kctx, pid, run.id)
		cancel()
	}
	for _, h := range run.rm.b.Hosts {
		exec.Command("ip", "-n", h.NS, "link", "del", rawTap).Run()
	}
	os.RemoveAll(run.dir)
	os.Remove(run.disk)
}
