package simqemu

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/wait"
)

// pair launches a running source guest on host a and a paused target
// listening on a unix socket on host b.
func pair(t *testing.T, w *World) (src, tgt qemu.QMP, sp, tp *Proc, uri string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	launch := func(host string, incoming bool) (qemu.QMP, *Proc) {
		cfg := &qemu.Config{Name: "vm1", UUID: "11111111-2222-3333-4444-555555555555", MemoryMiB: 64, CPUs: 1,
			Machine: "pc", Accel: "tcg", QMPSocket: filepath.Join(dir, host+".qmp"), PidFile: filepath.Join(dir, host+".pid"), Paused: true}
		if incoming {
			cfg.Incoming = "defer"
		}
		rt := w.Runtime(host)
		pid, err := rt.Launch(ctx, cfg, filepath.Join(dir, host+".log"))
		if err != nil {
			t.Fatal(err)
		}
		mon, err := rt.Dial(ctx, cfg.QMPSocket)
		if err != nil {
			t.Fatal(err)
		}
		return qemu.QMP{Monitor: mon}, w.proc(pid)
	}
	src, sp = launch("a", false)
	if err := src.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	tgt, tp = launch("b", true)
	uri = "unix:" + filepath.Join(dir, "mig.sock")
	if err := tgt.MigrateIncoming(ctx, uri); err != nil {
		t.Fatal(err)
	}
	return
}

// waitStatus polls query-migrate until it reports want.
func waitStatus(t *testing.T, c qemu.QMP, want string) qemu.MigrationInfo {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var info qemu.MigrationInfo
	for time.Now().Before(deadline) {
		var err error
		if info, err = c.QueryMigrate(context.Background()); err == nil && info.Status == want {
			return info
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("migration status %q, want %q", info.Status, want)
	return info
}

func TestPrecopyCompletes(t *testing.T) {
	w := NewWorld()
	ctx := context.Background()
	src, tgt, sp, tp, uri := pair(t, w)
	src.SetMigrationCapabilities(ctx, map[string]bool{"pause-before-switchover": true})
	if err := src.Migrate(ctx, uri); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, src, "pre-switchover")
	if sp.Running() {
		t.Fatal("source guest runs at pre-switchover")
	}
	if err := src.MigrateContinue(ctx); err != nil {
		t.Fatal(err)
	}
	info := waitStatus(t, src, "completed")
	if info.RAM == nil || info.RAM.Transferred != 64<<20 || info.Downtime <= 0 {
		t.Fatalf("completed migration reports %+v", info)
	}
	waitStatus(t, tgt, "completed")
	if tp.State() != "paused" || sp.State() != "postmigrate" {
		t.Fatalf("after the copy: target %s, source %s", tp.State(), sp.State())
	}
	if err := tgt.Cont(ctx); err != nil || !tp.Running() {
		t.Fatalf("target does not run after cont: %v", err)
	}
}

func TestBusyGuestNeedsRounds(t *testing.T) {
	w := NewWorld()
	w.SetBandwidth(256 << 20) // 64 MiB in 250 ms
	ctx := context.Background()
	src, _, sp, _, uri := pair(t, w)
	sp.SetDirty(512 << 20) // dirties faster than the link
	src.SetMigrationParameters(ctx, map[string]any{"downtime-limit": 50})
	src.Migrate(ctx, uri)
	// It stays active, round after round, and does not complete.
	wait.For(t, 5*time.Second, "a second round", func() (bool, error) {
		info, err := src.QueryMigrate(ctx)
		if err != nil || info.Status != "active" {
			return false, fmt.Errorf("a guest dirtying faster than the link: %+v %v", info, err)
		}
		return info.RAM != nil && info.RAM.DirtySyncCount >= 2, nil
	})
	sp.SetDirty(0)
	waitStatus(t, src, "completed")
}

func TestCancelResumesSourceAndEndsTarget(t *testing.T) {
	w := NewWorld()
	ctx := context.Background()
	src, _, sp, tp, uri := pair(t, w)
	src.SetMigrationCapabilities(ctx, map[string]bool{"pause-before-switchover": true})
	src.Migrate(ctx, uri)
	waitStatus(t, src, "pre-switchover")
	if err := src.MigrateCancel(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, src, "cancelled")
	if !sp.Running() {
		t.Fatal("cancel did not resume the source guest")
	}
	select {
	case <-tp.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the target outlived its broken pre-copy stream")
	}
}

func TestTargetCrashFailsPrecopy(t *testing.T) {
	w := NewWorld()
	w.SetBandwidth(16 << 20)
	ctx := context.Background()
	src, _, sp, tp, uri := pair(t, w)
	src.Migrate(ctx, uri)
	waitStatus(t, src, "active")
	tp.Crash()
	info := waitStatus(t, src, "failed")
	if info.ErrorDesc == "" || !sp.Running() {
		t.Fatalf("failed migration: %+v, source running %v", info, sp.Running())
	}
}

func TestPostcopyPauseAndRecover(t *testing.T) {
	w := NewWorld()
	w.SetBandwidth(64 << 20) // 1 s for the guest
	ctx := context.Background()
	src, tgt, sp, tp, uri := pair(t, w)
	src.SetMigrationCapabilities(ctx, map[string]bool{"postcopy-ram": true})
	tgt.SetMigrationCapabilities(ctx, map[string]bool{"postcopy-ram": true})
	sp.SetDirty(256 << 20)
	src.Migrate(ctx, uri)
	waitStatus(t, src, "active")
	if err := src.MigrateStartPostcopy(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, tgt, qemu.StatusPostcopyActive)
	tgt.Cont(ctx)
	if !tp.Running() || sp.Running() {
		t.Fatal("in post-copy the guest runs on the target only")
	}
	w.Stall(sp.UUID, true) // the link drops everything
	// A step already under way may still land; after it, nothing moves.
	wait.For(t, 2*time.Second, "the stalled stream to stop making progress", func() (bool, error) {
		before, _ := src.QueryMigrate(ctx)
		time.Sleep(100 * time.Millisecond)
		after, _ := src.QueryMigrate(ctx)
		return after.RAM.Transferred == before.RAM.Transferred, fmt.Errorf("%d bytes sent in 100 ms", after.RAM.Transferred-before.RAM.Transferred)
	})
	if err := src.MigratePause(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, src, qemu.StatusPostcopyPaused)
	waitStatus(t, tgt, qemu.StatusPostcopyPaused)
	w.Stall(sp.UUID, false)
	uri2 := uri + "2"
	if err := tgt.MigrateRecover(ctx, uri2); err != nil {
		t.Fatal(err)
	}
	if err := src.MigrateResume(ctx, uri2); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, src, "completed")
	waitStatus(t, tgt, "completed")
	if !tp.Running() {
		t.Fatal("the guest stopped on the target")
	}
}
