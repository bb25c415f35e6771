package e2e

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/api"
)

// The CLI: tables for people, JSON for scripts, one-line errors and a
// non-zero exit for mistakes.
func TestCLI(t *testing.T) {
	d := newDev(t)
	ferry := func(args ...string) (string, string, int) {
		cmd := exec.Command(ferryBin, append([]string{"--data-dir", d.DataDir}, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	out, _, code := ferry("node", "list")
	if code != 0 || !strings.Contains(out, "dev1") || !strings.Contains(out, "tcg") || !strings.Contains(out, "ready") {
		t.Fatalf("node list (exit %d):\n%s", code, out)
	}
	out, _, code = ferry("vm", "create", "cli1", "--no-start", "--memory", "128M", "--cpus", "2")
	if code != 0 || !strings.Contains(out, "stopped") && !strings.Contains(out, "pending") {
		t.Fatalf("vm create (exit %d):\n%s", code, out)
	}
	out, _, code = ferry("vm", "list", "-o", "json")
	var vms []api.VM
	if code != 0 || json.Unmarshal([]byte(out), &vms) != nil || len(vms) != 1 || vms[0].Spec.CPUs != 2 || vms[0].Spec.MemoryMiB != 128 {
		t.Fatalf("vm list -o json (exit %d):\n%s", code, out)
	}
	out, _, _ = ferry("vm", "list")
	if !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "cli1") {
		t.Fatalf("vm list table:\n%s", out)
	}
	if out, _, code = ferry("vm", "show", "cli1", "-o", "yaml"); code != 0 || !strings.Contains(out, "name: cli1") || !strings.Contains(out, "memory_mib: 128") {
		t.Fatalf("vm show -o yaml (exit %d):\n%s", code, out)
	}
	// The shell completes guest names from the cluster.
	if out, _, code = ferry("__complete", "vm", "show", "cl"); code != 0 || !strings.Contains(out, "cli1") {
		t.Fatalf("completion of vm show cl (exit %d):\n%s", code, out)
	}
	// ferry doctor on this host, where the dev agent runs.
	out, _, code = ferry("doctor", "--accel", "tcg", "--image-dir", imageDir, "-o", "json")
	var checks []struct{ Check, Status, Found, Fix string }
	if err := json.Unmarshal([]byte(out), &checks); err != nil || code != 0 {
		t.Fatalf("ferry doctor (exit %d, %v):\n%s", code, err, out)
	}
	for _, c := range checks {
		if (c.Check == "QEMU" || c.Check == "bridge, VXLAN, TAP" || c.Check == "built-in image") && c.Status != "ok" {
			t.Errorf("ferry doctor: %s is %s: %s (%s)", c.Check, c.Status, c.Found, c.Fix)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "show", "nope"}, `vm "nope" not found`},
		{[]string{"vm", "create", "Bad"}, "invalid"},
		{[]string{"vm", "create", "x", "--memory", "lots"}, "memory"},
		{[]string{"vm", "create", "cli1", "--no-start"}, "already exists"},
		{[]string{"vm", "list", "-o", "xml"}, "--output"},
		{[]string{"vm", "show"}, "accepts 1 arg"},
	} {
		_, stderr, code := ferry(c.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code == 0 || !strings.HasPrefix(lines[0], "error: ") || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want a one-line error containing %q", c.args, code, stderr, c.want)
		}
	}
	if _, stderr, code := ferry("vm", "delete", "cli1"); code != 0 {
		t.Fatalf("delete failed (exit %d): %s", code, stderr)
	}
}
