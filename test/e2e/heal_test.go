package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/ferryvm/ferry/internal/wait"
)

// TestCrowdedGuestIsHealed: a noisy neighbour that is no guest of Ferry's
// (a process spinning in h2's capped CPU) leaves h2's guest waiting for
// its CPUs while its host's load, its guests' use, looks light. With the
// balancer off and self-healing on, the guest is moved live to a host
// where it is served well: a heal-move event saying what was measured,
// the same boot, and on its new host it waits no more.
func TestCrowdedGuestIsHealed(t *testing.T) {
	args := []string{"--heal=true", "--balance", "off", "--balance-sustain", "5s", "--load-every", "1s"}
	b, cl := newBedWith(t, testbed.Options{Hosts: 3, HostCPUs: 0.6, HostArgs: map[int][]string{0: args, 1: args, 2: args}})
	ctx := ctxT(t, 5*time.Minute)
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "crowded"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "crowded", 90*time.Second, "running and healthy", healthyRunning)
	if vm.Node != "h2" {
		m, err := cl.MigrateVM(ctx, "crowded", api.MigrateRequest{To: "h2"})
		if err != nil {
			t.Fatal(err)
		}
		if m = waitMigEnd(t, cl, "crowded", m.ID); m.Phase != api.MigCompleted {
			t.Fatalf("moving it to h2: %s %s", m.Phase, m.Error)
		}
		vm = waitVM(t, cl, "crowded", time.Minute, "running on h2", func(v *api.VM) bool { return v.Node == "h2" && healthyRunning(v) })
	}
	boot := vm.Status.Guest.BootID
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")
	hc := b.HTTPClient(b.ClientNS, 5*time.Second)
	resp, err := hc.Post(fmt.Sprintf("http://%s/cpu?share=0.1", ip), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("setting its CPU share: %s", resp.Status)
	}
	stop, err := b.Neighbour("h2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	var ev api.Event
	var crowded api.GuestLoad // on h2, last seen
	wait.For(t, 2*time.Minute, "a heal-move of the crowded guest", func() (bool, error) {
		evs, err := cl.EventsMatching(ctx, client.EventFilter{VM: "crowded", Kind: "heal-move"}, 10)
		for _, e := range evs {
			if e.Kind == "heal-move" {
				ev = e
				t.Logf("event: %s", e.Message)
				return true, nil
			}
		}
		// Why not: the guest's load on h2, the balancer's plan.
		nodes, _ := cl.ListNodes(ctx)
		plan, _ := cl.BalancePlan(ctx)
		for _, n := range nodes {
			if n.Name == "h2" && n.Load != nil {
				crowded = n.Load.Guests["crowded"]
				return false, fmt.Errorf("on h2: %+v (host waiting %.2f); plan %+v; %v", n.Load.Guests["crowded"], n.Load.Waiting, plan, err)
			}
		}
		return false, err
	})
	if ev.Node != "h2" || !strings.Contains(ev.Message, "waited for its CPUs") {
		t.Fatalf("heal-move: %+v", ev)
	}
	vm = waitVM(t, cl, "crowded", 2*time.Minute, "running away from h2", func(v *api.VM) bool { return v.Node != "h2" && healthyRunning(v) })
	if vm.Status.Guest.BootID != boot {
		t.Fatalf("the guest was restarted (boot %s, was %s), not moved live", vm.Status.Guest.BootID, boot)
	}
	waitOneQEMU(t, b, vm.Spec.UUID, vm.Node)
	var served api.GuestLoad
	wait.For(t, time.Minute, "the guest served well on "+vm.Node, func() (bool, error) {
		nodes, err := cl.ListNodes(ctx)
		for _, n := range nodes {
			if n.Name == vm.Node && n.Load != nil {
				g, ok := n.Load.Guests["crowded"]
				served = g
				// Served well by the healer's own measure, and waiting
				// far less than it did on h2.
				return ok && n.Load.Sampled.After(ev.Time.Add(10*time.Second)) &&
						(g.Waiting < 0.25 || g.Waiting < 0.5*(g.CPU+g.Waiting)) && g.Waiting < crowded.Waiting/2,
					fmt.Errorf("its load there: %+v; on h2 it waited %.2f", g, crowded.Waiting)
			}
		}
		return false, err
	})
	t.Logf("on h2 crowded: used %.2f CPUs, waited %.2f, health answers in %.0f ms; on %s: uses %.2f, waits %.2f, answers in %.0f ms",
		crowded.CPU, crowded.Waiting, crowded.HealthMS, vm.Node, served.CPU, served.Waiting, served.HealthMS)
}
