// Package e2e runs Ferry for real: `ferry agent --dev` processes with
// embedded etcd, QEMU guests under TCG booting the built-in image, and the
// HTTP API over mutual TLS. It needs root, QEMU and busybox (make test
// installs them); elsewhere it skips, saying why.
package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/testbed"
)

var (
	ferryBin   string
	imageDir   string
	skipReason string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	switch {
	case testing.Short():
		skipReason = "end-to-end tests do not run with -short"
	case os.Geteuid() != 0:
		skipReason = "end-to-end tests need root (run `make test` as root)"
	default:
		// As root the suite is meant to run: a missing QEMU fails it
		// rather than letting every test pass by skipping (CI runs as
		// root; `make test` installs QEMU first).
		for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
			if _, err := exec.LookPath(bin); err != nil {
				fmt.Fprintf(os.Stderr, "end-to-end tests run as root but %s is not installed (make test installs it)\n", bin)
				return 1
			}
		}
	}
	if skipReason != "" {
		return m.Run()
	}
	ferryBin = os.Getenv("FERRY_BIN")
	if ferryBin == "" {
		dir, err := os.MkdirTemp("", "ferry-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ferryBin = filepath.Join(dir, "ferry")
		for _, b := range []struct{ out, pkg, cgo string }{{ferryBin, "../../cmd/ferry", "1"}, {filepath.Join(dir, "ferry-guest"), "../../cmd/ferry-guest", "0"}} {
			cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", b.pkg, err, out)
				return 1
			}
		}
	}
	imageDir = os.Getenv("FERRY_IMAGE_DIR")
	if imageDir == "" {
		imageDir = image.DefaultDir
	}
	if _, err := image.Find(imageDir); err != nil {
		out, err := exec.Command(ferryBin, "image", "build", "--image-dir", imageDir).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building the tiny image: %v\n%s", err, out)
			return 1
		}
	}
	return m.Run()
}

// newDev starts a single-host Ferry for one test and tears it down after,
// whatever happens; on failure it prints the agent's log.
func newDev(t *testing.T) *testbed.DevAgent {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	d, err := testbed.NewDev(testbed.DevOptions{Bin: ferryBin, ImageDir: imageDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", d.LogTail(60))
		}
		d.Cleanup()
		if left := d.QEMUPids(); len(left) > 0 {
			t.Errorf("QEMU processes left behind: %v", left)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls the VM until cond holds, failing the test with the last
// state seen if it does not within timeout.
func waitFor(t *testing.T, d *testbed.DevAgent, name string, timeout time.Duration, what string, cond func(*api.VM) bool) *api.VM {
	t.Helper()
	var last *api.VM
	vm, err := d.Client.WaitVM(ctxT(t, timeout), name, func(vm *api.VM) (bool, error) {
		last = vm
		return cond(vm), nil
	})
	if err != nil {
		b, _ := json.MarshalIndent(last, "", " ")
		t.Fatalf("vm %s: waiting for %s: %v; last seen:\n%s", name, what, err, b)
	}
	return vm
}

func healthyRunning(vm *api.VM) bool {
	return vm != nil && vm.Status.Phase == api.PhaseRunning && vm.Status.StartSeq == vm.Spec.StartSeq &&
		vm.Status.Guest != nil && vm.Status.Guest.Healthy
}

// guestHealth is what ferry-guest answers on GET /health.
type guestHealth struct {
	Status  string  `json:"status"`
	Name    string  `json:"name"`
	BootID  string  `json:"boot_id"`
	UptimeS float64 `json:"uptime_s"`
	Disk    struct {
		RecoveredSeq   uint64 `json:"recovered_seq"`
		LastDurableSeq uint64 `json:"last_durable_seq"`
	} `json:"disk"`
}

func guestGet(t *testing.T, endpoint, path string) guestHealth {
	t.Helper()
	return guestDo(t, "GET", endpoint, path)
}

func guestDo(t *testing.T, method, endpoint, path string) guestHealth {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	req, _ := http.NewRequest(method, "http://"+endpoint+path, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("guest %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("guest %s %s: %s", method, path, resp.Status)
	}
	// The /disk endpoints answer with the disk part of the health alone.
	var h guestHealth
	var into any = &h
	if strings.HasPrefix(path, "/disk") {
		into = &h.Disk
	}
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("guest %s: %v", path, err)
	}
	return h
}
