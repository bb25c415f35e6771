package e2e

import (
	"context"
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
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/qemu"
)

// TestHAFaults injects host-level faults under running HA guests in a
// 5-host testbed (h1-h3 run the etcd members, h1 starts as leader and
// serves the API) and audits each: no guest ever runs twice, every HA guest
// runs again (on a surviving host when its own is gone), no acknowledged
// write is lost, and the records agree with the processes.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestHAFaults(t *testing.T) {
	b, cl0 := newBed(t, 5)
	ctx := ctxT(t, 20*time.Minute)
	// The API of h5 serves the test except when h5 itself is hit.
	clients := map[string]*client.Client{b.Hosts[0].Name: cl0}
	for _, i := range []int{1, 4} {
		c, err := b.Client(i)
		if err != nil {
			t.Fatal(err)
		}
		clients[b.Hosts[i].Name] = c
	}
	apiAway := func(hit ...string) *client.Client {
		for _, h := range []string{"h5", "h2", "h1"} {
			if !slices.Contains(hit, h) {
				return clients[h]
			}
		}
		return cl0
	}
	cl := apiAway()
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
	// place moves a guest to host (live) if it is not there yet.
	place := func(t *testing.T, name, host string) {
		t.Helper()
		vm, err := cl.GetVM(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if vm.Node == host {
			return
		}
		m, err := cl.MigrateVM(ctx, name, api.MigrateRequest{To: host})
		if err != nil {
			t.Fatal(err)
		}
		if m = waitMigEnd(t, cl, name, m.ID); m.Phase != api.MigCompleted {
			t.Fatalf("placing %s on %s: migration %s (%s)", name, host, m.Phase, m.Error)
		}
	}
	restore := func(t *testing.T, hosts []int) {
		t.Helper()
		for _, i := range hosts {
			if b.Hosts[i].PID == 0 {
				if err := b.StartAgent(ctx, i); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := b.WaitNodes(ctx, len(b.Hosts)); err != nil {
			t.Fatal(err)
		}
		// A host lost again and again is put in maintenance by the HA
		// manager (flapping); the operator's part is to undrain it once
		// fixed. Give the manager a pass first.
		time.Sleep(time.Second)
		nodes, err := cl.ListNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Maintenance {
				t.Logf("undraining %s (the HA manager drained it)", n.Name)
				if _, err := cl.UndrainNode(ctx, n.Name); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// scenario puts the guests where setup says, injects the fault into the
	// given hosts, waits until every guest in reboot answers from a new
	// boot (and checks the others did not reboot), heals, restores and audits.
	type plan struct {
		hosts  []int             // hosts hit
		reboot []string          // guests that must restart
		place  map[string]string // guest -> host before the fault
		// metrics: the HA series must show the loss and the restart
		// (ferry_ha_hosts_lost_total, ferry_ha_restarts_total,
		// ferry_ha_recovery_seconds), scraped from every host.
		metrics bool
	}
	scenario := func(name string, p plan, inject func(t *testing.T, hosts []int), heal func(t *testing.T, hosts []int)) {
		t.Run(name, func(t *testing.T) {
			begin := time.Now()
			for g, h := range p.place {
				place(t, g, h)
			}
			var hit []string
			for _, i := range p.hosts {
				hit = append(hit, b.Hosts[i].Name)
			}
			cl = apiAway(hit...)
			o := observeHA(b, guests)
			o.waitSeen(t, 30*time.Second) // the observer knows every guest's boot before the fault
			before := map[string]int{}
			for _, g := range guests {
				before[g.Spec.Name] = o.bootCount(g.Spec.Name)
			}
			haSeries := []string{"ferry_ha_hosts_lost_total", "ferry_ha_restarts_total", "ferry_ha_recovery_seconds"}
			var series0 []map[string]float64
			if p.metrics {
				for _, name := range haSeries {
					series0 = append(series0, scrapeEach(t, b, name, nil))
				}
			}
			start := time.Now()
			inject(t, p.hosts)
			for _, g := range p.reboot {
				o.waitRestarted(t, g, before[g], 60*time.Second)
				t.Logf("%s answered again from a new boot %.1fs after the fault", g, time.Since(start).Seconds())
			}
			if p.metrics {
				for i, name := range haSeries {
					// The leader records the guest running again on its next round.
					var grew float64
					for end := time.Now().Add(15 * time.Second); ; time.Sleep(time.Second) {
						if grew = growth(series0[i], scrapeEach(t, b, name, nil)); grew >= 1 || time.Now().After(end) {
							break
						}
					}
					if grew < 1 {
						t.Errorf("%s did not grow over the host's crash and its guest's restart", name)
					}
				}
			}
			if heal != nil {
				heal(t, p.hosts)
			}
			restore(t, p.hosts)
			time.Sleep(2 * time.Second) // a healed host must not bring back a second copy
			o.end(t)
			for _, g := range guests {
				got := auditRecords(t, b, cl, g.Spec.Name)
				if !slices.Contains(p.reboot, g.Spec.Name) && o.bootCount(g.Spec.Name) != before[g.Spec.Name] {
					// Allowed only as self-healing of a guest that crashed on
					// its own host (QEMU 7.2/TCG can corrupt a guest's memory
					// in a live migration, docs/KNOWN-ISSUES.md; place() migrates),
					// or as its host fencing itself (renewals starved on a
					// loaded machine): availability, not safety.
					why := rebootCause(t, cl, g.Spec.Name, begin)
					if why == "" {
						t.Errorf("%s rebooted, but its host was not hit and it was not restarted after a crash of its own", g.Spec.Name)
					} else {
						t.Logf("%s rebooted on its own host: %s", g.Spec.Name, why)
					}
				}
				if slices.Contains(p.reboot, g.Spec.Name) && slices.Contains(hit, p.place[g.Spec.Name]) && slices.Contains(hit, got.Node) && got.Node == p.place[g.Spec.Name] {
					t.Errorf("%s still placed on %s, whose fault should have moved it", got.Spec.Name, got.Node)
				}
			}
		})
	}
	kill := func(t *testing.T, hosts []int) {
		for _, i := range hosts {
			if err := b.KillHost(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	one := func(host string) plan {
		return plan{hosts: []int{hostIndex(b, host)}, reboot: []string{"ha1"}, place: map[string]string{"ha1": host, "ha2": "h3"}}
	}

	// FERRY_SOAK=N repeats every scenario N times (make soak).
	rounds := 1
	if n, err := strconv.Atoi(os.Getenv("FERRY_SOAK")); err == nil && n > 1 {
		rounds = n
	}
	for round := 1; round <= rounds; round++ {
		if rounds > 1 {
			t.Logf("soak round %d of %d", round, rounds)
		}
		crash := one("h4")
		crash.metrics = true
		scenario("host crash", crash, kill, nil)

		scenario("agent frozen for twice the lease", one("h4"), func(t *testing.T, hosts []int) {
			h := b.Hosts[hosts[0]]
			syscall.Kill(h.PID, syscall.SIGSTOP)
			time.Sleep(4 * time.Second)
			// The watchdog, not the agent, must have killed the guest.
			log, _ := os.ReadFile(filepath.Join(h.DataDir, "watchdog.log"))
			if !strings.Contains(string(log), "watchdog fired") {
				t.Errorf("the watchdog did not fire while the agent was frozen; its log:\n%s", log)
			}
			syscall.Kill(h.PID, syscall.SIGCONT)
		}, nil)

		scenario("host cut off from the network", one("h2"), func(t *testing.T, hosts []int) {
			h := b.Hosts[hosts[0]]
			link(t, b, h.Name, "down")
			t.Cleanup(func() { exec.Command("ip", "-n", b.FabricNS, "link", "set", h.Name, "up").Run() })
		}, func(t *testing.T, hosts []int) {
			h := b.Hosts[hosts[0]]
			link(t, b, h.Name, "up")
			// It fenced itself: its agent says so once it reaches etcd again.
			waitEvent(t, cl, "self-fenced", h.Name, 30*time.Second)
		})

		scenario("agent killed", one("h4"), func(t *testing.T, hosts []int) {
			if err := b.StopAgent(hosts[0], syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, nil)

		// h1 holds the leadership (it campaigned first) and an etcd member.
		scenario("leader's host crash", one("h1"), kill, nil)

		scenario("two hosts crash together", plan{hosts: []int{3, 4}, reboot: []string{"ha1", "ha2"},
			place: map[string]string{"ha1": "h4", "ha2": "h5"}}, kill, nil)

		// A host dies during a live migration of an HA guest (bandwidth-limited
		// so that the copy takes seconds): the source, and then the target.
		migrating := func(from, to string) func(t *testing.T, hosts []int) {
			return func(t *testing.T, hosts []int) {
				m, err := cl.MigrateVM(ctx, "ha1", api.MigrateRequest{To: to, MaxBandwidth: "16M"})
				if err != nil {
					t.Fatal(err)
				}
				waitMigPhase(t, cl, "ha1", m.ID, api.MigCopying)
				waitCopied(t, cl, "ha1", m.ID, 16<<20)
				kill(t, hosts)
				m = waitMigEnd(t, cl, "ha1", m.ID)
				t.Logf("migration %s: %s", m.Phase, m.Error)
			}
		}
		scenario("link flapping for a minute", one("h4"), func(t *testing.T, hosts []int) {
			h := b.Hosts[hosts[0]]
			t.Cleanup(func() { exec.Command("ip", "-n", b.FabricNS, "link", "set", h.Name, "up").Run() })
			for end := time.Now().Add(time.Minute); time.Now().Before(end); {
				link(t, b, h.Name, "down")
				time.Sleep(3 * time.Second)
				link(t, b, h.Name, "up")
				time.Sleep(3 * time.Second)
			}
			// Lost over and over, the host is taken out of service instead.
			waitEvent(t, cl, "host-drained", h.Name, 30*time.Second)
		}, nil)

		scenario("source host crash mid-migration", plan{hosts: []int{3}, reboot: []string{"ha1"},
			place: map[string]string{"ha1": "h4", "ha2": "h3"}}, migrating("h4", "h5"), nil)
		scenario("target host crash as the migration starts", plan{hosts: []int{4}, reboot: nil,
			place: map[string]string{"ha1": "h4", "ha2": "h3"}}, func(t *testing.T, hosts []int) {
			// The target dies while it prepares (queued, admitted, QEMU
			// starting): the guest must stay where it is, untouched.
			m, err := cl.MigrateVM(ctx, "ha1", api.MigrateRequest{To: "h5", MaxBandwidth: "16M"})
			if err != nil {
				t.Fatal(err)
			}
			kill(t, hosts)
			m = waitMigEnd(t, cl, "ha1", m.ID)
			t.Logf("migration %s: %s", m.Phase, m.Error)
			if m.Phase != api.MigFailed {
				t.Errorf("migration %s, want failed", m.Phase)
			}
		}, nil)
		scenario("target host crash mid-migration", plan{hosts: []int{4}, reboot: nil,
			place: map[string]string{"ha1": "h4", "ha2": "h3"}}, migrating("h4", "h5"), nil)

		// The switchover window: the target's takeover transaction has moved
		// ownership, its QEMU holds the whole guest but its CPUs do not run
		// yet, and the source's QEMU is stopped but not destroyed. It lasts
		// tens of milliseconds; a failpoint on the target holds it open.
		switchover := func(want string) func(t *testing.T, hosts []int) {
			return func(t *testing.T, hosts []int) {
				target := b.Hosts[hostIndex(b, "h5")]
				fp := filepath.Join(target.DataDir, "failpoints")
				if err := os.WriteFile(fp, []byte(failpoint.AfterTakeover+" 3s\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				defer os.Remove(fp)
				m, err := cl.MigrateVM(ctx, "ha1", api.MigrateRequest{To: "h5"})
				if err != nil {
					t.Fatal(err)
				}
				waitMigPhase(t, cl, "ha1", m.ID, api.MigSwitchover)
				kill(t, hosts)
				m = waitMigEnd(t, cl, "ha1", m.ID)
				t.Logf("migration %s: %s", m.Phase, m.Error)
				if m.Phase != want {
					t.Errorf("migration %s, want %s", m.Phase, want)
				}
				if log, _ := os.ReadFile(filepath.Join(target.DataDir, "agent.log")); !strings.Contains(string(log), "failpoint: pausing") {
					t.Error("the target never paused at the failpoint: the fault missed the switchover window")
				}
			}
		}
		// The source dies: the target owns the guest and must run it on.
		scenario("source host crash in the switchover", plan{hosts: []int{3}, reboot: nil,
			place: map[string]string{"ha1": "h4", "ha2": "h3"}}, switchover(api.MigCompleted), nil)
		// The target dies: the source must not resume its copy (the target
		// owned it); the HA manager restarts the guest from its disk.
		scenario("target host crash in the switchover", plan{hosts: []int{4}, reboot: []string{"ha1"},
			place: map[string]string{"ha1": "h4", "ha2": "h3"}}, switchover(api.MigFailed), nil)
	}

	evs, err := cl.Events(ctx, 200)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		t.Logf("event %s %-12s %-4s %-4s %s", e.Time.Format("15:04:05.000"), e.Kind, e.Node, e.VM, e.Message)
	}
}

// rebootCause returns the self-healing event that restarted a guest on its
// own host since start, or "" if there was none (or the HA manager moved it).
func rebootCause(t *testing.T, cl *client.Client, vm string, since time.Time) string {
	t.Helper()
	evs, err := cl.Events(context.Background(), 200)
	if err != nil {
		t.Fatal(err)
	}
	why := ""
	for _, e := range evs {
		if e.VM != vm || e.Time.Before(since) {
			continue
		}
		switch e.Kind {
		case "ha-restart":
			return ""
		case "guest-exited":
			why = e.Message
		}
	}
	for _, e := range evs {
		if e.Kind != "self-fenced" || e.Time.Before(since) {
			continue
		}
		_, killed, _ := strings.Cut(e.Message, "killed HA guests [")
		killed, _, _ = strings.Cut(killed, "]")
		if slices.Contains(strings.Fields(killed), vm) {
			why = e.Message
		}
	}
	return why
}

func waitEvent(t *testing.T, cl *client.Client, kind, node string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		evs, err := cl.EventsMatching(ctx, client.EventFilter{Host: node, Kind: kind}, 200)
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

// TestHASelfHealing: an HA guest whose QEMU dies is restarted on its host,
// and one that stops answering its health check (here: its CPUs stopped
// through the status monitor, as a hung guest would look) is reset and
// restarted; each is a fresh boot, counted, and recorded as an event.
func TestHASelfHealing(t *testing.T) {
	d := newDev(t)
	ctx := ctxT(t, 5*time.Minute)
	if _, err := d.Client.CreateVM(ctx, api.VMCreateRequest{Name: "heal", HA: true}); err != nil {
		t.Fatal(err)
	}
	vm := waitFor(t, d, "heal", 90*time.Second, "running", healthyRunning)
	if len(d.WatchdogPids()) != 1 {
		t.Errorf("watchdog processes for the HA guest: %v, want one", d.WatchdogPids())
	}
	newBoot := func(what string, before *api.VM, restarts int) *api.VM {
		t.Helper()
		got := waitFor(t, d, "heal", 90*time.Second, what, func(v *api.VM) bool {
			return healthyRunning(v) && v.Status.PID != before.Status.PID && v.Status.Guest.BootID != before.Status.Guest.BootID
		})
		if got.Status.Restarts != restarts {
			t.Errorf("%s: restarts %d, want %d", what, got.Status.Restarts, restarts)
		}
		return got
	}

	if err := syscall.Kill(vm.Status.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	vm = newBoot("restarted after its QEMU was killed", vm, 1)

	c, err := qemu.DialQMP(ctx, agent.StatusSocket(d.RunDir, "heal"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	vm = newBoot("reset after it stopped answering", vm, 2)

	evs, err := d.Client.EventsMatching(ctx, client.EventFilter{Kind: "guest-"}, 200)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
	}
	if kinds["guest-exited"] != 2 || kinds["guest-unresponsive"] != 1 {
		t.Errorf("events %v, want 2 guest-exited and 1 guest-unresponsive", kinds)
	}
}
