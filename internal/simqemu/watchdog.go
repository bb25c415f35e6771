package simqemu

import (
	"sync"
	"time"

	"github.com/ferryvm/ferry/internal/ha"
)

// Watchdog is a simulated host's watchdog: it kills the guests it was last
// told about once the last feed's deadline passes. Like the real one (a
// process of its own) it stays armed when the agent lets go of it or dies.
type Watchdog struct {
	w     *World
	mu    sync.Mutex
	feeds int
	feed  ha.Feed
	timer *time.Timer
	fired int
}

// Watchdog returns a watchdog for this host's guests.
func (r *Runtime) Watchdog() *Watchdog { return &Watchdog{w: r.w} }

// Feed moves the deadline (ha.MonoNow's clock) and names the guests.
func (d *Watchdog) Feed(f ha.Feed) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.feeds++
	d.feed = f
	if d.timer != nil {
		d.timer.Stop()
	}
	d.timer = time.AfterFunc(time.Duration(f.Deadline-ha.MonoNow()), d.expire)
	return nil
}

func (d *Watchdog) expire() {
	d.mu.Lock()
	f := d.feed
	late := ha.MonoNow() >= f.Deadline
	if late && len(f.Guests) > 0 {
		d.fired++
	}
	d.mu.Unlock()
	if !late {
		return
	}
	for _, g := range f.Guests {
		if p := d.w.proc(g.PID); p != nil && p.UUID == g.UUID {
			p.Crash()
		}
	}
}

// Connected reports whether the watchdog has been fed.
func (d *Watchdog) Connected() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.feeds > 0
}

// Close lets go of the watchdog; it stays armed.
func (d *Watchdog) Close() {}

// Fired is how many times the watchdog killed guests.
func (d *Watchdog) Fired() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fired
}

// Disarm stops the watchdog (the test's host is torn down).
func (d *Watchdog) Disarm() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
}
