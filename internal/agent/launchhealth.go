package agent

import (
	"fmt"
	"sync"
	"time"
)

// launchHealth tells QEMU failing on this host from a guest that cannot
// start: the host counts as degraded when QEMU failed to start for at least
// two different guests (three times in all) within the window, with no
// successful start since. One guest with a broken disk fails alone and
// must not get every other guest drained off a good host.
type launchHealth struct {
	mu      sync.Mutex
	window  time.Duration
	fails   []launchFail
	lastErr string
}

type launchFail struct {
	vm string
	at time.Time
}

func newLaunchHealth() *launchHealth { return &launchHealth{window: 10 * time.Minute} }

// failed records that QEMU could not start vm.
func (h *launchHealth) failed(vm string, err error, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fails = append(h.fails, launchFail{vm, now})
	h.lastErr = firstLine(err.Error())
}

// started records a guest that started: QEMU works here.
func (h *launchHealth) started() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fails, h.lastErr = nil, ""
}

// problem describes the failures that make the host degraded, or "".
func (h *launchHealth) problem(now time.Time) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	keep := h.fails[:0]
	guests := map[string]bool{}
	for _, f := range h.fails {
		if now.Sub(f.at) <= h.window {
			keep = append(keep, f)
			guests[f.vm] = true
		}
	}
	h.fails = keep
	if len(keep) < 3 || len(guests) < 2 {
		return ""
	}
	return fmt.Sprintf("QEMU failed to start %d times for %d guests in the last %s (last: %s)",
		len(keep), len(guests), h.window, h.lastErr)
}
