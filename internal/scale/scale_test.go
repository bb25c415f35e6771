package scale

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/store/storetest"
)

// TestRestartsIssuedAt50Hosts runs the scale benchmark at 50 hosts and holds
// it to the bound the 1,000-host target sets: every restart of a dead
// 50-guest host issued within 2 s of its lease expiring. Each step also
// checks itself (every guest runs, every API call answers, every guest of
// the dead host runs again exactly once elsewhere).
//
// The hosts hold 6 s leases, not the default 2 s: `go test ./...` runs this
// beside the end-to-end suite's QEMU guests on two cores, and there a 2 s
// lease of one of 50 agents in one process lapsed before the kill (CI, stop
// 18: 29 of the victim's guests had moved). The bound is on the leader's
// work after the expiry, which the lease's length does not change.
func TestRestartsIssuedAt50Hosts(t *testing.T) {
	if testing.Short() {
		t.Skip("50 simulated hosts take half a minute")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Hosts: 50, GuestsPerHost: 5, VictimGuests: 50, Candidates: 3, LeaseTTL: 6 * time.Second,
		Endpoints: storetest.Etcd(t), Etcd: "embedded (in the test)", Dir: dirForTest(t), Samples: 10, Idle: 2 * time.Second,
		Progress: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", *res)
	if res.VMs != 49*5+50 {
		t.Fatalf("%d guests ran, want %d", res.VMs, 49*5+50)
	}
	for _, k := range []string{"get", "list", "create", "migrate", "delete"} {
		if res.API[k].N == 0 {
			t.Errorf("no %s call was timed", k)
		}
	}
	if d := res.Death; d.RestartsIssuedMS > 2000 {
		t.Fatalf("the last of %d restarts was issued %.0f ms after the dead host's lease expired; the bound is 2000 ms", d.Guests, d.RestartsIssuedMS)
	}
}

func dirForTest(t *testing.T) string {
	if d := os.Getenv("FERRY_SCALE_DIR"); d != "" {
		return d
	}
	return t.TempDir()
}
