package health

import (
	"context"
	"sync"
	"time"
)

// Self holds the health signals the agent observes in its own work rather
// than reads from the host: how many guests' QEMU processes crashed while
// running, and how long the last lease renewals took (a host whose
// renewals slow down is the next one to self-fence).
type Self struct {
	mu         sync.Mutex
	qemuErrors float64
	renewal    time.Duration // the slowest renewal since the last read
	fresh      bool          // a renewal happened since the last read
	renewed    bool          // one ever happened
}

// Name is "agent".
func (*Self) Name() string { return "agent" }

// QEMUError counts one crash of a running guest's QEMU.
func (s *Self) QEMUError() {
	s.mu.Lock()
	s.qemuErrors++
	s.mu.Unlock()
}

// LeaseRenewed records how long a lease renewal took.
func (s *Self) LeaseRenewed(took time.Duration) {
	s.mu.Lock()
	if !s.fresh || took > s.renewal {
		s.renewal = took
	}
	s.fresh, s.renewed = true, true
	s.mu.Unlock()
}

// Read returns the QEMU error counter and, once a renewal happened, the
// slowest renewal since the last read in seconds (the last one's when none
// happened since).
func (s *Self) Read(context.Context) ([]Reading, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Reading{{Signal: "agent/qemu_errors", Kind: Counter, Value: s.qemuErrors, Unit: "errors"}}
	if s.renewed {
		out = append(out, Reading{Signal: "agent/lease_renewal", Kind: Gauge, Value: s.renewal.Seconds(), Unit: "s"})
	}
	s.fresh = false
	return out, nil
}
