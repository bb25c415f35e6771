package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log"
	"os"
	"sync"
	"syscall"
	"time"
)

// seqDisk writes sequence-numbered records to the guest's disk, each made
// durable with fdatasync before it is reported, so that after a failover the
// restarted guest can prove it still holds every acknowledged record.
// Records live in 4 KiB slots of a ring over the first 16 MiB of the disk.
type seqDisk struct {
	mu        sync.Mutex
	dev       string
	f         *os.File
	slots     int64
	recovered uint64 // highest sequence found on disk at boot
	durable   uint64 // highest sequence written and synced
	writes    uint64
	lastErr   string
	stopc     chan struct{}
	interval  time.Duration
}

type diskInfo struct {
	Device         string `json:"device"`
	Present        bool   `json:"present"`
	RecoveredSeq   uint64 `json:"recovered_seq"`
	LastDurableSeq uint64 `json:"last_durable_seq"`
	Writes         uint64 `json:"writes"`
	StreamInterval string `json:"stream_interval,omitempty"`
	Error          string `json:"error,omitempty"`
}

const (
	slotSize = 4096
	ringSize = 16 << 20
	magic    = "FERRYSEQ"
)

func openSeqDisk(dev string) *seqDisk {
	if dev == "" {
		dev = "/dev/vda"
	}
	d := &seqDisk{dev: dev}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		d.lastErr = err.Error()
		return d
	}
	size, err := f.Seek(0, 2)
	if err != nil || size < slotSize {
		d.lastErr = fmt.Sprintf("disk too small or unreadable: %v", err)
		f.Close()
		return d
	}
	d.f = f
	d.slots = min(size, ringSize) / slotSize
	d.recovered = d.scan()
	d.durable = d.recovered
	log.Printf("disk %s: %d slots, recovered sequence %d", dev, d.slots, d.recovered)
	return d
}

func (d *seqDisk) scan() uint64 {
	buf := make([]byte, d.slots*slotSize)
	n, _ := d.f.ReadAt(buf, 0)
	var best uint64
	for off := 0; off+slotSize <= n; off += slotSize {
		if seq, ok := decodeRecord(buf[off : off+slotSize]); ok && seq > best {
			best = seq
		}
	}
	return best
}

func encodeRecord(seq uint64) []byte {
	b := make([]byte, slotSize)
	copy(b, magic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint32(b[16:], crc32.ChecksumIEEE(b[:16]))
	return b
}

func decodeRecord(b []byte) (uint64, bool) {
	if string(b[:8]) != magic {
		return 0, false
	}
	if crc32.ChecksumIEEE(b[:16]) != binary.LittleEndian.Uint32(b[16:]) {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[8:]), true
}

// writeN writes n records one after another, each synced before the next.
func (d *seqDisk) writeN(n int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := 0; i < n; i++ {
		if err := d.writeOne(); err != nil {
			return err
		}
	}
	return nil
}

func (d *seqDisk) writeOne() error {
	if d.f == nil {
		return errors.New("no disk: " + d.lastErr)
	}
	seq := d.durable + 1
	off := int64(seq%uint64(d.slots)) * slotSize
	if _, err := d.f.WriteAt(encodeRecord(seq), off); err != nil {
		d.lastErr = err.Error()
		return err
	}
	if err := syscall.Fdatasync(int(d.f.Fd())); err != nil {
		d.lastErr = err.Error()
		return err
	}
	d.durable = seq
	d.writes++
	return nil
}

// stream writes one record every interval in the background; 0 stops it.
func (d *seqDisk) stream(iv time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return errors.New("no disk: " + d.lastErr)
	}
	if d.stopc != nil {
		close(d.stopc)
		d.stopc = nil
	}
	d.interval = iv
	if iv == 0 {
		return nil
	}
	stop := make(chan struct{})
	d.stopc = stop
	go func() {
		t := time.NewTicker(iv)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				d.mu.Lock()
				d.writeOne()
				d.mu.Unlock()
			}
		}
	}()
	return nil
}

func (d *seqDisk) info() diskInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := diskInfo{Device: d.dev, Present: d.f != nil, RecoveredSeq: d.recovered,
		LastDurableSeq: d.durable, Writes: d.writes, Error: d.lastErr}
	if d.interval > 0 {
		i.StreamInterval = d.interval.String()
	}
	return i
}
