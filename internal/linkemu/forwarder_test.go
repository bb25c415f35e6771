package linkemu

import (
	"context"
	"fmt"
	"math"
	"os"
	"testing"
	"time"
)

// newPair is a Pair for one test, removed after it.
func newPair(t *testing.T) *Pair {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("FERRY_BIN") != "" {
			t.Fatal("the link emulator test needs root (it makes network namespaces)")
		}
		t.Skip("needs root (network namespaces)")
	}
	p, err := NewPair(fmt.Sprintf("le%d", os.Getpid()%100000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// The forwarder delivers what its links are set to, measured through the
// kernel's own sockets in real namespaces: never faster than the rate,
// never sooner than the delay, and the loss it was told.
func TestForwarderDelivers(t *testing.T) {
	p := newPair(t)
	f := p.F
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	base, err := Probe(ctx, p.A, p.B, p.AddrB, 200, 2*time.Millisecond)
	if err != nil || base.Loss > 0.05 {
		t.Fatalf("unshaped: %+v %v", base, err)
	}
	t.Logf("unshaped: rtt min %s median %s", base.RTTMin, base.RTTMedian)

	// Delay both ways: the round trip takes at least twice the delay.
	both := func(pr Profile) {
		t.Helper()
		if err := f.Apply(Links{Links: []Link{{From: "a", To: "b", Profile: pr}, {From: "b", To: "a", Profile: pr}}}); err != nil {
			t.Fatal(err)
		}
	}
	both(Profile{Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond})
	m, err := Probe(ctx, p.A, p.B, p.AddrB, 200, 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("delay 20 ms ± 2 ms each way: rtt min %s median %s p99 %s loss %.3f", m.RTTMin, m.RTTMedian, m.RTTP99, m.Loss)
	if m.RTTMin < 36*time.Millisecond || m.Loss > 0.05 {
		t.Fatalf("a 20 ms ± 2 ms delay each way gave a round trip of %s at the least (loss %.3f)", m.RTTMin, m.Loss)
	}

	// Rate: one TCP stream gets no more than the cap.
	both(Profile{RateBits: 100e6})
	bits, err := Throughput(ctx, p.A, p.B, p.AddrB, 4*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rate 100 Mbit/s: one TCP stream carried %.1f Mbit/s", bits/1e6)
	if bits > 100e6*1.03 || bits < 50e6 {
		t.Fatalf("a 100 Mbit/s link carried %.1f Mbit/s", bits/1e6)
	}

	// Loss one way: 5% of probes vanish, within four standard deviations.
	if err := f.Apply(Links{Links: []Link{{From: "a", To: "b", Profile: Profile{Loss: 0.05}}}}); err != nil {
		t.Fatal(err)
	}
	const n = 3000
	m, err = Probe(ctx, p.A, p.B, p.AddrB, n, 500*time.Microsecond)
	if err != nil {
		t.Fatal(err)
	}
	sd := math.Sqrt(0.05 * 0.95 / n)
	t.Logf("loss 5%% one way: %.2f%% of %d probes lost", m.Loss*100, n)
	if math.Abs(m.Loss-0.05) > 4*sd {
		t.Fatalf("loss %.4f, want 0.05 ± %.4f", m.Loss, 4*sd)
	}
	if st := f.State(); len(st) != 1 || st[0].Counters.Lost == 0 {
		t.Fatalf("state after a lossy link: %+v", st)
	}
}
