package main

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/testbed"
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

// move boots a fresh baseline guest, has it dirty memory and migrates it,
// in QEMU's TLS (the hosts' migration certificates, only host 1 admitted)
// or in plaintext, with the same downtime limit as Ferry and unlimited
// bandwidth.
func (rm *rawMigrator) move(ctx context.Context, rate float64, tls bool) migResult {
	fail := func(err error) migResult { return migResult{Error: err.Error()} }
	g, err := rm.b.BootRaw(ctx, rm.img, rm.qemu)
	if err != nil {
		return fail(err)
	}
	defer g.Close()
	if err := setDirty(ctx, rm.hc, testbed.RawIP, rate); err != nil {
		return fail(err)
	}
	pr := startProber(rm.b.ClientNS, testbed.RawIP)
	defer pr.stop()

	t0 := time.Now()
	if err := g.StartTarget(ctx); err != nil {
		return fail(err)
	}
	if err := g.Migrate(ctx, tls, map[string]any{"downtime-limit": rm.downtimeMS, "max-bandwidth": int64(1) << 40}); err != nil {
		return fail(err)
	}
	streamDone, running, err := g.WaitResumed(ctx, 10*time.Minute)
	if err != nil {
		return fail(err)
	}
	total := running.Sub(t0)
	var info qemu.MigrationInfo
	for i := 0; i < 50; i++ {
		if info, err = g.Src.QueryMigrate(ctx); err == nil && info.Status == "completed" && info.TotalTime > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var stopped time.Time
	for len(g.Src.Events()) > 0 {
		if ev := <-g.Src.Events(); ev.Name == "STOP" {
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
	checkAfter(rm.hc, testbed.RawIP, &r)
	return r
}
