package main

import (
	"encoding/binary"
	"testing"
	"time"
)

// A page that holds an older write than its count says (what a page sent
// stale in a migration looks like) is found; an intact buffer passes.
func TestDirtierCheckFindsStalePages(t *testing.T) {
	for _, random := range []bool{false, true} {
		dirtierFindsStale(t, random)
	}
}

func dirtierFindsStale(t *testing.T, random bool) {
	d := newDirtier()
	if err := d.set(64, 4, random); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for d.info().PagesDirty < 2048 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	d.set(0, 4, random)
	checked, bad, first := d.check()
	if random {
		// Whole pages written: a dirtied page holds more than its words.
		d.mu.Lock()
		nonzero := 0
		for _, b := range d.buf[8 : pageSize/2-8] {
			if b != 0 {
				nonzero++
			}
		}
		d.mu.Unlock()
		if nonzero < 1000 {
			t.Fatalf("random fill left page 0 mostly zero (%d non-zero bytes)", nonzero)
		}
	}
	if checked != 1024 || bad != 0 {
		t.Fatalf("intact buffer: %d checked, %d bad (%s)", checked, bad, first)
	}
	// Page 7 reverts to its previous write.
	d.mu.Lock()
	old := pageWord(7, d.gen[7]-1)
	binary.LittleEndian.PutUint64(d.buf[7*pageSize+wordOffsets[1]:], old)
	d.mu.Unlock()
	if _, bad, first = d.check(); bad != 1 {
		t.Fatalf("stale page: %d bad, want 1", bad)
	}
	t.Log(first)
}

func TestFilledChecksum(t *testing.T) {
	var f filled
	if _, ok, _ := f.check(); !ok {
		t.Fatal("nothing filled must check ok")
	}
	sum := f.fill(2, 42)
	if size, ok, got := f.check(); !ok || size != 2 || got != sum {
		t.Fatalf("fresh fill: size %d ok %v", size, ok)
	}
	f.buf[12345] ^= 1
	if _, ok, _ := f.check(); ok {
		t.Fatal("a flipped bit went unnoticed")
	}
}

// A hot page that lost a write (it holds an older counter than the others
// and the writer) is found.
func TestHotPagesFindALostWrite(t *testing.T) {
	h := newHotPages()
	h.start()
	time.Sleep(50 * time.Millisecond)
	if n, bad := h.check(); n == 0 || bad != "" {
		t.Fatalf("intact hot pages: %d writes, %q", n, bad)
	}
	h.mu.Lock()
	for _, off := range wordOffsets {
		binary.LittleEndian.PutUint64(h.buf[5*pageSize+off:], h.n-1)
	}
	h.mu.Unlock()
	_, bad := h.check()
	if bad == "" {
		t.Fatal("a stale hot page went unnoticed")
	}
	t.Log(bad)
}
