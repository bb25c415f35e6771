package main

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// hotPages are a few pages rewritten together, every ~200 µs, with one
// counter. They stay in the emulator's TLB, which is where QEMU 7.2's TCG
// lost writes during a live migration (its dirty tracking skipped pages
// whose TLB entries were already writable; fixed in 9.0, commit
// 03bfc2188f): a page the target got stale holds an older counter than its
// neighbours. A sweep over a large buffer (the dirtier) cannot see that
// bug: its pages are long out of the TLB when they are written again.
type hotPages struct {
	mu      sync.Mutex
	buf     []byte
	n       uint64
	running bool
}

const hotCount = 16

func newHotPages() *hotPages {
	h := &hotPages{buf: make([]byte, hotCount*pageSize)}
	return h
}

// start begins rewriting the pages until the guest stops.
func (h *hotPages) start() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running {
		return
	}
	h.running = true
	go func() {
		for {
			h.mu.Lock()
			h.n++
			for p := 0; p < hotCount; p++ {
				for _, off := range wordOffsets {
					binary.LittleEndian.PutUint64(h.buf[p*pageSize+off:], h.n)
				}
			}
			h.mu.Unlock()
			time.Sleep(200 * time.Microsecond)
		}
	}()
}

// check verifies the pages: the writer goes from the first page to the
// last, so a copy taken when the guest stopped holds n in a prefix and n-1
// in the rest (at most); any other pattern, or a page whose three words
// differ, is a write lost in a migration. It returns the counter and what
// was wrong ("" if nothing).
func (h *hotPages) check() (uint64, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running {
		return 0, ""
	}
	var vals [hotCount]uint64
	for p := 0; p < hotCount; p++ {
		v := binary.LittleEndian.Uint64(h.buf[p*pageSize:])
		for _, off := range wordOffsets[1:] {
			if w := binary.LittleEndian.Uint64(h.buf[p*pageSize+off:]); w != v {
				return h.n, fmt.Sprintf("hot page %d is torn: %d at its start, %d at offset %d", p, v, w, off)
			}
		}
		vals[p] = v
	}
	// All pages were written under the lock and the lock is held: each
	// must hold the writer's last counter.
	for p, v := range vals {
		if v != h.n {
			return h.n, fmt.Sprintf("hot page %d holds write %d, its neighbours and the writer are at %d (pages %v)", p, v, h.n, vals)
		}
	}
	return h.n, ""
}
