package main

import (
	"fmt"
	"sync"
	"time"
)

// dirtier writes one byte into successive pages of a buffer so that the given
// number of MiB per second become dirty, which is what makes live migration hard.
type dirtier struct {
	mu    sync.Mutex
	rate  float64
	buf   []byte
	stop  chan struct{}
	pages uint64
}

type dirtyInfo struct {
	RateMiBs   float64 `json:"rate_mib_s"`
	BufferMiB  int     `json:"buffer_mib"`
	PagesDirty uint64  `json:"pages_dirtied"`
}

func newDirtier() *dirtier { return &dirtier{} }

func (d *dirtier) set(rate float64, sizeMiB int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop != nil {
		close(d.stop)
		d.stop = nil
	}
	d.rate = rate
	if rate == 0 {
		d.buf = nil
		return nil
	}
	if sizeMiB > 4096 {
		return fmt.Errorf("size must be at most 4096 MiB")
	}
	if len(d.buf) != sizeMiB<<20 {
		d.buf = make([]byte, sizeMiB<<20)
	}
	stop := make(chan struct{})
	d.stop = stop
	go d.run(rate, d.buf, stop)
	return nil
}

func (d *dirtier) run(rate float64, buf []byte, stop chan struct{}) {
	const page = 4096
	const tick = 10 * time.Millisecond
	npages := len(buf) / page
	perTick := rate * (1 << 20) / page * tick.Seconds()
	t := time.NewTicker(tick)
	defer t.Stop()
	var carry float64
	pos := 0
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			// Catch up on missed ticks so the rate holds on a slow guest.
			carry += perTick * float64(now.Sub(last)) / float64(tick)
			last = now
			n := int(carry)
			carry -= float64(n)
			for i := 0; i < n; i++ {
				buf[pos*page]++
				pos++
				if pos == npages {
					pos = 0
				}
			}
			d.mu.Lock()
			d.pages += uint64(n)
			d.mu.Unlock()
		}
	}
}

func (d *dirtier) info() dirtyInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	return dirtyInfo{RateMiBs: d.rate, BufferMiB: len(d.buf) >> 20, PagesDirty: d.pages}
}
