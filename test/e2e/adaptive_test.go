package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/ferryvm/ferry/internal/wait"
)

// The link between the two hosts, and how the guest dirties memory: 24
// MiB/s of whole random pages (incompressible), rewriting a 32 MiB set,
// over a 100 Mbit/s link (12.5 MB/s) — every round leaves the whole set
// behind, 2.7 s of sending where QEMU's default limit is 300 ms.
const (
	busyLinkBits = 100e6
	busyDirtyMiB = 24
	busySetMiB   = 32
)

// A guest that dirties memory faster than its link can carry. Plain QEMU,
// started and migrated by hand with its defaults, does not converge within
// a minute; Ferry, choosing by itself from what its hosts measured, moves
// the guest, which answers again within the pause its policy allows and
// finds its memory intact.
// (Long on purpose: a scenario read top to bottom; split, its story would scatter.)
func TestBusyGuestMovesAutomatically(t *testing.T) {
	b, cl := newBedWith(t, testbed.Options{Hosts: 2, EmulatedLinks: true})
	ctx := ctxT(t, 8*time.Minute)
	if err := b.SetLink(ctx, "h1", "h2", linkemu.Profile{RateBits: busyLinkBits, Delay: 2 * time.Millisecond}, false); err != nil {
		t.Fatal(err)
	}
	hc := b.HTTPClient(b.ClientNS, 5*time.Second)

	// Plain QEMU with its defaults (a 300 ms downtime limit, no
	// capabilities) for a minute.
	img, err := image.Find(imageDir)
	if err != nil {
		t.Fatal(err)
	}
	g, err := b.BootRaw(ctx, img, "")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := testbed.SetDirty(ctx, hc, testbed.RawIP, busyDirtyMiB, busySetMiB, true); err != nil {
		t.Fatal(err)
	}
	if err := g.StartTarget(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Migrate(ctx, false, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var rounds int64
	for time.Since(start) < time.Minute {
		info, err := g.Src.QueryMigrate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Status != "active" && info.Status != "setup" {
			t.Fatalf("plain QEMU's migration is %s after %s, want still active (not converging)", info.Status, time.Since(start).Round(time.Second))
		}
		if info.RAM != nil {
			rounds = info.RAM.DirtySyncCount
		}
		time.Sleep(time.Second)
	}
	if rounds < 3 {
		t.Fatalf("plain QEMU made %d dirty-bitmap syncs in a minute, want at least 3 (its rounds never shrinking)", rounds)
	}
	t.Logf("plain QEMU with its defaults: still copying after a minute, %d rounds", rounds)
	g.Src.MigrateCancel(ctx)
	g.Close()

	// Ferry, from its own measurements.
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "busy"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "busy", 90*time.Second, "running and healthy", healthyRunning)
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")
	to := "h1"
	if vm.Node == to {
		to = "h2"
	}
	if err := testbed.SetDirty(ctx, hc, ip, busyDirtyMiB, busySetMiB, true); err != nil {
		t.Fatal(err)
	}
	dirtying := time.Now()
	waitVM(t, cl, "busy", 90*time.Second, "its busy memory measured", func(vm *api.VM) bool {
		return vm.Status.Memory != nil && vm.Status.Memory.MeasuredAt.After(dirtying.Add(5*time.Second))
	})
	if err := cl.ProbeLinks(ctx); err != nil {
		t.Fatal(err)
	}
	asked := time.Now()
	wait.For(t, time.Minute, "the link measured", func() (bool, error) {
		ls, err := cl.ListLinks(ctx)
		for _, l := range ls {
			if l.From == vm.Node && l.To == to && l.MeasuredAt.After(asked) {
				return true, nil
			}
		}
		return false, err
	})
	pred, err := cl.PredictMigration(ctx, "busy", api.MigrateRequest{To: to})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: %+v; link %+v", pred.Memory, pred.Link)
	for _, s := range pred.Strategies {
		t.Logf("predicted %-13s fits %-5v total %7.0fms downtime %5.0fms  %s", s.Strategy, s.Converges, s.TotalMS, s.DowntimeMS, s.Why)
		if s.Strategy == api.StrategyPrecopy && s.Converges {
			t.Errorf("pre-copy predicted to converge for a guest dirtying faster than its link (%s)", s.Why)
		}
	}
	if pred.Chosen == "" || pred.Chosen == api.StrategyPrecopy || pred.Chosen == api.StrategyMultifd {
		t.Fatalf("Ferry would pick %q: %s", pred.Chosen, pred.Why)
	}

	w, err := testbed.WatchStream(context.Background(), b.HTTPClient(b.ClientNS, 0), ip, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	completed := map[string]string{"outcome": api.MigCompleted, "strategy": pred.Chosen}
	done0 := scrape(t, b, "ferry_migrations_total", completed)
	m, err := cl.MigrateVM(ctx, "busy", api.MigrateRequest{To: to})
	if err != nil {
		t.Fatal(err)
	}
	// The metrics move while it copies: the bytes sent so far, scraped
	// from every host as Prometheus would, twice, 3 s apart, early in the
	// copy (far from the switchover, whose pause the test times on a
	// machine the scrapes would share).
	var sent []float64
	var scraped time.Time
	m, err = cl.WaitMigration(ctxT(t, 5*time.Minute), "busy", m.ID, func(p *api.Migration) {
		if p.Phase == api.MigCopying && len(sent) < 2 && time.Since(scraped) > 3*time.Second {
			scraped = time.Now()
			sent = append(sent, scrape(t, b, "ferry_migration_sent_bytes_total", map[string]string{"host": p.Source}))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) < 2 || sent[len(sent)-1] <= sent[0] {
		t.Errorf("ferry_migration_sent_bytes_total of the source did not grow while the guest copied: %v", sent)
	}
	if got := scrape(t, b, "ferry_migrations_total", completed) - done0; got != 1 {
		t.Errorf("ferry_migrations_total%v grew by %v over the move, want 1", completed, got)
	}
	time.Sleep(2 * time.Second)
	r := w.Stop()
	if m.Phase != api.MigCompleted {
		t.Fatalf("Ferry's migration %s: %s", m.Phase, m.Error)
	}
	t.Logf("Ferry chose %s (%s): total %s, downtime %d ms, service pause %d ms, %d bytes, throttle %d %%, escalations %+v; the guest's stream: longest gap %s, intact %v",
		m.Options.Strategy, m.Prediction.Why, m.Finished.Sub(m.Started).Round(time.Millisecond), m.DowntimeMS, m.ServicePauseMS, m.BytesSent,
		m.Progress.CPUThrottle, m.Escalations, r.LongestGap, r.Intact)
	t.Logf("longest gap %s-%s", r.GapFrom.Format("15:04:05.000"), r.GapTo.Format("15:04:05.000"))
	for _, s := range m.Timeline {
		t.Logf("  %s %s %s", s.At.Format("15:04:05.000"), s.Host, s.Step)
	}
	if !m.Options.Auto || m.Prediction == nil {
		t.Fatalf("the migration was not chosen automatically: %+v", m.Options)
	}
	allowed := time.Duration(m.Options.AllowedDowntimeMS) * time.Millisecond
	if d := time.Duration(m.DowntimeMS) * time.Millisecond; d > allowed {
		t.Errorf("downtime %s beyond the %s the policy allows", d, allowed)
	}
	if r.LongestGap > allowed {
		t.Errorf("the guest's service stopped for %s, beyond the %s the policy allows", r.LongestGap, allowed)
	}
	if !r.Intact {
		t.Errorf("the guest's stream broke: %s", r.Problem)
	}
	c, err := testbed.CheckMemory(hc, ip)
	if err != nil || !c.OK {
		t.Fatalf("the guest's memory after the move: %+v %v", c, err)
	}
	waitOneQEMU(t, b, vm.Spec.UUID, to)
}
