package migrate

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/migmodel"
)

// AssumedBandwidth is the link's rate a prediction assumes when no host
// has measured the path yet (bytes per second): 1 Gbit/s.
const AssumedBandwidth = 125e6

// Predicting is what a prediction is made from.
type Predicting struct {
	VM       *api.VM
	Src, Dst *api.Node
	// Link is the source's last measurement of its path to the target
	// (nil: none yet; AssumedBandwidth then).
	Link *api.LinkStat
	Opts api.MigrationOptions
	// Allowed strategies (the policy's; empty: all).
	Allowed []string
	// Samples are the cluster's finished migrations (JSON of
	// migmodel.Sample) for calibration.
	Samples [][]byte
}

// Predict predicts every strategy the policy allows and both QEMUs can
// run, and chooses the soonest within the downtime limit (migmodel.Choose).
// A strategy a host cannot run is listed with why, never chosen.
func Predict(in Predicting) *api.MigrationPrediction {
	g := migmodel.Guest{MemoryBytes: int64(in.VM.Spec.MemoryMiB) << 20}
	out := &api.MigrationPrediction{Source: in.Src.Name, Target: in.Dst.Name, MemoryBytes: g.MemoryBytes,
		Policy: in.Opts.Policy, MaxDowntime: float64(in.Opts.MaxDowntimeMS), Made: time.Now().UTC()}
	if m := in.VM.Status.Memory; m != nil {
		out.Memory = *m
		g.DirtyRate, g.ZeroShare, g.CompressRatio, g.WorkingSet = m.DirtyRate, m.ZeroShare, m.CompressRatio, m.WorkingSet
		g.DirtyCompressRatio = m.DirtyCompressRatio
	}
	link := migmodel.Link{Bandwidth: AssumedBandwidth}
	if in.Link != nil {
		out.Link = *in.Link
		if in.Link.Bandwidth > 0 {
			link.Bandwidth = in.Link.Bandwidth
		}
		link.RTT = time.Duration(in.Link.RTTMS * float64(time.Millisecond))
	}
	lim := migmodel.Limits{DowntimeStart: time.Duration(InitialDowntimeMS(in.Opts.MaxDowntimeMS)) * time.Millisecond,
		DowntimeMax: time.Duration(in.Opts.MaxDowntimeMS) * time.Millisecond, MaxBandwidth: float64(in.Opts.MaxBandwidth),
		Allowed:     time.Duration(max(in.Opts.AllowedDowntimeMS, in.Opts.MaxDowntimeMS)) * time.Millisecond,
		MaxThrottle: MaxThrottle(max(in.Opts.AllowedDowntimeMS, in.Opts.MaxDowntimeMS))}
	if in.Opts.TimeoutS > 0 {
		lim.Timeout = time.Duration(in.Opts.TimeoutS) * time.Second
	}
	cal := Calibrate(in.Samples)
	var candidates []string
	var preds []migmodel.Prediction
	for _, s := range migmodel.All {
		sp := api.StrategyPrediction{Strategy: s, Calibrated: cal.For(s).Samples}
		if len(in.Allowed) > 0 && !slices.Contains(in.Allowed, s) {
			sp.Why = "not allowed by policy " + in.Opts.Policy
			out.Strategies = append(out.Strategies, sp)
			continue
		}
		if _, err := PlanFor(StrategyOptions(in.Opts, s), in.VM, in.Src, in.Dst); err != nil {
			sp.Why = err.Error()
			out.Strategies = append(out.Strategies, sp)
			continue
		}
		p := migmodel.Predict(s, g, link, lim, cal)
		preds = append(preds, p)
		candidates = append(candidates, s)
		out.Strategies = append(out.Strategies, fromModel(p, sp.Calibrated))
	}
	best, why, ok := migmodel.Choose(preds, candidates, lim.Allowed)
	if in.VM.Status.Memory == nil {
		out.Assumed = append(out.Assumed, "memory")
		why += " (the guest's memory use is not measured yet, which happens some seconds after it starts: every page is assumed to hold data and none to be written again, so the figures are rough)"
	}
	if in.Link == nil || in.Link.Bandwidth == 0 {
		out.Assumed = append(out.Assumed, "link")
		why += fmt.Sprintf(" (the link from %s to %s is not measured yet: %.0f MB/s assumed)", in.Src.Name, in.Dst.Name, AssumedBandwidth/1e6)
	}
	defer func() {
		if out.Chosen != "" {
			out.SwitchoverMS = float64(cal.For(out.Chosen).Switchover.Milliseconds())
		}
	}()
	if ok {
		out.Chosen, out.Why = best.Strategy, why
		return out
	}
	// Nothing is predicted to fit: start with the strategy that gets
	// furthest on its own and escalate by policy.
	for _, s := range []string{migmodel.AutoConverge, migmodel.Postcopy, migmodel.Precopy, migmodel.Multifd, migmodel.Compress} {
		if slices.Contains(candidates, s) {
			out.Chosen = s
			out.Why = fmt.Sprintf("%s; starting with %s and escalating by policy (%v)", why, s, in.Opts.Escalations)
			return out
		}
	}
	out.Why = why
	return out
}

// MaxThrottle is the highest CPU throttle for a guest allowed pauses of
// allowedMS: QEMU throttles by putting the vCPUs to sleep in 10 ms slices,
// p/(1-p) of a slice at p, and those sleeps are pauses its clients see too
// (the last one runs into the switchover's); they are kept to an eighth
// of the allowed pause (92 % for a second).
func MaxThrottle(allowedMS int64) int {
	q := float64(allowedMS) / 8
	return max(1, min(99, int(100*q/(q+10))))
}

// ThrottleSleep is the vCPU sleep of a CPU throttle of pct percent.
func ThrottleSleep(pct int) time.Duration {
	p := float64(min(pct, 99)) / 100
	return time.Duration(p / (1 - p) * float64(10*time.Millisecond))
}

// StrategyOptions are opts with strategy s in place (compress is multifd
// with compression).
func StrategyOptions(o api.MigrationOptions, s string) api.MigrationOptions {
	o.Strategy, o.Compress = s, false
	if s == migmodel.Compress {
		o.Strategy, o.Compress = api.StrategyMultifd, true
	}
	return o
}

func fromModel(p migmodel.Prediction, calibrated int) api.StrategyPrediction {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return api.StrategyPrediction{Strategy: p.Strategy, Converges: p.Converges, TotalMS: ms(p.Total), DowntimeMS: ms(p.Downtime),
		Bytes: p.Bytes, Rounds: p.Rounds, Throttle: p.Throttle, PostcopyMS: ms(p.PostcopyFor), Why: p.Why, Calibrated: calibrated}
}

// Calibrate fits the model to the cluster's finished migrations.
func Calibrate(samples [][]byte) migmodel.Calibration {
	var ss []migmodel.Sample
	for _, b := range samples {
		var s migmodel.Sample
		if json.Unmarshal(b, &s) == nil {
			ss = append(ss, s)
		}
	}
	return migmodel.Calibrate(migmodel.Defaults(), ss)
}

// SampleOf is a finished migration as calibration sees it: what it was
// predicted from and what it did. ok is false for one without a
// prediction or that did not complete.
func SampleOf(m *api.Migration) (migmodel.Sample, bool) {
	p := m.Prediction
	if p == nil || m.Phase != api.MigCompleted || m.TotalTimeMS == 0 || len(m.Escalations) > 0 || m.Options.HeldOut {
		return migmodel.Sample{}, false
	}
	s := migmodel.Sample{Strategy: StrategyOf(m.Options),
		Guest: migmodel.Guest{MemoryBytes: p.MemoryBytes, DirtyRate: p.Memory.DirtyRate, ZeroShare: p.Memory.ZeroShare,
			CompressRatio: p.Memory.CompressRatio, DirtyCompressRatio: p.Memory.DirtyCompressRatio, WorkingSet: p.Memory.WorkingSet},
		Link:  migmodel.Link{Bandwidth: p.Link.Bandwidth, RTT: time.Duration(p.Link.RTTMS * float64(time.Millisecond))},
		Total: m.Finished.Sub(m.Started), Downtime: time.Duration(m.DowntimeMS) * time.Millisecond, Bytes: m.BytesSent,
		ServicePause: time.Duration(m.ServicePauseMS) * time.Millisecond,
		Rounds:       int(m.Progress.Round), Converged: true, MaxDowntime: time.Duration(m.Options.MaxDowntimeMS) * time.Millisecond}
	if s.Link.Bandwidth == 0 || s.Bytes == 0 {
		return s, false
	}
	return s, true
}

// ServicePause is the pause a migrated guest's clients saw: from its pause
// on the source (the timeline) to its first answer on the target (0 when
// either is unknown).
func ServicePause(m *api.Migration) time.Duration {
	if m.AnsweringAt.IsZero() {
		return 0
	}
	for _, e := range m.Timeline {
		if strings.HasPrefix(e.Step, "guest paused on source") {
			if d := m.AnsweringAt.Sub(e.At); d > 0 {
				return d
			}
		}
	}
	return 0
}

// StrategyOf names a migration's strategy as the model does.
func StrategyOf(o api.MigrationOptions) string {
	if o.Compress {
		return migmodel.Compress
	}
	return o.Strategy
}
