package qemu

import (
	"bufio"
	"bytes"
	"compress/flate"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"
)

// MemorySample is what a sample of a guest's pages shows.
type MemorySample struct {
	// ZeroShare is the share of pages that hold only zeros (a migration
	// sends each as a few bytes).
	ZeroShare float64
	// CompressRatio is what the other pages shrink to, compressed one by
	// one at the fastest level (DEFLATE, standing in for multifd's zstd,
	// which does about as well or better): compressed bytes per byte.
	CompressRatio float64
	// DirtyCompressRatio is the same of the sampled pages the guest wrote
	// between two looks: what a migration's later rounds send (1 when
	// none changed).
	DirtyCompressRatio float64
}

// SampleMemory reads samples random pages of the guest's RAM from QEMU's
// address space (the anonymous mapping of exactly memoryMiB; /proc/PID/mem,
// which needs root), and again after again to see which changed. Pages
// the guest never touched read as zeros without being allocated.
func SampleMemory(pid, memoryMiB, samples int, again time.Duration) (MemorySample, error) {
	start, err := ramMapping(pid, int64(memoryMiB)<<20)
	if err != nil {
		return MemorySample{}, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return MemorySample{}, err
	}
	defer f.Close()
	const page = 4096
	pages := int64(memoryMiB) << 20 / page
	buf := make([]byte, page)
	offs := make([]int64, 0, samples)
	sums := make([]uint64, 0, samples)
	zero := 0
	var all packer
	for i := 0; i < samples; i++ {
		off := start + rand.Int64N(pages)*page
		if _, err := f.ReadAt(buf, off); err != nil {
			continue
		}
		offs, sums = append(offs, off), append(sums, checksum(buf))
		if allZero(buf) {
			zero++
			continue
		}
		all.add(buf)
	}
	if len(offs) == 0 {
		return MemorySample{}, fmt.Errorf("could not read the guest's memory from QEMU %d", pid)
	}
	m := MemorySample{ZeroShare: float64(zero) / float64(len(offs)), CompressRatio: all.ratio()}
	time.Sleep(again)
	var dirty packer
	for i, off := range offs {
		if _, err := f.ReadAt(buf, off); err == nil && checksum(buf) != sums[i] {
			dirty.add(buf)
		}
	}
	m.DirtyCompressRatio = dirty.ratio()
	return m, nil
}

// packer compresses pages one by one and counts the bytes.
type packer struct {
	raw, packed int64
	out         bytes.Buffer
	zw          *flate.Writer
}

func (p *packer) add(pg []byte) {
	if p.zw == nil {
		p.zw, _ = flate.NewWriter(&p.out, flate.BestSpeed)
	}
	p.out.Reset()
	p.zw.Reset(&p.out)
	p.zw.Write(pg)
	p.zw.Close()
	p.raw += int64(len(pg))
	p.packed += int64(min(p.out.Len(), len(pg)))
}

// ratio is compressed bytes per byte (1 when nothing was added).
func (p *packer) ratio() float64 {
	if p.raw == 0 {
		return 1
	}
	return float64(p.packed) / float64(p.raw)
}

func checksum(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// ramMapping finds the start of the anonymous read-write mapping of size
// bytes in the process: the guest's RAM.
func ramMapping(pid int, size int64) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 5 || !strings.HasPrefix(fields[1], "rw") || fields[4] != "0" {
			continue // not anonymous (a file, the heap, the stack)
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseInt(lo, 16, 64)
		b, err2 := strconv.ParseInt(hi, 16, 64)
		if err1 == nil && err2 == nil && b-a == size {
			return a, nil
		}
	}
	return 0, fmt.Errorf("no %d MiB anonymous mapping in QEMU %d (the guest's RAM)", size>>20, pid)
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
