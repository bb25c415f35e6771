package telemetry

import (
	"sync"
	"time"
)

// Buckets is a regularly spaced history: the mean of the samples in each
// Step-long bucket, the newest Cap buckets. Forecasting methods with a
// season (a day of so many steps) need such a grid; the geometric Series
// does not keep one.
type Buckets struct {
	mu    sync.Mutex
	step  time.Duration
	cap   int
	start time.Time // the current bucket's start
	sum   float64
	n     int
	done  []float64 // closed buckets, oldest first
}

// NewBuckets returns an empty history of capacity buckets of step each.
func NewBuckets(step time.Duration, capacity int) *Buckets {
	return &Buckets{step: step, cap: max(capacity, 2)}
}

// Add counts a sample. A sample past the current bucket closes it (and
// repeats its mean over any buckets skipped without samples, a gap being
// more like its neighbours than like zero).
func (b *Buckets) Add(t time.Time, v float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.start.IsZero() {
		b.start = t.Truncate(b.step)
	}
	if t.Before(b.start) {
		return
	}
	for !t.Before(b.start.Add(b.step)) {
		if b.n > 0 {
			b.push(b.sum / float64(b.n))
		} else if len(b.done) > 0 {
			b.push(b.done[len(b.done)-1])
		}
		b.sum, b.n = 0, 0
		b.start = b.start.Add(b.step)
		if t.Sub(b.start) > time.Duration(b.cap)*b.step {
			b.start = t.Truncate(b.step) // a long gap: start afresh there
			b.done = b.done[:0]
		}
	}
	b.sum += v
	b.n++
}

func (b *Buckets) push(v float64) {
	if len(b.done) == b.cap {
		copy(b.done, b.done[1:])
		b.done = b.done[:b.cap-1]
	}
	b.done = append(b.done, v)
}

// Values returns the closed buckets' means, oldest first.
func (b *Buckets) Values() []float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]float64(nil), b.done...)
}

// Step is the buckets' width.
func (b *Buckets) Step() time.Duration { return b.step }
