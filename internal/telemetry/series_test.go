package telemetry

import (
	"testing"
	"time"
)

// TestSeriesStaysBoundedAndKeepsTheRecentPastSharp: a series never holds
// more than its capacity, keeps time order, keeps the newest points as
// they were, and its merged past keeps the mean.
func TestSeriesStaysBoundedAndKeepsTheRecentPastSharp(t *testing.T) {
	s := NewSeries(16)
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	var sum float64
	for i := 0; i < 1000; i++ {
		s.Add(Point{T: t0.Add(time.Duration(i) * time.Second), V: float64(i % 10)})
		sum += float64(i % 10)
		if s.Len() > 16 {
			t.Fatalf("after %d points the series holds %d", i+1, s.Len())
		}
	}
	all := s.Since(time.Time{})
	for i := 1; i < len(all); i++ {
		if !all[i].T.After(all[i-1].T) {
			t.Fatalf("out of order at %d: %v", i, all)
		}
	}
	last := all[len(all)-1]
	if last.T != t0.Add(999*time.Second) || last.V != 9 {
		t.Fatalf("the newest point changed: %+v", last)
	}
	// The first point stands for the oldest samples: it sits early, and
	// the weighted mean of all points is the mean of all samples.
	if all[0].T.After(t0.Add(300 * time.Second)) {
		t.Fatalf("the oldest point kept is from %v: the distant past was dropped, not merged", all[0].T.Sub(t0))
	}
	var wsum, n float64
	for i, p := range s.points {
		wsum += p.V * float64(s.weight[i])
		n += float64(s.weight[i])
	}
	if n != 1000 || wsum/n < sum/1000-0.01 || wsum/n > sum/1000+0.01 {
		t.Fatalf("the series stands for %v samples of mean %.3f, want 1000 of mean %.3f", n, wsum/n, sum/1000)
	}
	// Stale and out-of-order samples are dropped.
	s.Add(Point{T: t0, V: 100})
	if got := s.Since(time.Time{}); got[len(got)-1] != last {
		t.Fatalf("an older sample was appended: %+v", got[len(got)-1])
	}
	// The recent past is as it was sampled; each older point stands for
	// at least as many samples as any newer one.
	for i, w := range s.weight {
		if i >= len(s.weight)-4 && w != 1 {
			t.Fatalf("one of the four newest points stands for %d samples: %v", w, s.weight)
		}
		if i > 0 && w > s.weight[i-1] {
			t.Fatalf("a newer point stands for more samples than an older: %v", s.weight)
		}
	}
	if n := len(s.Since(t0.Add(990 * time.Second))); n < 4 {
		t.Fatalf("Since the last 10 s: %d points", n)
	}
}

// TestHistoryForgetsWhatWentAway: a series not fed since a time is dropped.
func TestHistoryForgetsWhatWentAway(t *testing.T) {
	h := NewHistory(0)
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	h.Add("nic/eth0/rx_errors", Point{T: t0, V: 1})
	h.Add("nic/eth1/rx_errors", Point{T: t0.Add(time.Minute), V: 1})
	h.Forget(t0.Add(30 * time.Second))
	if got := h.Names(); len(got) != 1 || got[0] != "nic/eth1/rx_errors" {
		t.Fatalf("after forgetting: %v", got)
	}
}

// TestBucketsKeepARegularGrid: samples are averaged per step, a step
// without samples repeats its neighbour, and only the newest buckets stay.
func TestBucketsKeepARegularGrid(t *testing.T) {
	b := NewBuckets(10*time.Second, 4)
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	for _, s := range []struct {
		at time.Duration
		v  float64
	}{{0, 1}, {5 * time.Second, 3}, {12 * time.Second, 10}, {35 * time.Second, 7}, {41 * time.Second, 0}, {52 * time.Second, 0}} {
		b.Add(t0.Add(s.at), s.v)
	}
	// Buckets: [0,10) mean 2; [10,20) 10; [20,30) none: 10; [30,40) 7;
	// [40,50) 0 — five closed, four kept.
	got := b.Values()
	want := []float64{10, 10, 7, 0}
	if len(got) != len(want) {
		t.Fatalf("buckets %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("buckets %v, want %v", got, want)
		}
	}
}
