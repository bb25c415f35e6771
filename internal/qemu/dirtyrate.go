package qemu

import (
	"context"
	"fmt"
	"time"
)

// DirtyRate is QEMU's measurement of how fast the guest writes memory.
type DirtyRate struct {
	Status string `json:"status"` // unstarted, measuring, measured
	// MBps is the rate in MB per second (QEMU's unit: 2^20 bytes).
	MBps     int64  `json:"dirty-rate"`
	Mode     string `json:"mode"`
	CalcTime int64  `json:"calc-time"`
}

// BytesPerSecond is the measured rate in bytes per second.
func (d DirtyRate) BytesPerSecond() float64 { return float64(d.MBps) * (1 << 20) }

// SamplePages is how many pages per GiB of guest memory the page-sampling
// measurement hashes: QEMU's most (its default, 512, leaves a 256 MiB
// guest's rate to 128 pages).
const SamplePages = 4096

// MeasureDirtyRate has QEMU count the pages the guest writes over d (whole
// seconds, at least one) and returns the rate. Mode page-sampling, the one
// that works under every accelerator: it hashes sampled pages before and
// after (dirty-ring needs KVM's dirty ring; dirty-bitmap works under TCG
// too but turns on the dirty log for all of memory, which slows a TCG
// guest). The rate counts each page once however often it was written.
func (c QMP) MeasureDirtyRate(ctx context.Context, d time.Duration) (DirtyRate, error) {
	secs := max(1, int64(d.Round(time.Second)/time.Second))
	if err := c.Execute(ctx, "calc-dirty-rate", map[string]any{"calc-time": secs, "mode": "page-sampling", "sample-pages": SamplePages}, nil); err != nil {
		return DirtyRate{}, err
	}
	t := time.NewTimer(time.Duration(secs) * time.Second)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return DirtyRate{}, ctx.Err()
	case <-t.C:
	}
	for i := 0; ; i++ {
		var r DirtyRate
		if err := c.Execute(ctx, "query-dirty-rate", nil, &r); err != nil {
			return r, err
		}
		if r.Status == "measured" {
			return r, nil
		}
		if i == 50 {
			return r, fmt.Errorf("dirty rate still %q %d s after the measurement began", r.Status, secs+1)
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
