package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/testbed"
)

var bedSeq int

// newBed builds an n-host testbed for one test and removes it afterwards,
// whatever happens; on failure it prints the agents' logs.
func newBed(t *testing.T, n int) (*testbed.Bed, *client.Client) {
	t.Helper()
	return newBedWith(t, testbed.Options{Hosts: n})
}

// newBedWith is newBed with more options (name, binary and image are
// filled in).
func newBedWith(t *testing.T, o testbed.Options) (*testbed.Bed, *client.Client) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	bedSeq++
	o.Name, o.Bin, o.ImageDir = fmt.Sprintf("fe%d%d", os.Getpid()%1000, bedSeq), ferryBin, imageDir
	testbed.Down(o.Name) // leftovers of an earlier crashed run with the same name
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := testbed.Up(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i := range b.Hosts {
				t.Logf("agent log of %s:\n%s", b.Hosts[i].Name, b.LogTail(i, 40))
			}
		}
		if err := b.Down(); err != nil {
			t.Errorf("testbed down: %v", err)
		}
	})
	cl, err := b.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	return b, cl
}

// qemuHosts returns, for a guest uuid, the testbed hosts on which a QEMU
// process of that guest runs (found by its -uuid and the host's run dir).
func qemuHosts(b *testbed.Bed, uuid string) []string {
	var hosts []string
	for _, p := range qemuProcs(b, uuid) {
		hosts = append(hosts, p.host)
	}
	return hosts
}

// qemuPids returns the pids of the guest's QEMU processes on one host.
func qemuPids(b *testbed.Bed, uuid, host string) []int {
	var pids []int
	for _, p := range qemuProcs(b, uuid) {
		if p.host == host {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

type qemuProc struct {
	pid  int
	host string
}

func qemuProcs(b *testbed.Bed, uuid string) []qemuProc {
	var procs []qemuProc
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmd, []byte("qemu-system")) || !bytes.Contains(cmd, []byte("\x00"+uuid+"\x00")) {
			continue
		}
		if !qemu.Running(pid) {
			continue
		}
		for _, h := range b.Hosts {
			if bytes.Contains(cmd, []byte(h.RunDir+"/")) {
				procs = append(procs, qemuProc{pid, h.Name})
			}
		}
	}
	return procs
}

func waitVM(t *testing.T, cl *client.Client, name string, timeout time.Duration, what string, cond func(*api.VM) bool) *api.VM {
	t.Helper()
	var last *api.VM
	vm, err := cl.WaitVM(ctxT(t, timeout), name, func(vm *api.VM) (bool, error) { last = vm; return cond(vm), nil })
	if err != nil {
		t.Fatalf("vm %s: waiting for %s: %v; last seen %+v", name, what, err, last)
	}
	return vm
}
