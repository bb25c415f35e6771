package agent

import (
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/hostnet"
)

// trafficMeter splits the host's underlay traffic into classes for the
// heartbeat. The devices count everything (the underlay) and the guests'
// share (the VXLAN device); live migrations' bytes come from their records'
// progress as the agent sees them, sent where this host is the source and
// received where it is the target; the control plane is what is left.
type trafficMeter struct {
	mu sync.Mutex
	// seen is what each migration had transferred when last counted, and
	// when that was.
	seen             map[string]seenMigration
	migSent, migRecv int64
	// prev is the reading the next rates are taken against.
	prev    hostnet.Traffic
	prevMig [2]int64
	prevAt  time.Time
}

type seenMigration struct {
	bytes int64
	at    time.Time
}

// forgetMigrations is how long a migration not seen again stays known
// (a record read again later must not be counted twice).
const forgetMigrations = time.Hour

func newTrafficMeter() *trafficMeter { return &trafficMeter{seen: map[string]seenMigration{}} }

// sawMigration counts what m transferred since it was last seen, as sent
// when self is its source and as received when self is its target.
func (t *trafficMeter) sawMigration(m *api.Migration, self string, now time.Time) {
	if m == nil || m.ID == "" || (m.Source != self && m.Target != self) {
		return
	}
	bytes := max(m.Progress.TransferredBytes, m.BytesSent)
	t.mu.Lock()
	defer t.mu.Unlock()
	prev, known := t.seen[m.ID]
	t.seen[m.ID] = seenMigration{bytes: max(bytes, prev.bytes), at: now}
	if !known && api.MigrationTerminal(m.Phase) && !m.Finished.IsZero() && now.Sub(m.Finished) > time.Minute {
		return // an old record read again after the agent started: not this window's traffic
	}
	if d := bytes - prev.bytes; d > 0 {
		if m.Source == self {
			t.migSent += d
		} else {
			t.migRecv += d
		}
	}
	for id, s := range t.seen {
		if now.Sub(s.at) > forgetMigrations {
			delete(t.seen, id)
		}
	}
}

// rates returns the traffic by class since the previous call, from the
// devices' counters cur; nil on the first call or when a counter went
// back (a device was recreated).
func (t *trafficMeter) rates(cur hostnet.Traffic, now time.Time) *api.NodeTraffic {
	t.mu.Lock()
	defer t.mu.Unlock()
	prev, prevMig, prevAt := t.prev, t.prevMig, t.prevAt
	t.prev, t.prevMig, t.prevAt = cur, [2]int64{t.migSent, t.migRecv}, now
	secs := now.Sub(prevAt).Seconds()
	if prevAt.IsZero() || secs <= 0 || cur.UnderlaySent < prev.UnderlaySent || cur.UnderlayReceived < prev.UnderlayReceived ||
		cur.OverlaySent < prev.OverlaySent || cur.OverlayReceived < prev.OverlayReceived {
		return nil
	}
	split := func(total, guest, mig int64) api.TrafficClasses {
		// The counters are read at slightly different moments and the
		// overlay's encapsulation is estimated: no class exceeds what
		// the underlay carried.
		guest = min(guest, total)
		mig = min(mig, total-guest)
		return api.TrafficClasses{
			Total:     float64(total) / secs,
			Guest:     float64(guest) / secs,
			Migration: float64(mig) / secs,
			Control:   float64(total-guest-mig) / secs,
		}
	}
	return &api.NodeTraffic{
		Sent:     split(cur.UnderlaySent-prev.UnderlaySent, cur.OverlaySent-prev.OverlaySent, t.migSent-prevMig[0]),
		Received: split(cur.UnderlayReceived-prev.UnderlayReceived, cur.OverlayReceived-prev.OverlayReceived, t.migRecv-prevMig[1]),
		WindowMS: now.Sub(prevAt).Milliseconds(),
		Measured: now.UTC(),
	}
}
