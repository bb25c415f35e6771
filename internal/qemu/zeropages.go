package qemu

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// ZeroShare estimates the share of a guest's memory that holds only zeros
// — pages a migration sends as a few bytes each — by reading samples
// random pages of the guest's RAM from QEMU's address space (the anonymous
// mapping of exactly memoryMiB; /proc/PID/mem, which needs root). Pages
// the guest never touched read as zeros without being allocated.
func ZeroShare(pid, memoryMiB, samples int) (float64, error) {
	start, err := ramMapping(pid, int64(memoryMiB)<<20)
	if err != nil {
		return 0, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	const page = 4096
	pages := int64(memoryMiB) << 20 / page
	buf := make([]byte, page)
	zero, read := 0, 0
	for i := 0; i < samples; i++ {
		off := start + rand.Int64N(pages)*page
		if _, err := f.ReadAt(buf, off); err != nil {
			continue
		}
		read++
		if allZero(buf) {
			zero++
		}
	}
	if read == 0 {
		return 0, fmt.Errorf("could not read the guest's memory from QEMU %d", pid)
	}
	return float64(zero) / float64(read), nil
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
