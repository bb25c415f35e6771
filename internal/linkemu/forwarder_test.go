package linkemu

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// pair is two namespaces on a fabric bridge, each through a TAP port the
// forwarder carries, as the testbed builds them.
type pair struct {
	a, b, fab string
	ports     []Port
}

func newPair(t *testing.T) *pair {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("FERRY_BIN") != "" {
			t.Fatal("the link emulator test needs root (it makes network namespaces)")
		}
		t.Skip("needs root (network namespaces)")
	}
	tag := fmt.Sprintf("le%d", os.Getpid()%100000)
	p := &pair{a: tag + "-a", b: tag + "-b", fab: tag + "-f"}
	t.Cleanup(func() {
		for _, ns := range []string{p.a, p.b, p.fab} {
			exec.Command("ip", "netns", "delete", ns).Run()
		}
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{p.a, p.b, p.fab} {
		run("netns", "add", ns)
		run("-n", ns, "link", "set", "lo", "up")
	}
	run("-n", p.fab, "link", "add", "br0", "type", "bridge")
	run("-n", p.fab, "link", "set", "br0", "up")
	for i, ns := range []string{p.a, p.b} {
		name := []string{"a", "b"}[i]
		addr := fmt.Sprintf("198.18.100.%d", i+1)
		run("-n", ns, "tuntap", "add", "dev", "eth0", "mode", "tap")
		run("-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
		run("-n", ns, "link", "set", "eth0", "up")
		run("-n", p.fab, "tuntap", "add", "dev", "p"+name, "mode", "tap")
		run("-n", p.fab, "link", "set", "dev", "p"+name, "master", "br0", "up")
		p.ports = append(p.ports, Port{Name: name, Addr: netip.MustParseAddr(addr), NS: ns, Tap: "eth0", FabricNS: p.fab, FabricTap: "p" + name})
	}
	return p
}

// The forwarder delivers what its links are set to, measured through the
// kernel's own sockets in real namespaces: never faster than the rate,
// never sooner than the delay, and the loss it was told.
func TestForwarderDelivers(t *testing.T) {
	p := newPair(t)
	f, err := NewForwarder(p.ports, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { f.Run(fctx); close(done) }()
	defer func() { stop(); <-done }()

	base, err := Probe(ctx, p.a, p.b, "198.18.100.2", 200, 2*time.Millisecond)
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
	m, err := Probe(ctx, p.a, p.b, "198.18.100.2", 200, 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("delay 20 ms ± 2 ms each way: rtt min %s median %s p99 %s loss %.3f", m.RTTMin, m.RTTMedian, m.RTTP99, m.Loss)
	if m.RTTMin < 36*time.Millisecond || m.Loss > 0.05 {
		t.Fatalf("a 20 ms ± 2 ms delay each way gave a round trip of %s at the least (loss %.3f)", m.RTTMin, m.Loss)
	}

	// Rate: one TCP stream gets no more than the cap.
	both(Profile{RateBits: 100e6})
	bits, err := Throughput(ctx, p.a, p.b, "198.18.100.2", 4*time.Second)
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
	m, err = Probe(ctx, p.a, p.b, "198.18.100.2", n, 500*time.Microsecond)
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
