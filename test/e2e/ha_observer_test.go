package e2e

// The observer of the HA fault suite and its audits.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/qemu"
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
				if hosts := runningHosts(b, g); len(hosts) > 1 {
					o.violate("%s: the guest ran on %v at once", g.Spec.Name, hosts)
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

// waitSeen waits until the observer has had an answer from every guest.
func (o *haObserver) waitSeen(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for _, g := range o.guests {
		for o.bootCount(g.Spec.Name) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the client never reached %s", g.Spec.Name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
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

// runningHosts asks every QEMU process of the guest, on whichever host,
// through its status monitor whether its CPUs run (a paused migration target
// does not count). Where two seem to run it asks again in the reverse order,
// so a handover between the two questions is not mistaken for a double run.
func runningHosts(b *testbed.Bed, g *api.VM) []string {
	hosts := distinct(qemuHosts(b, g.Spec.UUID))
	ask := func(order []string) []string {
		var running []string
		for _, h := range order {
			i := hostIndex(b, h)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			c, err := qemu.DialQMP(ctx, agent.StatusSocket(b.Hosts[i].RunDir, g.Spec.Name))
			if err == nil {
				st, err := c.QueryStatus(ctx)
				c.Close()
				if err == nil && st.Running {
					running = append(running, h)
				}
			}
			cancel()
		}
		return running
	}
	running := ask(hosts)
	if len(running) > 1 {
		slices.Reverse(running)
		running = ask(running)
	}
	return running
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
