package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
)

// A post-copy migration whose link is cut for 5 s after the switchover (the
// guest already runs on the target, its remaining pages still on the
// source) recovers once the link is back and completes, the guest alive on
// the target with its memory intact. The cut drops packets silently, as a
// dead link does: the source notices that nothing moves, breaks the stream
// and the agents set up a new one through the record.
func TestPostcopyRecoversFromACutLink(t *testing.T) {
	b, cl := newBed(t, 2)
	ctx := ctxT(t, 10*time.Minute)
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "pc", Memory: "512M"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "pc", 3*time.Minute, "running and healthy", healthyRunning)
	g := newGuestClient(t, b, vm)
	g.post("/memory?size=64")
	// A large dirty set keeps the post-copy phase long at 16 MiB/s: the
	// guest rewrites its 192 MiB buffer faster than the first pass sends it.
	g.post("/dirty?rate=24&size=192")
	for deadline := time.Now().Add(time.Minute); g.dirtied() < 2*49152; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the guest did not dirty its buffer")
		}
	}
	src, dst := hostIndex(b, vm.Node), 1-hostIndex(b, vm.Node)
	m, err := cl.MigrateVM(ctx, "pc", api.MigrateRequest{To: b.Hosts[dst].Name, Strategy: api.StrategyPostcopy, MaxBandwidth: "16M"})
	if err != nil {
		t.Fatal(err)
	}
	waitMigPhase(t, cl, "pc", m.ID, api.MigSwitchover)
	time.Sleep(time.Second) // well into post-copy
	if cur, err := cl.GetMigration(ctx, "pc"); err != nil || cur.Phase != api.MigSwitchover {
		t.Fatalf("post-copy over before the cut (%v): the test needs a longer post-copy phase", err)
	}
	cutAt := time.Now()
	for _, c := range [][2]int{{src, dst}, {dst, src}} {
		if err := b.CutMigrationLink(c[0], c[1]); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { b.RestoreMigrationLink(src); b.RestoreMigrationLink(dst) })
	time.Sleep(5 * time.Second)
	for _, i := range []int{src, dst} {
		if err := b.RestoreMigrationLink(i); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("migration link cut from %s to %s", cutAt.Format("15:04:05.000"), time.Now().Format("15:04:05.000"))
	m = waitMigEnd(t, cl, "pc", m.ID)
	for _, e := range m.Timeline {
		t.Logf("  %s %-4s %s", e.At.Local().Format("15:04:05.000"), e.Host, e.Step)
	}
	if m.Phase != api.MigCompleted {
		t.Fatalf("migration %s: %s", m.Phase, m.Error)
	}
	if m.Recoveries < 1 {
		t.Fatalf("the migration completed without a recovery (%d asked for): the cut did not hit post-copy", m.RecoverSeq)
	}
	var broken bool
	for _, e := range m.Timeline {
		broken = broken || (strings.Contains(e.Step, "stream broken") && e.At.After(cutAt))
	}
	if !broken {
		t.Error("the timeline shows no broken stream after the cut")
	}
	auditOne(t, b, cl, vm, b.Hosts[dst].Name)
	g.checkMemory()
}
