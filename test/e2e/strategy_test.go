package e2e

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/testbed"
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
	settle()
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
			checkMigrationTLS(t, b, m.Target, "strat", true)
		})
	}

	// Plaintext is refused until an admin allows it for the cluster, and
	// then it really is plaintext.
	t.Run("plaintext", func(t *testing.T) {
		_, err := cl.MigrateVM(ctx, "strat", api.MigrateRequest{To: "auto", Plaintext: true})
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "plaintext migration is refused") {
			t.Fatalf("plaintext migration not refused: %v", err)
		}
		sec, err := cl.SetSecurity(ctx, api.SecurityRequest{PlaintextMigration: true, Reason: "test"})
		if err != nil {
			t.Fatal(err)
		}
		if sec.Warning == "" {
			t.Error("the API does not warn while plaintext migration is allowed")
		}
		m, err := cl.MigrateVM(ctx, "strat", api.MigrateRequest{To: "auto", Plaintext: true})
		if err != nil {
			t.Fatal(err)
		}
		if m = waitMigEnd(t, cl, "strat", m.ID); m.Phase != api.MigCompleted {
			t.Fatalf("%s: %s", m.Phase, m.Error)
		}
		auditOne(t, b, cl, vm, m.Target)
		vm.Node = m.Target
		checkMigrationTLS(t, b, m.Target, "strat", false)
		if _, err := cl.SetSecurity(ctx, api.SecurityRequest{}); err != nil {
			t.Fatal(err)
		}
		// Back to TLS for the next move.
		m, err = cl.MigrateVM(ctx, "strat", api.MigrateRequest{To: "auto"})
		if err != nil {
			t.Fatal(err)
		}
		if m = waitMigEnd(t, cl, "strat", m.ID); m.Phase != api.MigCompleted {
			t.Fatalf("%s: %s", m.Phase, m.Error)
		}
		checkMigrationTLS(t, b, m.Target, "strat", true)
	})
}

// checkMigrationTLS asks the guest's QEMU on host (through its status
// monitor) whether the stream it arrived by was TLS with an authorization
// rule.
func checkMigrationTLS(t *testing.T, b *testbed.Bed, host, name string, want bool) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	c, err := qemu.Dial(ctx, agent.StatusSocket(b.Hosts[hostIndex(b, host)].RunDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var p struct {
		Creds string `json:"tls-creds"`
		Authz string `json:"tls-authz"`
	}
	if err := c.Execute(ctx, "query-migrate-parameters", nil, &p); err != nil {
		t.Fatal(err)
	}
	if got := p.Creds != "" && p.Authz != ""; got != want {
		t.Errorf("%s arrived on %s with tls-creds %q, tls-authz %q; want TLS %v", name, host, p.Creds, p.Authz, want)
	}
}
