package metrics

import (
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
)

// value is a series' value in the registry (Sum); -1 when there is no
// such series.
func value(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			if v, ok := Sum(f, labels); ok {
				return v
			}
		}
	}
	return -1
}

// at0 reads a series that may not exist yet as 0.
func at0(t *testing.T, name string, labels map[string]string) float64 {
	return max(0, value(t, name, labels))
}

// A migration's records, written one after the other as its parts write
// them, are counted once each: bytes as they are sent, each escalation, the
// end by strategy, outcome and reason with its figures, the client pause
// once measured; writing the end again counts nothing more.
func TestObserveMigration(t *testing.T) {
	done := map[string]string{"strategy": "auto-converge", "outcome": "completed", "reason": "drain"}
	downtime0 := at0(t, "ferry_migration_downtime_seconds", map[string]string{"strategy": "auto-converge"})
	kind := map[string]string{"strategy": "auto-converge"}
	sent := map[string]string{"host": "src-h"}
	before := []float64{at0(t, "ferry_migrations_total", done), at0(t, "ferry_migration_duration_seconds", kind),
		at0(t, "ferry_migration_prediction_ratio", kind), at0(t, "ferry_migration_service_pause_seconds", kind),
		at0(t, "ferry_migration_sent_bytes_total", sent), at0(t, "ferry_migration_escalations_total", map[string]string{"escalation": "throttle"})}

	start := time.Now()
	m := &api.Migration{ID: "a", VM: "v", Source: "src-h", Target: "dst-h", Phase: api.MigQueued, Reason: "drain of src-h", Started: start,
		Options:    api.MigrationOptions{Strategy: "auto-converge"},
		Prediction: &api.MigrationPrediction{Chosen: "auto-converge", Strategies: []api.StrategyPrediction{{Strategy: "auto-converge", TotalMS: 10000}}}}
	step := func(change func(*api.Migration)) {
		old := *m
		next := *m
		change(&next)
		ObserveMigration(&old, &next)
		*m = next
	}
	ObserveMigration(nil, m)
	step(func(m *api.Migration) { m.Phase = api.MigCopying; m.Progress.TransferredBytes = 10 << 20 })
	step(func(m *api.Migration) { m.Progress.TransferredBytes = 30 << 20 })
	step(func(m *api.Migration) {
		m.Escalations = append(m.Escalations, api.MigrationEscalation{Kind: api.EscalateThrottle})
	})
	// The target writes the completion, the source its figures after.
	step(func(m *api.Migration) { m.Phase, m.Finished = api.MigCompleted, start.Add(12*time.Second) })
	step(func(m *api.Migration) { m.BytesSent, m.DowntimeMS = 40<<20, 200 })
	step(func(m *api.Migration) { m.ServicePauseMS = 450 })
	step(func(m *api.Migration) { m.Timeline = append(m.Timeline, api.MigrationEvent{Step: "noted"}) })

	after := []float64{at0(t, "ferry_migrations_total", done), at0(t, "ferry_migration_duration_seconds", kind),
		at0(t, "ferry_migration_prediction_ratio", kind), at0(t, "ferry_migration_service_pause_seconds", kind),
		at0(t, "ferry_migration_sent_bytes_total", sent), at0(t, "ferry_migration_escalations_total", map[string]string{"escalation": "throttle"})}
	if got := at0(t, "ferry_migration_downtime_seconds", map[string]string{"strategy": "auto-converge"}) - downtime0; got != 1 {
		t.Errorf("downtime observed %v times, want once", got)
	}
	want := []float64{1, 1, 1, 1, 40 << 20, 1}
	names := []string{"migrations_total", "duration", "prediction ratio", "service pause", "sent bytes", "escalations"}
	for i := range want {
		if got := after[i] - before[i]; got != want[i] {
			t.Errorf("%s grew by %v, want %v", names[i], got, want[i])
		}
	}
}

// Each registered host's figures are in a scrape with its name, every
// guest phase reported (0 where none), until it is unregistered.
func TestHostFigures(t *testing.T) {
	unregister := RegisterHost("fig-h", func() HostFigures {
		return HostFigures{Guests: map[string]int{"running": 2, "stopped": 1}, MemoryBytes: 8 << 30, AllocatedBytes: 1 << 30, CPUs: 4, Load1: 0.5,
			Links:    []LinkFigures{{Peer: "fig-p", RTT: 3 * time.Millisecond, Bandwidth: 12.5e6}},
			Network:  &NetworkFigures{UnderlaySent: 9000, UnderlayReceived: 8000, OverlaySent: 3000, OverlayReceived: 2000},
			GuestCPU: map[string]time.Duration{"web": 1500 * time.Millisecond}}
	})
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ferry_guests", map[string]string{"host": "fig-h", "state": "running"}, 2},
		{"ferry_guests", map[string]string{"host": "fig-h", "state": "stopped"}, 1},
		{"ferry_guests", map[string]string{"host": "fig-h", "state": "failed"}, 0},
		{"ferry_host_memory_allocated_bytes", map[string]string{"host": "fig-h"}, 1 << 30},
		{"ferry_link_rtt_seconds", map[string]string{"host": "fig-h", "peer": "fig-p"}, 0.003},
		{"ferry_link_bandwidth_bytes_per_second", map[string]string{"host": "fig-h", "peer": "fig-p"}, 12.5e6},
		{"ferry_network_bytes_total", map[string]string{"host": "fig-h", "class": "overlay", "direction": "sent"}, 3000},
		{"ferry_network_bytes_total", map[string]string{"host": "fig-h", "class": "underlay", "direction": "received"}, 8000},
		{"ferry_guest_cpu_seconds_total", map[string]string{"host": "fig-h", "vm": "web"}, 1.5},
	} {
		if got := value(t, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	unregister()
	if got := value(t, "ferry_guests", map[string]string{"host": "fig-h"}); got != -1 {
		t.Errorf("an unregistered host is still reported (%v)", got)
	}
}
