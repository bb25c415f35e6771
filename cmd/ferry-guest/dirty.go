package main

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// dirtier dirties the given number of MiB per second in a buffer, which is
// what makes live migration hard. Every write is verifiable: a dirtied page
// gets three words (at its start, middle and end) derived from its index and
// how often it was written, and check finds any page whose words do not
// match — a write lost in a migration (a page sent stale) shows up there.
type dirtier struct {
	hot  *hotPages // rewritten while the dirtier runs
	mu   sync.Mutex
	rate float64
	// random fills each dirtied page with pseudo-random bytes (around its
	// check words), so that it does not compress: a guest whose memory a
	// compressing migration cannot shrink.
	random bool
	buf    []byte
	gen    []uint32 // per page: how often it was written
	stop   chan struct{}
	pages  uint64
}

type dirtyInfo struct {
	RateMiBs   float64 `json:"rate_mib_s"`
	BufferMiB  int     `json:"buffer_mib"`
	PagesDirty uint64  `json:"pages_dirtied"`
	Random     bool    `json:"random,omitempty"`
}

const pageSize = 4096

// wordOffsets are where a dirtied page carries its check words.
var wordOffsets = [...]int{0, pageSize/2 - 8, pageSize - 8}

func newDirtier() *dirtier { return &dirtier{hot: newHotPages()} }

func (d *dirtier) set(rate float64, sizeMiB int, random bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.random = random
	if d.stop != nil {
		close(d.stop)
		d.stop = nil
	}
	d.rate = rate
	if rate == 0 {
		// The buffer stays, so that what was written can still be checked.
		return nil
	}
	if sizeMiB > 4096 {
		return fmt.Errorf("size must be at most 4096 MiB")
	}
	if len(d.buf) != sizeMiB<<20 {
		d.buf = make([]byte, sizeMiB<<20)
		d.gen = make([]uint32, len(d.buf)/pageSize)
	}
	stop := make(chan struct{})
	d.stop = stop
	go d.run(rate, stop)
	d.hot.start()
	return nil
}

// pageWord is what page p holds in its check words after write number g.
func pageWord(p int, g uint32) uint64 {
	if g == 0 {
		return 0
	}
	x := uint64(p)<<32 | uint64(g)
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x | 1 // never 0, which a page never written holds
}

func (d *dirtier) run(rate float64, stop chan struct{}) {
	const tick = 10 * time.Millisecond
	perTick := rate * (1 << 20) / pageSize * tick.Seconds()
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
			// Catch up on a missed tick or two, so that the rate holds on a
			// guest whose ticks jitter; no further: a guest whose CPUs are
			// throttled (auto-converge) writes less, as a real workload
			// would, instead of making up for it after each sleep.
			carry += perTick * min(float64(now.Sub(last))/float64(tick), 3)
			last = now
			n := int(carry)
			carry -= float64(n)
			d.mu.Lock()
			npages := len(d.gen)
			for i := 0; i < n && npages > 0; i++ {
				d.gen[pos]++
				w := pageWord(pos, d.gen[pos])
				if d.random {
					fillRandom(d.buf[pos*pageSize:(pos+1)*pageSize], w)
				}
				for _, off := range wordOffsets {
					binary.LittleEndian.PutUint64(d.buf[pos*pageSize+off:], w)
				}
				pos++
				if pos == npages {
					pos = 0
				}
			}
			d.pages += uint64(n)
			d.mu.Unlock()
		}
	}
}

// check verifies every page of the buffer against its write count and
// returns how many pages were checked and how many hold the wrong words.
func (d *dirtier) check() (checked, bad int, first string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for p, g := range d.gen {
		want := pageWord(p, g)
		for _, off := range wordOffsets {
			if got := binary.LittleEndian.Uint64(d.buf[p*pageSize+off:]); got != want {
				if bad == 0 {
					first = fmt.Sprintf("page %d (written %d times) holds %#x at offset %d, want %#x", p, g, got, off, want)
				}
				bad++
				break
			}
		}
	}
	return len(d.gen), bad, first
}

// fillRandom fills a page with a xorshift stream seeded by seed (the check
// words are written over it after).
func fillRandom(page []byte, seed uint64) {
	x := seed | 1
	for i := 0; i+8 <= len(page); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(page[i:], x)
	}
}

func (d *dirtier) info() dirtyInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	return dirtyInfo{RateMiBs: d.rate, BufferMiB: len(d.buf) >> 20, PagesDirty: d.pages, Random: d.random}
}
