package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/testbed"
)

// `ferry testbed down` removes everything a testbed made even after a crash
// that left agents dead, a guest running and no state file.
func TestTestbedDownAfterCrash(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	const name = "fecrash"
	testbed.Down(name)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := testbed.Up(ctx, testbed.Options{Name: name, Hosts: 2, Bin: ferryBin, ImageDir: imageDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testbed.Down(name) }) // in case the assertions fail
	cl, err := b.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "orphan", Memory: "128M"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "orphan", 3*time.Minute, "running", func(v *api.VM) bool { return v.Status.Phase == api.PhaseRunning })

	// The crash: every agent dies at once, the state file is lost.
	for _, h := range b.Hosts {
		syscall.Kill(h.PID, syscall.SIGKILL)
	}
	os.Remove(filepath.Join(testbed.Dir(name), testbed.StateFile))
	if len(qemuHosts(b, vm.Spec.UUID)) != 1 {
		t.Fatal("the guest should outlive its agent")
	}

	out, err := exec.Command(ferryBin, "testbed", "down", "--name", name).CombinedOutput()
	if err != nil {
		t.Fatalf("testbed down: %v\n%s", err, out)
	}
	if hosts := qemuHosts(b, vm.Spec.UUID); len(hosts) != 0 {
		t.Errorf("QEMU still runs on %v", hosts)
	}
	nss, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(nss), "\n") {
		if strings.HasPrefix(l, name+"-") {
			t.Errorf("namespace left: %s", l)
		}
	}
	if _, err := os.Stat(testbed.Dir(name)); !os.IsNotExist(err) {
		t.Errorf("%s still exists", testbed.Dir(name))
	}
	for _, h := range b.Hosts {
		if err := syscall.Kill(h.PID, 0); err == nil {
			t.Errorf("agent %d still runs", h.PID)
		}
	}
}
