package agent

import (
	"errors"
	"testing"
	"time"
)

func TestLaunchHealth(t *testing.T) {
	h := newLaunchHealth()
	t0 := time.Now()
	boom := errors.New("qemu: exited\nmore")
	// One guest failing over and over is that guest's problem.
	for i := 0; i < 5; i++ {
		h.failed("a", boom, t0)
	}
	if p := h.problem(t0); p != "" {
		t.Fatalf("one guest made the host degraded: %s", p)
	}
	h.failed("b", boom, t0.Add(time.Minute))
	if p := h.problem(t0.Add(time.Minute)); p == "" {
		t.Fatal("two guests failing did not make the host degraded")
	} else {
		t.Log(p)
	}
	// Old failures age out.
	if p := h.problem(t0.Add(10*time.Minute + time.Second)); p != "" {
		t.Fatalf("aged failures still count: %s", p)
	}
	// A start in between clears it.
	h.failed("a", boom, t0)
	h.failed("b", boom, t0)
	h.failed("c", boom, t0)
	h.started()
	if p := h.problem(t0); p != "" {
		t.Fatalf("a successful start did not clear: %s", p)
	}
}
