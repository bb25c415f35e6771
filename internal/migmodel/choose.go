package migmodel

import (
	"fmt"
	"strings"
	"time"
)

// TieShare is how much longer a simpler strategy may take and still be
// chosen over a more involved one (All's order: pre-copy first, post-copy
// last): within 5 %, the difference is below the model's error.
const TieShare = 0.05

// Choose picks, among the predictions of the allowed strategies, the one
// that finishes soonest with the guest's pause within maxDowntime (the
// longest the policy allows); a simpler strategy within TieShare of the
// soonest wins. It says why, naming what was passed over. ok is false
// when none of them fits.
func Choose(preds []Prediction, allowed []string, maxDowntime time.Duration) (best Prediction, why string, ok bool) {
	allow := map[string]bool{}
	for _, s := range allowed {
		allow[s] = true
	}
	var fit []Prediction
	var passed []string
	for _, p := range preds {
		switch {
		case len(allowed) > 0 && !allow[p.Strategy]:
			passed = append(passed, p.Strategy+": not allowed by the policy")
		case !p.Converges:
			passed = append(passed, p.Strategy+": "+p.Why)
		case p.Downtime > maxDowntime:
			passed = append(passed, fmt.Sprintf("%s: its pause of %s exceeds %s", p.Strategy, p.Downtime.Round(time.Millisecond), maxDowntime))
		default:
			fit = append(fit, p)
		}
	}
	if len(fit) == 0 {
		return Prediction{}, "no strategy fits: " + strings.Join(passed, "; "), false
	}
	soonest := fit[0]
	for _, p := range fit[1:] {
		if p.Total < soonest.Total {
			soonest = p
		}
	}
	best = soonest
	for _, s := range All {
		for _, p := range fit {
			if p.Strategy == s && float64(p.Total) <= float64(soonest.Total)*(1+TieShare) && rank(s) < rank(best.Strategy) {
				best = p
			}
		}
	}
	why = fmt.Sprintf("%s: predicted %s with a %s pause", best.Strategy, best.Total.Round(10*time.Millisecond), best.Downtime.Round(time.Millisecond))
	if best.Strategy != soonest.Strategy {
		why += fmt.Sprintf(" (simpler than %s, which would take %s)", soonest.Strategy, soonest.Total.Round(10*time.Millisecond))
	}
	var others []string
	for _, p := range fit {
		if p.Strategy != best.Strategy {
			others = append(others, fmt.Sprintf("%s %s", p.Strategy, p.Total.Round(10*time.Millisecond)))
		}
	}
	if len(others) > 0 {
		why += "; also fit: " + strings.Join(others, ", ")
	}
	if len(passed) > 0 {
		why += "; passed over: " + strings.Join(passed, "; ")
	}
	return best, why, true
}

func rank(s string) int {
	for i, a := range All {
		if a == s {
			return i
		}
	}
	return len(All)
}
