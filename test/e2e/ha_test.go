package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/testbed"
)

// haObserver watches HA guests while a fault is injected: every 100 ms it
// samples the QEMU processes of every host (a guest must never run on two at
// once), asks each guest for its boot id over the overlay from the client
// namespace (an old boot id must never answer again once a new one has),
// and writes a durable disk record whose acknowledged sequence number a
// restarted guest must recover.
type haObserver struct {
	b      *testbed.Bed
	guests []*api.VM
	hc     *http.Client
	stop   chan struct{}
	wg     sync.WaitGroup

	mu         sync.Mutex
	violations []string
	boots      map[string][]string // vm -> distinct boot ids in the order seen
	acked      map[string]uint64   // vm -> highest acknowledged durable seq (current boot)
	ackedPrev  map[string]uint64   // vm -> highest acked before the newest boot
	recovered  map[string]uint64   // vm -> what the newest boot recovered
	lastAnswer map[string]time.Time
}

func observeHA(b *testbed.Bed, guests []*api.VM) *haObserver {
	o := &haObserver{b: b, guests: guests, hc: b.HTTPClient(b.ClientNS, 400*time.Millisecond), stop: make(chan struct{}),
		boots: map[string][]string{}, acked: map[string]uint64{}, ackedPrev: map[string]uint64{}, recovered: map[string]uint64{},
		lastAnswer: map[string]time.Time{}}
	o.wg.Add(1 + len(guests))
	go func() {
		defer o.wg.Done()
		for o.tick(100 * time.Millisecond) {
			for _, g := range guests {
				// (One host may briefly show two processes: QEMU's
				// -daemonize parent and child.)
				if hosts := distinct(qemuHosts(b, g.Spec.UUID)); len(hosts) > 1 {
					o.violate("%s: QEMU ran on %v at once", g.Spec.Name, hosts)
				}
			}
		}
	}()
	for _, g := range guests {
		go func(g *api.VM) {
			defer o.wg.Done()
			ip := strings.Split(g.Spec.IP, "/")[0]
			for o.tick(100 * time.Millisecond) {
				o.probe(g.Spec.Name, ip)
			}
		}(g)
	}
	return o
}

func (o *haObserver) tick(d time.Duration) bool {
	select {
	case <-o.stop:
		return false
	case <-time.After(d):
		return true
	}
}

func (o *haObserver) violate(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.violations = append(o.violations, fmt.Sprintf(format, args...))
}

func (o *haObserver) probe(name, ip string) {
	var h guestHealth
	if err := o.get("GET", "http://"+ip+"/health", &h); err != nil {
		return
	}
	var d struct {
		LastDurableSeq uint64 `json:"last_durable_seq"`
	}
	wrote := o.get("POST", "http://"+ip+"/disk/write?count=1", &d) == nil
	o.mu.Lock()
	defer o.mu.Unlock()
	seen := o.boots[name]
	switch {
	case len(seen) == 0 || seen[len(seen)-1] != h.BootID:
		for _, old := range seen {
			if old == h.BootID {
				o.violations = append(o.violations, fmt.Sprintf("%s: boot %s answered again after boot %s", name, old, seen[len(seen)-1]))
			}
		}
		o.boots[name] = append(seen, h.BootID)
		if len(seen) > 0 {
			o.ackedPrev[name] = o.acked[name]
			o.recovered[name] = h.Disk.RecoveredSeq
		}
		o.acked[name] = 0
	}
	if wrote && d.LastDurableSeq > o.acked[name] {
		o.acked[name] = d.LastDurableSeq
	}
	o.lastAnswer[name] = time.Now()
}

func (o *haObserver) get(method, url string, into any) error {
	req, _ := http.NewRequest(method, url, nil)
	resp, err := o.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s", resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(into)
}

// end stops observing and fails the test on any violation; it checks that
// a guest that was restarted recovered every write it had acknowledged.
func (o *haObserver) end(t *testing.T) {
	t.Helper()
	close(o.stop)
	o.wg.Wait()
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, v := range o.violations {
		t.Error("audit: " + v)
	}
	for name, boots := range o.boots {
		if len(boots) > 1 && o.recovered[name] < o.ackedPrev[name] {
			t.Errorf("audit: %s lost acknowledged writes: the restarted guest recovered seq %d, %d had been acknowledged", name, o.recovered[name], o.ackedPrev[name])
		}
	}
}

func (o *haObserver) bootCount(name string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.boots[name])
}

// waitRestarted waits until the guest answers the client with a boot id
// other than the one it had when the fault began.
func (o *haObserver) waitRestarted(t *testing.T, name string, boots int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for o.bootCount(name) <= boots {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer from a new boot within %s", name, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// auditRecords checks that the cluster's records agree with what runs: the
// guest is placed where its status says it runs, and its only QEMU is there.
func auditRecords(t *testing.T, b *testbed.Bed, cl *client.Client, name string) *api.VM {
	t.Helper()
	vm := waitVM(t, cl, name, 60*time.Second, "running and healthy", func(v *api.VM) bool {
		return v.Status.Phase == api.PhaseRunning && v.Status.Guest != nil && v.Status.Guest.Healthy && v.Status.Node == v.Node
	})
	hosts := waitQEMUCount(t, b, vm.Spec.UUID, 1)
	if len(hosts) != 1 || hosts[0] != vm.Node {
		t.Fatalf("%s: placed on %s but QEMU runs on %v", name, vm.Node, hosts)
	}
	return vm
}

func distinct(l []string) []string {
	var out []string
	for _, s := range l {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func hostIndex(b *testbed.Bed, name string) int {
	for i, h := range b.Hosts {
		if h.Name == name {
			return i
		}
	}
	return -1
}

// TestHAFaults injects host-level faults under running HA guests in a
// 3-host testbed and audits each: no guest ever runs twice, every HA guest
// runs again (on a surviving host when its own is gone), no acknowledged
// write is lost, and the records agree with the processes.
func TestHAFaults(t *testing.T) {
	b, cl := newBed(t, 3)
	ctx := ctxT(t, 15*time.Minute)
	// One HA guest on each of h2 and h3 (anti-affinity spreads them), and
	// one guest without HA that must be left alone.
	var guests []*api.VM
	for i, name := range []string{"ha1", "ha2"} {
		vm, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: name, HA: true, HAPriority: 10 * i, AntiAffinity: "spread"})
		if err != nil {
			t.Fatal(err)
		}
		guests = append(guests, vm)
	}
	for i, g := range guests {
		guests[i] = auditRecords(t, b, cl, g.Spec.Name)
	}
	// The API and the leader live on h1; faults hit the hosts of guests
	// that are not h1 (the leader's host gets its own scenario).
	victim := func() (*api.VM, int) {
		for _, g := range guests {
			vm, err := cl.GetVM(ctx, g.Spec.Name)
			if err != nil {
				t.Fatal(err)
			}
			if i := hostIndex(b, vm.Node); i > 0 {
				return vm, i
			}
		}
		t.Fatal("no HA guest outside h1")
		return nil, 0
	}
	restore := func(t *testing.T, i int) {
		t.Helper()
		if b.Hosts[i].PID == 0 {
			if err := b.StartAgent(ctx, i); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.WaitNodes(ctx, 3); err != nil {
			t.Fatal(err)
		}
	}
	scenario := func(name string, inject func(t *testing.T, i int), heal func(t *testing.T, i int)) {
		t.Run(name, func(t *testing.T) {
			vm, i := victim()
			o := observeHA(b, guests)
			time.Sleep(time.Second) // the observer sees the guests before the fault
			boots := o.bootCount(vm.Spec.Name)
			start := time.Now()
			inject(t, i)
			o.waitRestarted(t, vm.Spec.Name, boots, 60*time.Second)
			t.Logf("%s answered again from a new boot %.1fs after the fault", vm.Spec.Name, time.Since(start).Seconds())
			heal(t, i)
			restore(t, i)
			time.Sleep(2 * time.Second) // the healed host must not bring back a second copy
			o.end(t)
			for _, g := range guests {
				got := auditRecords(t, b, cl, g.Spec.Name)
				if got.Spec.Name == vm.Spec.Name && got.Node == vm.Node {
					t.Errorf("%s still placed on %s, whose fault should have moved it", got.Spec.Name, vm.Node)
				}
			}
		})
	}

	scenario("host crash", func(t *testing.T, i int) {
		if err := b.KillHost(i); err != nil {
			t.Fatal(err)
		}
	}, func(t *testing.T, i int) {})

	scenario("agent frozen for twice the lease", func(t *testing.T, i int) {
		syscall.Kill(b.Hosts[i].PID, syscall.SIGSTOP)
		time.Sleep(4 * time.Second)
		// The watchdog, not the agent, must have killed the guest.
		log, _ := os.ReadFile(filepath.Join(b.Hosts[i].DataDir, "watchdog.log"))
		if !strings.Contains(string(log), "watchdog fired") {
			t.Errorf("the watchdog did not fire while the agent was frozen; its log:\n%s", log)
		}
		syscall.Kill(b.Hosts[i].PID, syscall.SIGCONT)
	}, func(t *testing.T, i int) {})

	scenario("host cut off from the network", func(t *testing.T, i int) {
		link(t, b, b.Hosts[i].Name, "down")
		t.Cleanup(func() { exec.Command("ip", "-n", b.FabricNS, "link", "set", b.Hosts[i].Name, "up").Run() })
	}, func(t *testing.T, i int) {
		link(t, b, b.Hosts[i].Name, "up")
		// It fenced itself: its agent says so once it reaches etcd again.
		waitEvent(t, cl, "self-fenced", b.Hosts[i].Name, 30*time.Second)
	})

	scenario("agent killed", func(t *testing.T, i int) {
		if err := b.StopAgent(i, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}, func(t *testing.T, i int) {})

	evs, err := cl.Events(ctx, 200)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		t.Logf("event %s %-12s %-4s %-4s %s", e.Time.Format("15:04:05.000"), e.Kind, e.Node, e.VM, e.Message)
	}
}

func waitEvent(t *testing.T, cl *client.Client, kind, node string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		evs, err := cl.Events(ctx, 200)
		if err == nil {
			for _, e := range evs {
				if e.Kind == kind && e.Node == node {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no %s event for %s within %s", kind, node, timeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
