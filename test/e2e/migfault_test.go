package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/testbed"
)

// Faults during live migration. Each case starts a bandwidth-limited
// migration (about 5 s of copying), injects a fault mid-copy, and audits
// afterwards that the guest runs on exactly one host — or on none, marked
// failed, where its only copy died — that it did not reboot, and that the
// API says what happened.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestMigrationFaults(t *testing.T) {
	b, cl := newBed(t, 3)
	ctx := ctxT(t, 15*time.Minute)
	seq := 0
	// newGuest creates a guest on h2 or h3 (h1 runs the API we talk to) and
	// returns it running, with the host to migrate it to.
	newGuest := func(t *testing.T) (*api.VM, string) {
		t.Helper()
		seq++
		name := fmt.Sprintf("f%d", seq)
		if _, err := cl.DrainNode(ctx, "h1"); err != nil { // keep guests off h1
			t.Fatal(err)
		}
		defer cl.UndrainNode(ctx, "h1")
		if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: name, Memory: "256M"}); err != nil {
			t.Fatal(err)
		}
		vm := waitVM(t, cl, name, 3*time.Minute, "running and healthy", healthyRunning)
		to := "h2"
		if vm.Node == "h2" {
			to = "h3"
		}
		return vm, to
	}
	slowMigrate := func(t *testing.T, vm *api.VM, to string) *api.Migration {
		t.Helper()
		m, err := cl.MigrateVM(ctx, vm.Spec.Name, api.MigrateRequest{To: to, MaxBandwidth: "16M"})
		if err != nil {
			t.Fatal(err)
		}
		waitMigPhase(t, cl, vm.Spec.Name, m.ID, api.MigCopying)
		waitCopied(t, cl, vm.Spec.Name, m.ID, 16<<20) // well into the copy
		return m
	}
	hostIndex := func(name string) int { i, _ := strconv.Atoi(strings.TrimPrefix(name, "h")); return i - 1 }

	t.Run("target QEMU dies mid-copy", func(t *testing.T) {
		vm, to := newGuest(t)
		m := slowMigrate(t, vm, to)
		killQEMUOn(t, b, vm.Spec.UUID, to)
		m = waitMigEnd(t, cl, vm.Spec.Name, m.ID)
		if m.Phase != api.MigFailed {
			t.Fatalf("phase %s, want failed", m.Phase)
		}
		auditOne(t, b, cl, vm, vm.Node)
	})

	t.Run("target agent dies mid-copy", func(t *testing.T) {
		vm, to := newGuest(t)
		m := slowMigrate(t, vm, to)
		i := hostIndex(to)
		b.StopAgent(i, syscall.SIGKILL)
		time.Sleep(2 * time.Second)
		if err := b.StartAgent(ctx, i); err != nil {
			t.Fatal(err)
		}
		// Either outcome is right, as long as exactly one copy runs where
		// the record says.
		auditOutcome(t, b, cl, vm, waitMigEnd(t, cl, vm.Spec.Name, m.ID))
	})

	t.Run("source QEMU dies mid-copy", func(t *testing.T) {
		vm, to := newGuest(t)
		m := slowMigrate(t, vm, to)
		killQEMUOn(t, b, vm.Spec.UUID, vm.Node)
		m = waitMigEnd(t, cl, vm.Spec.Name, m.ID)
		if m.Phase != api.MigFailed {
			t.Fatalf("phase %s, want failed", m.Phase)
		}
		// The only running copy died: nothing runs, and the VM says failed.
		got := waitVM(t, cl, vm.Spec.Name, 30*time.Second, "failed", func(v *api.VM) bool { return v.Status.Phase == api.PhaseFailed })
		if hosts := waitQEMUCount(t, b, vm.Spec.UUID, 0); len(hosts) != 0 {
			t.Fatalf("QEMU left on %v", hosts)
		}
		t.Logf("status: %s", got.Status.Message)
	})

	t.Run("link to the target drops mid-copy", func(t *testing.T) {
		vm, to := newGuest(t)
		m := slowMigrate(t, vm, to)
		link(t, b, to, "down")
		defer link(t, b, to, "up")
		m = waitMigEnd(t, cl, vm.Spec.Name, m.ID)
		link(t, b, to, "up")
		// Either the source notices the stall, or (sooner, with a 2 s
		// lease) the HA manager sees the cut-off target's lease expire.
		if m.Phase != api.MigFailed || !(strings.Contains(m.Error, "no progress") || strings.Contains(m.Error, "died during the migration")) {
			t.Fatalf("phase %s (%s), want failed for lack of progress or a dead target", m.Phase, m.Error)
		}
		auditOne(t, b, cl, vm, vm.Node)
	})

	t.Run("leader and API host restarts mid-migration", func(t *testing.T) {
		vm, to := newGuest(t)
		m := slowMigrate(t, vm, to)
		// h1 holds the API we talk to, the leader and the embedded etcd.
		b.StopAgent(0, syscall.SIGKILL)
		time.Sleep(time.Second)
		if err := b.StartAgent(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.WaitNodes(ctx, 3); err != nil {
			t.Fatal(err)
		}
		auditOutcome(t, b, cl, vm, waitMigEnd(t, cl, vm.Spec.Name, m.ID))
	})

	t.Run("cancel at pre-switchover", func(t *testing.T) {
		// The source holds its guest paused at pre-switchover (a failpoint
		// keeps it there 3 s); a cancel that arrives then ends the move
		// with the guest running on the source, where it never stopped
		// being owned.
		vm, to := newGuest(t)
		src := b.Hosts[hostIndex(vm.Node)]
		fp := filepath.Join(src.DataDir, "failpoints")
		if err := os.WriteFile(fp, []byte(failpoint.PreSwitchover+" 3s\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(fp)
		logBefore, _ := os.ReadFile(filepath.Join(src.DataDir, "agent.log"))
		m, err := cl.MigrateVM(ctx, vm.Spec.Name, api.MigrateRequest{To: to})
		if err != nil {
			t.Fatal(err)
		}
		// Cancel once the source says it pauses there.
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			log, _ := os.ReadFile(filepath.Join(src.DataDir, "agent.log"))
			if strings.Contains(string(log[len(logBefore):]), "point="+failpoint.PreSwitchover) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the source never paused at pre-switchover")
			}
		}
		if _, err := cl.CancelMigration(ctx, vm.Spec.Name); err != nil {
			t.Fatalf("cancel at pre-switchover refused: %v", err)
		}
		m = waitMigEnd(t, cl, vm.Spec.Name, m.ID)
		if m.Phase != api.MigCancelled {
			t.Fatalf("phase %s (%s), want cancelled", m.Phase, m.Error)
		}
		auditOne(t, b, cl, vm, vm.Node)
	})

	// A cancel that lands in the moment of the switchover: bisect the delay
	// between a cancel that wins and one that comes too late, so that the
	// last rounds land within a few tens of milliseconds of the switchover
	// (on either side), and assert that both sides were hit.
	t.Run("cancel races switchover", func(t *testing.T) {
		vm, to := newGuest(t)
		move := func(delay time.Duration, cancel bool) (*api.Migration, error) {
			start := time.Now()
			m, err := cl.MigrateVM(ctx, vm.Spec.Name, api.MigrateRequest{To: to})
			if err != nil {
				t.Fatal(err)
			}
			var cerr error
			if cancel {
				time.Sleep(delay - time.Since(start))
				_, cerr = cl.CancelMigration(ctx, vm.Spec.Name)
			}
			m = waitMigEnd(t, cl, vm.Spec.Name, m.ID)
			where := vm.Node
			switch m.Phase {
			case api.MigCompleted:
				where = to
				if cancel && cerr == nil {
					t.Fatalf("after %s: the cancel was accepted but the migration completed", delay)
				}
			case api.MigCancelled, api.MigFailed:
			default:
				t.Fatalf("after %s: phase %s", delay, m.Phase)
			}
			auditOne(t, b, cl, vm, where)
			if where == to {
				to, vm.Node = vm.Node, to
			}
			if m.Phase == api.MigCompleted {
				return m, nil
			}
			return m, fmt.Errorf("%s", m.Phase)
		}
		// How long a whole move takes bounds the window.
		t0 := time.Now()
		if _, err := move(0, false); err != nil {
			t.Fatalf("a move without a cancel ended %v", err)
		}
		lo, hi := time.Duration(0), time.Since(t0)+300*time.Millisecond
		won, late := 0, 0
		for round := 0; round < 7; round++ {
			mid := (lo + hi) / 2
			if _, err := move(mid, true); err != nil {
				won++
				lo = mid // the cancel came in time: later next
			} else {
				late++
				hi = mid // too late: earlier next
			}
			t.Logf("round %d: cancel after %s: %s (window %s-%s)", round, mid, map[bool]string{true: "too late", false: "won"}[lo != mid], lo, hi)
		}
		if won == 0 || late == 0 {
			t.Fatalf("the cancels never straddled the switchover: %d won, %d came too late", won, late)
		}
		t.Logf("cancels won up to %s after the migration was asked for and came too late from %s", lo, hi)
	})
}

func waitMigPhase(t *testing.T, cl *client.Client, vm, id, phase string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		m, err := cl.GetMigration(context.Background(), vm)
		if err == nil && m.ID == id {
			if m.Phase == phase {
				return
			}
			if api.MigrationTerminal(m.Phase) {
				t.Fatalf("migration ended (%s: %s) before reaching %s", m.Phase, m.Error, phase)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration never reached %s", phase)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCopied waits until the source reports at least n bytes sent.
func waitCopied(t *testing.T, cl *client.Client, vm, id string, n int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := cl.GetMigration(context.Background(), vm)
		if err == nil && m.ID == id {
			if m.Progress.TransferredBytes >= n {
				return
			}
			if m.Phase != api.MigCopying {
				t.Fatalf("migration left copying (%s: %s) before %d bytes were sent", m.Phase, m.Error, n)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d bytes sent after a minute", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// auditOutcome checks the guest runs on exactly the host the migration's
// outcome names: the target if it completed, else the source.
func auditOutcome(t *testing.T, b *testbed.Bed, cl *client.Client, vm *api.VM, m *api.Migration) {
	t.Helper()
	where := m.Source
	if m.Phase == api.MigCompleted {
		where = m.Target
	}
	t.Logf("migration %s (%s)", m.Phase, m.Error)
	auditOne(t, b, cl, vm, where)
}

func waitMigEnd(t *testing.T, cl *client.Client, vm, id string) *api.Migration {
	t.Helper()
	m, err := cl.WaitMigration(ctxT(t, 3*time.Minute), vm, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// auditOne checks the guest runs on exactly host, healthy, with its boot id,
// and that the store agrees.
func auditOne(t *testing.T, b *testbed.Bed, cl *client.Client, vm *api.VM, host string) {
	t.Helper()
	got := waitVM(t, cl, vm.Spec.Name, time.Minute, "running and healthy on "+host, func(v *api.VM) bool {
		return healthyRunning(v) && v.Node == host && v.Status.Node == host
	})
	if got.Status.Guest.BootID != vm.Status.Guest.BootID {
		t.Fatalf("the guest rebooted: boot id %s, was %s", got.Status.Guest.BootID, vm.Status.Guest.BootID)
	}
	waitOneQEMU(t, b, vm.Spec.UUID, host)
	// And stays so for a moment (no late second copy).
	for i := 0; i < 20; i++ {
		if hosts := qemuHosts(b, vm.Spec.UUID); len(hosts) != 1 || hosts[0] != host {
			t.Fatalf("QEMU of the guest on %v, want only %s", hosts, host)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitQEMUCount(t *testing.T, b *testbed.Bed, uuid string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		hosts := qemuHosts(b, uuid)
		if len(hosts) == n || time.Now().After(deadline) {
			return hosts
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killQEMUOn kills the guest's QEMU on one host, as a crash would.
func killQEMUOn(t *testing.T, b *testbed.Bed, uuid, host string) {
	t.Helper()
	for _, pid := range qemuPids(b, uuid, host) {
		syscall.Kill(pid, syscall.SIGKILL)
		return
	}
	t.Fatalf("no QEMU of %s on %s", uuid, host)
}

// link sets a host's underlay port in the fabric up or down.
func link(t *testing.T, b *testbed.Bed, host, state string) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", b.FabricNS, "link", "set", host, state).CombinedOutput(); err != nil {
		t.Fatalf("link %s %s: %v %s", host, state, err, out)
	}
}
