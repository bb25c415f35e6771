package agent_test

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/predict"
	"github.com/ferryvm/ferry/internal/simqemu"
	"github.com/ferryvm/ferry/internal/wait"
)

// writeZone sets a host's thermal zone (with a critical trip point at
// 85 °C) to a temperature, under its health root.
func writeZone(t *testing.T, root string, celsius float64) {
	z := filepath.Join(root, "sys/class/thermal/thermal_zone0")
	for name, v := range map[string]string{"temp": fmt.Sprint(int(celsius * 1000)),
		"trip_point_0_type": "critical", "trip_point_0_temp": "85000"} {
		if err := os.MkdirAll(z, 0o755); err != nil {
			t.Error(err)
			return
		}
		if err := os.WriteFile(filepath.Join(z, name), []byte(v+"\n"), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// TestHostAtRiskIsEvacuatedLive: a host whose temperature climbs towards
// its critical trip point forecasts its own failure, is marked at risk and
// put in maintenance with the reason, and its guests (HA or not) move away
// by live migration before it fails — the same boots, no restart — while
// hosts whose temperature is noisy but flat are left alone.
func TestHostAtRiskIsEvacuatedLive(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 3, controlPlane: true, migrationTLS: true, healthEvery: 100 * time.Millisecond,
		risk: predict.RiskConfig{Horizon: 3 * time.Second}})
	ctx := context.Background()
	vms := []string{"hot-ha", "hot-plain"}
	boots := map[string]string{}
	for i, name := range vms {
		vm := e.create(name, "h1", i == 0)
		boots[name], _ = e.oneCopy(vm, "h1").Boot()
	}
	tctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(7))
		start := time.Now()
		for tctx.Err() == nil {
			// h1 heats 5 °C a second from 40 °C; the others hover
			// around 45 °C, 5 °C either way.
			writeZone(t, e.c.Host("h1").HealthRoot(), min(40+5*time.Since(start).Seconds(), 84))
			for _, h := range []string{"h2", "h3"} {
				writeZone(t, e.c.Host(h).HealthRoot(), 45+10*(rng.Float64()-0.5))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	defer func() { stop(); wg.Wait() }()

	wait.For(t, 30*time.Second, "h1 to be at risk and in maintenance", func() (bool, error) {
		nodes, err := e.st.ListNodes(ctx)
		for _, n := range nodes {
			if n.Name == "h1" {
				return n.Risk != nil && n.Risk.AtRisk && n.Maintenance, fmt.Errorf("risk %+v, maintenance %v", n.Risk, n.Maintenance)
			}
		}
		return false, err
	})
	for _, name := range vms {
		vm, err := e.st.GetVM(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		wait.For(t, 30*time.Second, name+" to leave h1", func() (bool, error) {
			ps := e.procs(vm)
			return len(ps) == 1 && ps[0].Host != "h1", fmt.Errorf("%d copies, on %v", len(ps), hostsOf(ps))
		})
		if id, _ := e.procs(vm)[0].Boot(); id != boots[name] {
			t.Errorf("%s was restarted, not moved live: boot %s, was %s", name, id, boots[name])
		}
	}
	evs, err := e.st.ListEvents(ctx, 200)
	if err != nil {
		t.Fatal(err)
	}
	var atRisk []string
	for _, ev := range evs {
		if ev.Kind == "host-at-risk" {
			atRisk = append(atRisk, ev.Node)
			if !strings.Contains(ev.Message, "thermal/thermal_zone0") {
				t.Errorf("the event does not name the signal: %q", ev.Message)
			}
		}
	}
	if len(atRisk) != 1 || atRisk[0] != "h1" {
		t.Fatalf("host-at-risk events for %v, want h1 alone", atRisk)
	}
	nodes, _ := e.st.ListNodes(ctx)
	for _, n := range nodes {
		if n.Name != "h1" && (n.Maintenance || n.Risk == nil || n.Risk.AtRisk) {
			t.Errorf("%s, flat and noisy, was judged at risk or drained: %+v, maintenance %v", n.Name, n.Risk, n.Maintenance)
		}
	}
}

func hostsOf(ps []*simqemu.Proc) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Host)
	}
	return out
}
