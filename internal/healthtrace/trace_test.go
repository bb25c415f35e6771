package healthtrace_test

import (
	"context"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/health"
	"github.com/ferryvm/ferry/internal/healthtrace"
	"github.com/ferryvm/ferry/internal/predict"
)

// Bench settings: the agent reads every second and judges 45 s ahead.
const (
	every   = time.Second
	horizon = 45 * time.Second
)

// firstAtRisk replays a trace through the reader and the risk model on a
// simulated clock and returns when the host first judged itself at risk
// (-1 for never).
func firstAtRisk(t *testing.T, tr healthtrace.Trace) time.Duration {
	root := t.TempDir()
	p := healthtrace.NewPlayer(tr, root, 1)
	r := health.NewReader(root, nil, nil)
	tk := predict.NewTracker(0)
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	for at := time.Duration(0); at < healthtrace.Length; at += every {
		if err := p.Step(at); err != nil {
			t.Fatal(err)
		}
		tk.Record(start.Add(at), r.Read(context.Background()))
		if risk := tk.Assess(predict.RiskConfig{Horizon: horizon, TimeScale: healthtrace.Compression}, start.Add(at)); risk.Probability >= 0.5 {
			t.Logf("%s: at risk at %s (%.2f): %s", tr.Name, at, risk.Probability, risk.Signals[0].Reason)
			return at
		}
	}
	return -1
}

// TestTuningTracesAreJudgedInTime is the model's tuning check on the traces
// it was tuned with (the held-out ones are left to `ferry bench
// predictive`, which reports them apart): every failing host is judged at
// risk at least 30 s before it dies — time to move its guests live — and no
// healthy host ever is.
func TestTuningTracesAreJudgedInTime(t *testing.T) {
	for _, tr := range healthtrace.All() {
		if tr.HeldOut {
			continue
		}
		t.Run(tr.Name, func(t *testing.T) {
			at := firstAtRisk(t, tr)
			switch {
			case tr.Failing && at < 0:
				t.Fatalf("failing host never judged at risk")
			case tr.Failing && tr.DiesAt-at < 30*time.Second:
				t.Fatalf("judged at risk %s before its death, want at least 30 s", tr.DiesAt-at)
			case !tr.Failing && at >= 0:
				t.Fatalf("healthy host judged at risk at %s", at)
			}
		})
	}
}
