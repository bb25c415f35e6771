package e2e

import (
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/qemu"
)

// A QEMU that dies on its own is reported as failed with the tail of its
// logs, is not restarted behind the operator's back, and starts again on request.
func TestQEMUCrashIsReported(t *testing.T) {
	d := newDev(t)
	if _, err := d.Client.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "crash"}); err != nil {
		t.Fatal(err)
	}
	vm := waitFor(t, d, "crash", 90*time.Second, "running", healthyRunning)
	if err := syscall.Kill(vm.Status.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	vm = waitFor(t, d, "crash", 30*time.Second, "failed", func(vm *api.VM) bool { return vm.Status.Phase == api.PhaseFailed })
	if !strings.Contains(vm.Status.Message, "exited unexpectedly") || !strings.Contains(vm.Status.LogTail, "ferry-guest") {
		t.Fatalf("failure report lacks cause or log tail: %q\n%s", vm.Status.Message, vm.Status.LogTail)
	}
	// It stays failed across the agent's resync (every 5 s): no restart loop.
	deadline := time.Now().Add(7 * time.Second)
	for time.Now().Before(deadline) {
		if p := d.QEMUPids(); len(p) != 0 {
			t.Fatalf("a failed guest was restarted without a request: %v", p)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if keys, _ := d.EtcdKeys(ctxT(t, 5*time.Second)); slices.Contains(keys, "/ferry/v1/owners/crash") {
		t.Error("the failed guest's ownership key was not released")
	}
	if _, err := d.Client.StartVM(ctxT(t, 10*time.Second), "crash"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "crash", 90*time.Second, "running again", healthyRunning)
}

// A VM whose QEMU cannot start fails with a message saying why, and nothing
// is left half-made: no process, no ownership, no runtime record.
func TestStartFailureLeavesNothing(t *testing.T) {
	d := newDev(t)
	img := filepath.Join(t.TempDir(), "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	f := false
	vm, err := d.Client.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "broken", Image: img, Start: &f})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Spec.ImageFmt != "qcow2" {
		t.Fatalf("image format %q, want qcow2", vm.Spec.ImageFmt)
	}
	os.Remove(img) // the image vanishes before the VM first starts
	if _, err := d.Client.StartVM(ctxT(t, 10*time.Second), "broken"); err != nil {
		t.Fatal(err)
	}
	vm = waitFor(t, d, "broken", 30*time.Second, "failed", func(vm *api.VM) bool {
		return vm.Status.Phase == api.PhaseFailed && vm.Status.StartSeq == vm.Spec.StartSeq
	})
	if !strings.Contains(vm.Status.Message, "base.qcow2") {
		t.Errorf("failure message does not name the missing image: %q", vm.Status.Message)
	}
	if p := d.QEMUPids(); len(p) != 0 {
		t.Errorf("QEMU left running: %v", p)
	}
	if _, err := os.Stat(filepath.Join(d.DataDir, "vms", "broken", "runtime.json")); !os.IsNotExist(err) {
		t.Error("runtime record left behind")
	}
	if keys, _ := d.EtcdKeys(ctxT(t, 5*time.Second)); slices.Contains(keys, "/ferry/v1/owners/broken") {
		t.Error("ownership key left behind")
	}
	if err := d.Client.DeleteVM(ctxT(t, 10*time.Second), "broken"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "broken", 30*time.Second, "deleted", func(vm *api.VM) bool { return vm == nil })
}

// A user's own raw image boots (through a copy-on-write overlay) and is never
// modified; deleting the VM removes the overlay, not the image.
func TestUserImage(t *testing.T) {
	d := newDev(t)
	img := filepath.Join(t.TempDir(), "user.raw")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := func() [32]byte { b, _ := os.ReadFile(img); return sha256.Sum256(b) }
	before := sum()
	vm, err := d.Client.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "byoi", Image: img, Memory: "128M"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Spec.ImageFmt != "raw" {
		t.Fatalf("format %q, want raw", vm.Spec.ImageFmt)
	}
	vm = waitFor(t, d, "byoi", 60*time.Second, "running", func(vm *api.VM) bool { return vm.Status.Phase == api.PhaseRunning })
	if !qemu.IsGuest(vm.Status.PID, vm.Spec.UUID) {
		t.Fatal("no QEMU for the user image")
	}
	b, _ := os.ReadFile(fmtCmdline(vm.Status.PID))
	if !strings.Contains(string(b), filepath.Join(d.DataDir, "storage", "byoi", "disk0.qcow2")) {
		t.Error("QEMU does not boot from the overlay")
	}
	if err := d.Client.DeleteVM(ctxT(t, 10*time.Second), "byoi"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "byoi", 30*time.Second, "deleted", func(vm *api.VM) bool { return vm == nil })
	if _, err := os.Stat(img); err != nil {
		t.Fatal("deleting the VM removed the user's image")
	}
	if sum() != before {
		t.Fatal("the user's image was modified")
	}
}

func fmtCmdline(pid int) string { return filepath.Join("/proc", strconv.Itoa(pid), "cmdline") }
