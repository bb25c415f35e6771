package metrics

import (
	"strings"

	"github.com/ferryvm/ferry/api"
)

// ObserveMigration records what one write of a migration record changed
// (old is the record it replaced; nil for a new one): its end (counted by
// strategy, outcome and reason, with its figures when it completed), the
// client pause once measured, escalations taken and bytes sent. The store
// calls it after each successful write, so every change is seen once, by
// the process that made it.
func ObserveMigration(old, m *api.Migration) {
	if old != nil && old.ID != m.ID {
		old = nil // a new migration replaced the guest's last one
	}
	strategy := m.Options.Strategy
	if m.Options.Compress {
		strategy = "compress"
	}
	if strategy == "" {
		strategy = "precopy"
	}
	if api.MigrationTerminal(m.Phase) && (old == nil || !api.MigrationTerminal(old.Phase)) {
		reason := "operator"
		if strings.HasPrefix(m.Reason, "drain") {
			reason = "drain"
		}
		MigrationsTotal.WithLabelValues(strategy, m.Phase, reason).Inc()
		if m.Phase == api.MigCompleted && !m.Finished.IsZero() {
			total := m.Finished.Sub(m.Started).Seconds()
			MigrationDuration.WithLabelValues(strategy).Observe(total)
			if p := m.Prediction; p != nil {
				if c := p.ChosenPrediction(); c != nil && c.TotalMS > 0 {
					MigrationPredicted.WithLabelValues(strategy).Observe(c.TotalMS / 1000)
					MigrationPredictionRatio.WithLabelValues(strategy).Observe(total * 1000 / c.TotalMS)
				}
			}
		}
	}
	// The source writes QEMU's downtime and the bytes sent once the target
	// took over, before or after the target writes the completion: each
	// is counted when it first appears.
	if m.DowntimeMS > 0 && (old == nil || old.DowntimeMS == 0) {
		MigrationDowntime.WithLabelValues(strategy).Observe(float64(m.DowntimeMS) / 1000)
	}
	if m.BytesSent > 0 && (old == nil || old.BytesSent == 0) {
		MigrationBytes.WithLabelValues(strategy).Observe(float64(m.BytesSent))
	}
	if m.ServicePauseMS > 0 && (old == nil || old.ServicePauseMS == 0) {
		MigrationServicePause.WithLabelValues(strategy).Observe(float64(m.ServicePauseMS) / 1000)
	}
	var before int
	var sent int64
	if old != nil {
		before, sent = len(old.Escalations), sentSoFar(old)
	}
	for _, e := range m.Escalations[min(before, len(m.Escalations)):] {
		MigrationEscalations.WithLabelValues(e.Kind).Inc()
	}
	if now := sentSoFar(m); now > sent && m.Source != "" {
		MigrationSentBytes.WithLabelValues(m.Source).Add(float64(now - sent))
	}
}

// sentSoFar is what a migration has sent: its progress while it runs, its
// total once it ended.
func sentSoFar(m *api.Migration) int64 { return max(m.Progress.TransferredBytes, m.BytesSent) }
