package agent

import (
	"context"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/health"
	"github.com/ferryvm/ferry/internal/predict"
)

// DefaultHealthEvery is how often the agent reads its host's health signals.
const DefaultHealthEvery = 10 * time.Second

// DefaultRiskThreshold is the probability of failing within the horizon at
// which a host reports itself at risk.
const DefaultRiskThreshold = 0.5

// healthLoop reads the host's health signals into their history and
// assesses from it the host's risk of failing, which the heartbeat reports.
// A host at risk stays so until its probability falls below half the
// threshold, so that a signal hovering at the line does not flap.
func (a *Agent) healthLoop(ctx context.Context) {
	every := a.cfg.HealthEvery
	if every == 0 {
		every = DefaultHealthEvery
	}
	if every < 0 {
		return
	}
	threshold := a.cfg.RiskThreshold
	if threshold <= 0 {
		threshold = DefaultRiskThreshold
	}
	root := a.cfg.HealthRoot
	if root == "" {
		root = "/"
	}
	reader := health.NewReader(root, a.health, a.log)
	tr := predict.NewTracker(0)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		readings := reader.Read(ctx)
		now := time.Now()
		tr.Record(now, readings)
		tr.Forget(now.Add(-10 * every))
		hr := tr.Assess(a.cfg.Risk, now)
		r := &api.HostRisk{Probability: hr.Probability, Horizon: hr.Horizon.String(), Threshold: threshold,
			Signals: len(readings), Assessed: now.UTC()}
		for _, s := range hr.Signals {
			r.Reasons = append(r.Reasons, api.RiskReason{Signal: s.Signal, Probability: s.Probability, Reason: s.Reason})
		}
		a.mu.Lock()
		was := a.risk != nil && a.risk.AtRisk
		r.AtRisk = r.Probability >= threshold || (was && r.Probability >= threshold/2)
		a.risk = r
		a.mu.Unlock()
		if r.AtRisk && !was {
			a.log.Warn("host at risk of failing", "probability", r.Probability, "horizon", r.Horizon, "reasons", len(r.Reasons))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
