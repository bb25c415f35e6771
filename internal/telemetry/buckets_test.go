package telemetry

import (
	"slices"
	"testing"
	"time"
)

// TestBucketsCarriedOnContinue: a history restored from its state on
// another host continues as if it had never moved: the same buckets, a
// gap filled with the last mean, and a state of another step refused.
func TestBucketsCarriedOnContinue(t *testing.T) {
	step := 5 * time.Second
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	a := NewBuckets(step, 10)
	for i := 0; i < 40; i++ { // two samples a bucket, bucket k's mean k
		a.Add(t0.Add(time.Duration(i)*2500*time.Millisecond), float64(i/2))
	}
	st := a.State() // buckets 9-18 closed, 19 open (left out)
	if len(st.Values) != 10 || st.Values[9] != 18 || st.End.Sub(t0) != 95*time.Second {
		t.Fatalf("state: %d values ending %s after the start", len(st.Values), st.End.Sub(t0))
	}
	b := RestoreBuckets(st, step, 10)
	if !slices.Equal(b.Values(), a.Values()) {
		t.Fatalf("restored %v, was %v", b.Values(), a.Values())
	}
	// Sampled again 12 s later: the bucket at End and the next are
	// filled with the last mean, the new sample opens the one after.
	b.Add(st.End.Add(12*time.Second), 100)
	b.Add(st.End.Add(15*time.Second), 100)
	got := b.Values()
	want := append(slices.Clone(st.Values[3:]), 18, 18, 100)
	if !slices.Equal(got, want) {
		t.Fatalf("after a gap: %v, want %v", got, want)
	}
	if c := RestoreBuckets(st, time.Second, 10); len(c.Values()) != 0 {
		t.Fatalf("a state of 5 s buckets restored into 1 s ones: %v", c.Values())
	}
}
