package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/testbed"
)

// streamWatch holds one long-lived TCP connection to the guest (from the
// client namespace, over the overlay) and records the largest gap between
// lines and any break.
type streamWatch struct {
	mu      sync.Mutex
	lines   int
	last    time.Time
	maxGap  time.Duration
	gapAt   time.Time
	bootIDs map[string]bool
	err     error
	lastSeq int
	done    chan struct{}
}

func TestMigrationKeepsConnection(t *testing.T) {
	b, cl := newBed(t, 3)
	if _, err := cl.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "mig"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "mig", 90*time.Second, "running and healthy", healthyRunning)
	home := vm.Node
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")

	// A client streams from the guest through one TCP connection.
	hc := b.HTTPClient(b.ClientNS, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ip+"/stream?interval=10ms", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	w := &streamWatch{bootIDs: map[string]bool{}, done: make(chan struct{}), lastSeq: -1}
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			now := time.Now()
			f := strings.Fields(sc.Text())
			w.mu.Lock()
			if len(f) == 2 {
				seq, _ := strconv.Atoi(f[0])
				if seq != w.lastSeq+1 && w.err == nil {
					w.err = fmt.Errorf("stream jumped from %d to %d", w.lastSeq, seq)
				}
				w.lastSeq = seq
				w.bootIDs[f[1]] = true
			}
			if !w.last.IsZero() && now.Sub(w.last) > w.maxGap {
				w.maxGap, w.gapAt = now.Sub(w.last), now
			}
			w.last = now
			w.lines++
			w.mu.Unlock()
		}
		w.mu.Lock()
		if ctx.Err() == nil && w.err == nil {
			w.err = fmt.Errorf("stream ended: %v", sc.Err())
		}
		w.mu.Unlock()
	}()
	// A baseline of lines before moving.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		w.mu.Lock()
		n := w.lines
		w.mu.Unlock()
		if n >= 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream gave only %d lines in 30 s", n)
		}
	}

	var other string
	for _, h := range b.Hosts {
		if h.Name != home {
			other = h.Name
			break
		}
	}
	var maxDowntime int64
	for _, to := range []string{other, home} {
		m, err := cl.MigrateVM(ctxT(t, 10*time.Second), "mig", api.MigrateRequest{To: to})
		if err != nil {
			t.Fatal(err)
		}
		m, err = cl.WaitMigration(ctxT(t, 2*time.Minute), "mig", m.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.Phase != api.MigCompleted {
			t.Fatalf("migration to %s: %s: %s", to, m.Phase, m.Error)
		}
		if m.DowntimeMS > m.Options.MaxDowntimeMS*2 {
			t.Errorf("downtime %dms, limit %dms", m.DowntimeMS, m.Options.MaxDowntimeMS)
		}
		maxDowntime = max(maxDowntime, m.DowntimeMS)
		vm = waitVM(t, cl, "mig", 30*time.Second, "running on "+to, func(vm *api.VM) bool {
			return vm.Node == to && vm.Status.Phase == api.PhaseRunning && vm.Status.Node == to
		})
		// Exactly one QEMU of the guest, on the new host.
		waitOneQEMU(t, b, vm.Spec.UUID, to)
		t.Logf("to %s: total %dms, downtime %dms", to, m.TotalTimeMS, m.DowntimeMS)
		for _, e := range m.Timeline {
			t.Logf("  %s %-4s %s", e.At.Local().Format("15:04:05.000"), e.Host, e.Step)
		}
		time.Sleep(300 * time.Millisecond)
	}
	cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil && !strings.Contains(w.err.Error(), "context canceled") {
		t.Fatalf("the connection broke: %v (after %d lines)", w.err, w.lines)
	}
	if len(w.bootIDs) != 1 {
		t.Fatalf("guest boot ids seen: %v", w.bootIDs)
	}
	// The bound: reported downtime + 200 ms. Under TCG the guest
	// needs another 100-170 ms after it resumes before it answers (QEMU
	// starts with an empty translation cache; measured with the timeline
	// below), which the source-reported downtime does not include; on this
	// 2-core machine that alone breaks the bound in about a third of runs,
	// so under TCG the test allows that much more and logs whether the
	// strict bound held (docs/BENCHMARKS.md has the figures).
	strict := time.Duration(maxDowntime)*time.Millisecond + 200*time.Millisecond
	limit := strict
	if b.Accel == "tcg" {
		limit += tcgWarmup
	}
	t.Logf("stream: %d lines, longest gap %v (strict bound %v met: %v), from %s to %s", w.lines, w.maxGap, strict, w.maxGap <= strict,
		w.gapAt.Add(-w.maxGap).Format("15:04:05.000"), w.gapAt.Format("15:04:05.000"))
	if w.maxGap > limit {
		t.Fatalf("longest gap in the stream %v exceeds downtime %dms + 200ms (+%v under TCG)", w.maxGap, maxDowntime, limit-strict)
	}
}

// tcgWarmup is how much longer than the reported downtime a TCG guest may
// stay silent after a migration (see TestMigrationKeepsConnection).
const tcgWarmup = 250 * time.Millisecond

// waitOneQEMU waits until exactly one QEMU process of the guest exists, on
// host. (A paused incoming QEMU of a failed migration may linger until its
// host hears of the failure; it never ran guest code.)
func waitOneQEMU(t *testing.T, b *testbed.Bed, uuid, host string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		hosts := qemuHosts(b, uuid)
		if len(hosts) == 1 && hosts[0] == host {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest %s: QEMU on %v, want only on %s", uuid, hosts, host)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
