package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/store"
)

// create -> running -> answers HTTP -> durable disk writes -> stop -> start
// (the writes are still there) -> restart -> delete, with nothing left behind.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestVMLifecycle(t *testing.T) {
	d := newDev(t)
	cl := d.Client
	keysBefore, err := d.EtcdKeys(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}

	vm, err := cl.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "life", Memory: "256M", Disk: "64M"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Spec.MemoryMiB != 256 || vm.Spec.DiskMiB != 64 || vm.Spec.IP == "" || vm.Spec.MAC == "" {
		t.Fatalf("spec %+v", vm.Spec)
	}
	vm = waitFor(t, d, "life", 90*time.Second, "running and healthy", healthyRunning)
	pid1 := vm.Status.PID
	if !qemu.IsGuest(pid1, vm.Spec.UUID) {
		t.Fatalf("status pid %d is not the guest's QEMU", pid1)
	}
	h := guestGet(t, vm.Status.Endpoint, "/health")
	if h.Status != "ok" || h.Name != "life" || h.BootID != vm.Status.Guest.BootID {
		t.Fatalf("guest health %+v, status %+v", h, vm.Status.Guest)
	}
	boot1 := h.BootID
	if got := guestDo(t, "POST", vm.Status.Endpoint, "/disk/write?count=5"); got.Disk.LastDurableSeq != 5 {
		t.Fatalf("disk after 5 writes: %+v", got.Disk)
	}

	// The guest dirties memory on request (what makes migration hard).
	dirtyGuest(t, vm.Status.Endpoint)

	// Graceful stop: the guest powers off on the ACPI button.
	if _, err := cl.StopVM(ctxT(t, 10*time.Second), "life", api.VMStopRequest{Timeout: "30s"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "life", 60*time.Second, "stopped", func(vm *api.VM) bool { return vm.Status.Phase == api.PhaseStopped })
	if qemu.IsGuest(pid1, vm.Spec.UUID) {
		t.Fatal("QEMU still runs after stop")
	}
	if b, _ := os.ReadFile(filepath.Join(d.DataDir, "vms", "life", "console.log")); !strings.Contains(string(b), "powering off") {
		t.Error("the guest did not shut down gracefully (no 'powering off' on its console)")
	}

	// Start again: new boot, same disk with every acknowledged record.
	if _, err := cl.StartVM(ctxT(t, 10*time.Second), "life"); err != nil {
		t.Fatal(err)
	}
	vm = waitFor(t, d, "life", 90*time.Second, "running again", healthyRunning)
	h = guestGet(t, vm.Status.Endpoint, "/health")
	if h.BootID == boot1 {
		t.Fatal("boot id unchanged after stop and start")
	}
	if h.Disk.RecoveredSeq != 5 {
		t.Fatalf("disk recovered sequence %d after restart, want 5", h.Disk.RecoveredSeq)
	}

	// Restart: a fresh QEMU.
	before := vm.Status.PID
	if _, err := cl.RestartVM(ctxT(t, 10*time.Second), "life", api.VMStopRequest{}); err != nil {
		t.Fatal(err)
	}
	vm = waitFor(t, d, "life", 90*time.Second, "restarted", func(vm *api.VM) bool { return healthyRunning(vm) && vm.Status.PID != before })
	if h2 := guestGet(t, vm.Status.Endpoint, "/health"); h2.BootID == h.BootID {
		t.Fatal("boot id unchanged after restart")
	}

	// Delete: nothing left behind.
	if err := cl.DeleteVM(ctxT(t, 10*time.Second), "life"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "life", 60*time.Second, "deleted", func(vm *api.VM) bool { return vm == nil })
	if p := d.QEMUPids(); len(p) != 0 {
		t.Errorf("QEMU processes after delete: %v", p)
	}
	for _, p := range []string{filepath.Join(d.DataDir, "vms", "life"), filepath.Join(d.DataDir, "storage", "life")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after delete", p)
		}
	}
	if ents, _ := os.ReadDir(d.RunDir); len(ents) != 0 {
		t.Errorf("sockets left in %s: %v", d.RunDir, ents)
	}
	keysAfter, err := d.EtcdKeys(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// The event log keeps what happened (vm-starting, vm-running, ...):
	// a log, bounded, not state; everything else must be as before.
	if !slices.Equal(stateKeys(keysBefore), stateKeys(keysAfter)) {
		t.Errorf("etcd keys changed by create+delete:\nbefore %v\nafter  %v", keysBefore, keysAfter)
	}
}

// The agent stops (gracefully, then by SIGKILL); the guest keeps running, and
// the next agent takes it over: same QEMU, same boot, uptime still growing.
func TestAgentRestartKeepsGuest(t *testing.T) {
	d := newDev(t)
	if _, err := d.Client.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "keep"}); err != nil {
		t.Fatal(err)
	}
	vm := waitFor(t, d, "keep", 90*time.Second, "running and healthy", healthyRunning)
	pid, ep := vm.Status.PID, vm.Status.Endpoint
	h1 := guestGet(t, ep, "/health")

	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		if how == "SIGTERM" {
			d.Stop()
		} else {
			d.Kill()
		}
		hDown := guestGet(t, ep, "/health") // answers while no agent runs
		if hDown.BootID != h1.BootID {
			t.Fatalf("%s: guest rebooted while the agent was down", how)
		}
		if err := d.Start(ctxT(t, time.Minute)); err != nil {
			t.Fatal(err)
		}
		vm = waitFor(t, d, "keep", 30*time.Second, "re-attached", func(vm *api.VM) bool {
			return healthyRunning(vm) && vm.Status.PID == pid && vm.Status.Guest.BootID == h1.BootID
		})
		h2 := guestGet(t, ep, "/health")
		if h2.BootID != h1.BootID || h2.UptimeS <= hDown.UptimeS {
			t.Fatalf("%s: guest after agent restart %+v, before %+v", how, h2, hDown)
		}
		if !strings.Contains(d.LogTail(40), "re-attached to running guest") {
			t.Errorf("%s: agent log does not say it re-attached", how)
		}
	}
	// The re-attached QMP connection works: a forced stop ends the QEMU.
	if _, err := d.Client.StopVM(ctxT(t, 10*time.Second), "keep", api.VMStopRequest{Force: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "keep", 30*time.Second, "stopped", func(vm *api.VM) bool { return vm.Status.Phase == api.PhaseStopped })
	if qemu.IsGuest(pid, vm.Spec.UUID) {
		t.Fatal("QEMU still runs after a forced stop through the re-attached agent")
	}
}

// dirtyGuest asks the guest to dirty 8 MiB/s and sees its page counter move,
// then stops it.
func dirtyGuest(t *testing.T, ep string) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Post("http://"+ep+"/dirty?rate=8&size=16", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("dirty: %v %v", resp, err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var h struct {
			Dirty struct {
				Rate  float64 `json:"rate_mib_s"`
				Pages uint64  `json:"pages_dirtied"`
			} `json:"dirty"`
		}
		resp, err := hc.Get("http://" + ep + "/health")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
		}
		if h.Dirty.Rate == 8 && h.Dirty.Pages > 256 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest did not dirty memory: %+v %v", h, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err = hc.Post("http://"+ep+"/dirty?rate=0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// A bad rate is refused by the guest.
	resp, err = hc.Post("http://"+ep+"/dirty?rate=-3", "", nil)
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("negative rate: %v %v", resp, err)
	}
	resp.Body.Close()
	// The stream endpoint keeps a connection open and numbers its lines.
	resp, err = hc.Get("http://" + ep + "/stream?interval=5ms")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, _ := io.ReadAtLeast(resp.Body, buf, 64)
	resp.Body.Close()
	if !strings.HasPrefix(string(buf[:n]), "0 ") {
		t.Fatalf("stream starts with %q", buf[:n])
	}
}

// stateKeys are keys without the event log's and the balancer's plan.
func stateKeys(keys []string) []string {
	var out []string
	for _, k := range keys {
		// Events are a log; the balancer's plan is the leader's report,
		// written once the host has sampled its load (a matter of time,
		// not of the guest).
		if !strings.HasPrefix(k, store.EventPrefix) && k != store.BalancePlanKey {
			out = append(out, k)
		}
	}
	return out
}
