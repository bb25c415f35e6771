package linkemu

import (
	"math"
	"testing"
	"time"
)

// The queue's arithmetic on a clock that stands still: each frame leaves
// after its turn at the rate and the delay, in order, and a full queue or
// the loss drop frames.
func TestLinkAdmit(t *testing.T) {
	t0 := time.Unix(1000, 0)
	frame := make([]byte, 1250) // 10,000 bits

	// 10 Mbit/s: 1 ms per frame; 20 ms delay.
	l := newLink(Profile{RateBits: 10e6, Delay: 20 * time.Millisecond}, nil, 1)
	for i := 0; i < 5; i++ {
		if !l.admit(frame, t0) {
			t.Fatalf("frame %d dropped", i)
		}
	}
	for i, p := range l.queue {
		want := t0.Add(time.Duration(i+1)*time.Millisecond + 20*time.Millisecond)
		if !p.depart.Equal(want) {
			t.Errorf("frame %d leaves at +%s, want +%s", i, p.depart.Sub(t0), want.Sub(t0))
		}
	}

	// The queue holds 100 ms at the rate: the 101st frame sent at once
	// still fits, the 102nd waits 101 ms and is dropped.
	l = newLink(Profile{RateBits: 10e6}, nil, 1)
	for i := 0; i < 101; i++ {
		if !l.admit(frame, t0) {
			t.Fatalf("frame %d dropped with %s queued", i, time.Duration(i)*time.Millisecond)
		}
	}
	if l.admit(frame, t0) || l.overflown.Load() != 1 {
		t.Fatalf("a frame beyond the queue was kept (overflown %d)", l.overflown.Load())
	}
	// Later, the queue has room again.
	if !l.admit(frame, t0.Add(50*time.Millisecond)) {
		t.Fatal("the queue never drains")
	}

	// Jitter never reorders, and stays within ±jitter of the delay.
	l = newLink(Profile{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond}, nil, 7)
	var last time.Time
	for i := 0; i < 1000; i++ {
		at := t0.Add(time.Duration(i) * 100 * time.Microsecond)
		l.admit(frame, at)
		d := l.queue[len(l.queue)-1].depart
		if d.Before(last) {
			t.Fatalf("frame %d overtakes the one before", i)
		}
		if lag := d.Sub(at); lag < 5*time.Millisecond || lag > 15*time.Millisecond+time.Duration(i)*100*time.Microsecond {
			t.Fatalf("frame %d delayed %s, outside 10 ms ± 5 ms", i, lag)
		}
		last = d
	}

	// Loss: 1% of 100,000 frames, within four standard deviations.
	l = newLink(Profile{Loss: 0.01}, nil, 3)
	const n = 100000
	for i := 0; i < n; i++ {
		l.admit(frame, t0)
	}
	lost := float64(l.lost.Load())
	if sd := math.Sqrt(n * 0.01 * 0.99); math.Abs(lost-n*0.01) > 4*sd {
		t.Fatalf("%v of %d frames lost, want %v ± %.0f", lost, n, n*0.01, 4*sd)
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{"200M": 200e6, "1.5G": 1.5e9, "800k": 800e3, "200Mbit": 200e6, "1000": 1000} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "fast", "-1M", "M"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) accepted", bad)
		}
	}
	for in, want := range map[string]float64{"1%": 0.01, "0.5": 0.5, "0%": 0} {
		if got, err := ParseLoss(in); err != nil || got != want {
			t.Errorf("ParseLoss(%q) = %g, %v; want %g", in, got, err, want)
		}
	}
	for _, bad := range []string{"101%", "-1%", "x"} {
		if _, err := ParseLoss(bad); err == nil {
			t.Errorf("ParseLoss(%q) accepted", bad)
		}
	}
	for _, p := range []Profile{{Jitter: time.Millisecond}, {Loss: 2}, {RateBits: 10}, {Delay: -1}} {
		if p.Check() == nil {
			t.Errorf("profile %+v passed the check", p)
		}
	}
}
