package qemu

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// TestProbe asks the installed QEMU what it can do.
func TestProbe(t *testing.T) {
	if _, err := exec.LookPath(Binary); err != nil {
		t.Skipf("%s not installed", Binary)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := Probe(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU %s (%s): %d machines, pc = %s, capabilities %v, multifd compression %v",
		info.Version, info.Package, len(info.Machines), info.Aliases["pc"], info.Capabilities, info.MultifdCompression)
	if info.Version == "" || info.Version == "0.0.0" {
		t.Errorf("no version: %+v", info)
	}
	if m := info.Aliases["pc"]; m == "" || !slices.Contains(info.Machines, m) {
		t.Errorf("alias pc resolves to %q, not a known machine", m)
	}
	for _, c := range []string{"events", "postcopy-ram", "multifd", "auto-converge"} {
		if !info.HasCapability(c) {
			t.Errorf("capability %s missing from %v", c, info.Capabilities)
		}
	}
	for _, p := range []string{"downtime-limit", "max-bandwidth", "multifd-channels"} {
		if !info.HasParameter(p) {
			t.Errorf("parameter %s missing from %v", p, info.Parameters)
		}
	}
}

// TestCPUTimeCountsThisProcess: the test's own process has used CPU time,
// and more after it burns some.
func TestCPUTimeCountsThisProcess(t *testing.T) {
	before, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
	}
	after, err := CPUTime(os.Getpid())
	if err != nil || after <= before {
		t.Fatalf("CPU time %v then %v (%v)", before, after, err)
	}
	if _, err := CPUTime(1 << 30); err == nil {
		t.Fatal("a process that does not exist has a CPU time")
	}
}
