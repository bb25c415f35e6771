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

// BucketsState is a Buckets' closed buckets, to be carried elsewhere (a
// guest's history follows it to the host it moves to).
type BucketsState struct {
	Step time.Duration `json:"step"`
	// End is when the newest closed bucket ended: the open one's start.
	End    time.Time `json:"end"`
	Values []float64 `json:"values"`
}

// State returns the closed buckets and where they end; the open bucket's
// samples are left out.
func (b *Buckets) State() BucketsState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BucketsState{Step: b.step, End: b.start, Values: append([]float64(nil), b.done...)}
}

// RestoreBuckets returns a history of capacity buckets that continues
// st: its next sample lands in the bucket starting at st.End (a gap since
// is filled as Add fills one). A state of another step, or none, gives an
// empty history.
func RestoreBuckets(st BucketsState, step time.Duration, capacity int) *Buckets {
	b := NewBuckets(step, capacity)
	if st.Step != step || st.End.IsZero() || len(st.Values) == 0 {
		return b
	}
	vals := st.Values
	if len(vals) > b.cap {
		vals = vals[len(vals)-b.cap:]
	}
	b.done = append(b.done, vals...)
	b.start = st.End
	return b
}
