package e2e

import (
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
)

// Every strategy moves a guest, keeping it running (same boot) on exactly
// one host. The guest is idle: QEMU 7.2 under TCG loses pages that a guest
// dirties during migration (reproduced without Ferry; see
// docs/BENCHMARKS.md), which would crash the guest whatever the strategy.
func TestMigrationStrategies(t *testing.T) {
	b, cl := newBed(t, 2)
	ctx := ctxT(t, 10*time.Minute)
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "strat"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "strat", 3*time.Minute, "running and healthy", healthyRunning)
	for _, c := range []api.MigrateRequest{
		{Strategy: api.StrategyPrecopy, MaxDowntime: "100ms"},
		{Strategy: api.StrategyAutoConverge},
		{Strategy: api.StrategyMultifd},
		{Strategy: api.StrategyPrecopy, Compress: true},
		{Strategy: api.StrategyPostcopy},
	} {
		name := c.Strategy
		if c.Compress {
			name += "+compress"
		}
		t.Run(name, func(t *testing.T) {
			c.To = "auto"
			m, err := cl.MigrateVM(ctx, "strat", c)
			if err != nil {
				t.Fatal(err)
			}
			m = waitMigEnd(t, cl, "strat", m.ID)
			if m.Phase != api.MigCompleted {
				t.Fatalf("%s: %s", m.Phase, m.Error)
			}
			t.Logf("total %dms, downtime %dms, sent %d bytes", m.TotalTimeMS, m.DowntimeMS, m.Progress.TransferredBytes)
			auditOne(t, b, cl, vm, m.Target)
			vm.Node = m.Target
		})
	}
}
