package agent_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/predict"
	"github.com/ferryvm/ferry/internal/promhist"
	"github.com/ferryvm/ferry/internal/simcluster"
	"github.com/ferryvm/ferry/internal/simqemu"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/store/storetest"
	"github.com/ferryvm/ferry/internal/wait"
)

// env is a simulated cluster for one test: real agents on a simulated
// QEMU, a real etcd, and a store client of the test's own.
type env struct {
	t  *testing.T
	c  *simcluster.Cluster
	st *store.Store
	cl *client.Client // the API, when asked for
}

type envOpts struct {
	hosts        int
	controlPlane bool // the leader's controllers run (scheduler, HA)
	api          bool
	partitions   bool          // hosts can be cut off etcd
	stall        time.Duration // agent.Config.MigrationStall
	ha           ha.Timing     // zero: ha.DefaultTiming
	noWatchdog   bool
	migrationTLS bool               // hosts have migration credentials
	healthEvery  time.Duration      // agent.Config.HealthEvery
	risk         predict.RiskConfig // agent.Config.Risk
	// load sampling and the balancer (simcluster.Config's fields)
	loadEvery, loadPeriod, loadHorizon time.Duration
	capacity                           float64
	balance                            balance.Config
	loadSource                         *promhist.Source
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if testing.Short() && o.controlPlane {
		t.Skip("a simulated cluster with its control plane takes a few seconds")
	}
	eps := storetest.Etcd(t)
	c, err := simcluster.New(simcluster.Config{Endpoints: eps, Dir: t.TempDir(), ControlPlane: o.controlPlane,
		Partitions: o.partitions, MigrationStall: o.stall, HA: o.ha, NoWatchdog: o.noWatchdog,
		HealthEvery: o.healthEvery, Risk: o.risk, MigrationCredentials: o.migrationTLS,
		LoadEvery: o.loadEvery, LoadPeriod: o.loadPeriod, LoadHorizon: o.loadHorizon, CapacityCPUs: o.capacity, Balance: o.balance,
		LoadSource: o.loadSource})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, c: c}
	if e.st, err = store.Open(ctx, eps, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.st.Close() })
	for i := 1; i <= o.hosts; i++ {
		if _, err := c.Start(ctx, fmt.Sprintf("h%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if o.api {
		if e.cl, err = c.ServeAPI(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wait.For(t, 10*time.Second, "every host to register", func() (bool, error) {
		nodes, err := e.st.ListNodes(ctx)
		return len(nodes) == o.hosts, err
	})
	return e
}

// create stores a running VM placed on host (no scheduler needed).
func (e *env) create(name, host string, ha bool) *api.VM {
	e.t.Helper()
	spec := api.VMSpec{Name: name, UUID: fmt.Sprintf("00000000-0000-4000-8000-%012d", len(name)*1000+int(name[len(name)-1])),
		MemoryMiB: 256, CPUs: 1, DiskMiB: 64, Image: api.ImageTiny, Power: api.PowerRunning, StartSeq: 1, HA: ha}
	storetest.Placed(e.t, e.st, spec, host)
	return e.waitPhase(name, api.PhaseRunning)
}

// waitPhase waits until the VM reports phase.
func (e *env) waitPhase(name, phase string) *api.VM {
	e.t.Helper()
	var vm *api.VM
	wait.For(e.t, 10*time.Second, name+" to be "+phase, func() (bool, error) {
		var err error
		vm, err = e.st.GetVM(context.Background(), name)
		if err != nil {
			return false, err
		}
		return vm.Status.Phase == phase, fmt.Errorf("%s is %s (%s)", name, vm.Status.Phase, vm.Status.Message)
	})
	return vm
}

// procs is the live simulated QEMUs of a VM.
func (e *env) procs(vm *api.VM) []*simqemu.Proc { return e.c.World.Procs(vm.Spec.UUID) }

// oneCopy waits until exactly one QEMU of the VM runs, on host.
func (e *env) oneCopy(vm *api.VM, host string) *simqemu.Proc {
	e.t.Helper()
	var p *simqemu.Proc
	wait.For(e.t, 10*time.Second, fmt.Sprintf("one copy of %s, on %s", vm.Spec.Name, host), func() (bool, error) {
		ps := e.procs(vm)
		if len(ps) != 1 || ps[0].Host != host {
			return false, fmt.Errorf("%d copies", len(ps))
		}
		p = ps[0]
		return true, nil
	})
	return p
}

func TestLifecycleOnSimulatedHost(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 1})
	ctx := context.Background()
	vm := e.create("web", "h1", false)
	p := e.oneCopy(vm, "h1")
	if !p.Running() {
		t.Fatal("the guest's CPUs do not run")
	}
	// Stop: the QEMU goes, the status says stopped.
	if _, err := e.st.UpdateSpec(ctx, "web", func(s *api.VMSpec) error { s.Power, s.StopForce = api.PowerStopped, true; return nil }); err != nil {
		t.Fatal(err)
	}
	e.waitPhase("web", api.PhaseStopped)
	if len(e.procs(vm)) != 0 {
		t.Fatal("a stopped VM's QEMU still runs")
	}
	// Delete: every key goes, and no QEMU is left.
	if _, err := e.st.UpdateSpec(ctx, "web", func(s *api.VMSpec) error { s.Deleting = true; return nil }); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "the VM to be gone", func() (bool, error) {
		_, err := e.st.GetVM(ctx, "web")
		return errors.Is(err, errdefs.ErrNotFound), err
	})
}

// TestCreateDeleteCycles is the race a new user met with a dev agent: in
// some create-then-delete cycles the guest's QEMU still ran after the
// deletion had answered and the VM had left the list. Through the API and
// the scheduler, with QEMU's start-up time, a deletion at every moment of
// a start must leave no QEMU behind.
func TestCreateDeleteCycles(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 1, controlPlane: true, api: true})
	e.c.World.LaunchDelay = 60 * time.Millisecond
	ctx := context.Background()
	for i := 0; i < 30; i++ {
		name := "cycle"
		start := true
		if _, err := e.cl.CreateVM(ctx, api.VMCreateRequest{Name: name, Memory: "256M", Start: &start}); err != nil {
			t.Fatalf("cycle %d: create: %v", i, err)
		}
		// Delete at a different moment of the start each time: before
		// the placement, during QEMU's start-up, once it runs.
		time.Sleep(time.Duration(i%10) * 15 * time.Millisecond)
		if err := e.cl.DeleteVM(ctx, name); err != nil {
			t.Fatalf("cycle %d: delete: %v", i, err)
		}
		wait.For(t, 10*time.Second, fmt.Sprintf("cycle %d: the VM to leave the list", i), func() (bool, error) {
			vms, err := e.cl.ListVMs(ctx)
			return err == nil && len(vms) == 0, err
		})
		wait.For(t, 5*time.Second, fmt.Sprintf("cycle %d: no QEMU left once the VM left the list", i), func() (bool, error) {
			n := len(e.c.World.All())
			return n == 0, fmt.Errorf("%d QEMUs run", n)
		})
	}
}
