package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"sync"
)

// filled is a buffer written once with a pseudo-random pattern and its
// checksum: checked after a live migration, it shows whether the memory
// that was copied in the first pass arrived intact.
type filled struct {
	mu  sync.Mutex
	buf []byte
	sum string
}

// fill writes size MiB of a pattern seeded by seed and remembers its checksum.
func (f *filled) fill(sizeMiB int, seed uint64) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.buf = make([]byte, sizeMiB<<20)
	x := seed | 1
	for i := 0; i+8 <= len(f.buf); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(f.buf[i:], x)
	}
	s := sha256.Sum256(f.buf)
	f.sum = hex.EncodeToString(s[:])
	return f.sum
}

// check recomputes the checksum; ok is true when nothing was filled.
func (f *filled) check() (sizeMiB int, ok bool, sum string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.buf == nil {
		return 0, true, ""
	}
	s := sha256.Sum256(f.buf)
	sum = hex.EncodeToString(s[:])
	return len(f.buf) >> 20, sum == f.sum, sum
}

// MemoryCheck is what GET /memory returns: whether the filled buffer still
// has its checksum and whether every page the dirtier wrote holds its last
// write.
type MemoryCheck struct {
	OK          bool   `json:"ok"`
	FilledMiB   int    `json:"filled_mib"`
	FilledOK    bool   `json:"filled_ok"`
	Checksum    string `json:"checksum,omitempty"`
	DirtyPages  int    `json:"dirty_pages_checked"`
	DirtyBad    int    `json:"dirty_pages_bad"`
	FirstBadWhy string `json:"first_bad,omitempty"`
	// HotWrites is how often the hot pages were rewritten; HotBad says
	// what was wrong with them.
	HotWrites uint64 `json:"hot_writes"`
	HotBad    string `json:"hot_bad,omitempty"`
}

func (g *guest) memoryFill(w http.ResponseWriter, r *http.Request) {
	size, err := strconv.Atoi(r.URL.Query().Get("size"))
	if err != nil || size <= 0 || size > 4096 {
		http.Error(w, "size must be 1..4096 MiB", http.StatusBadRequest)
		return
	}
	var seed uint64
	if b, err := hex.DecodeString(g.bootID[:min(16, len(g.bootID))]); err == nil && len(b) >= 4 {
		seed = uint64(binary.LittleEndian.Uint32(b))
	}
	sum := g.filled.fill(size, seed^uint64(size))
	writeJSON(w, map[string]any{"filled_mib": size, "checksum": sum})
}

func (g *guest) memoryCheck(w http.ResponseWriter, r *http.Request) {
	size, fok, sum := g.filled.check()
	checked, bad, first := g.dirty.check()
	hotN, hotBad := g.dirty.hot.check()
	c := MemoryCheck{FilledMiB: size, FilledOK: fok, Checksum: sum, DirtyPages: checked, DirtyBad: bad, FirstBadWhy: first,
		HotWrites: hotN, HotBad: hotBad}
	c.OK = fok && bad == 0 && hotBad == ""
	if !c.OK {
		fmt.Printf("ferry-guest: memory check FAILED: filled ok %v, %d of %d dirtied pages bad: %s; hot pages: %s\n", fok, bad, checked, first, hotBad)
	}
	writeJSON(w, c)
}
