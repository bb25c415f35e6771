package migrate

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
)

// DefaultPolicy applies to guests no policy selects: the automatic choice
// among every strategy, a 300 ms pause aimed for and up to 1 s allowed
// when a guest does not converge otherwise, and every escalation.
func DefaultPolicy() api.MigrationPolicy {
	return api.MigrationPolicy{Name: "default", MaxDowntimeMS: DefaultMaxDowntimeMS, AllowedDowntimeMS: 1000,
		Escalations: slices.Clone(AllEscalations)}
}

// AllEscalations is every escalation, in the order a migration takes them.
var AllEscalations = []string{api.EscalateDowntime, api.EscalateThrottle, api.EscalatePostcopy}

// PolicyStrategies are the strategies a policy may allow.
var PolicyStrategies = []string{api.StrategyPrecopy, api.StrategyMultifd, api.StrategyCompress, api.StrategyAutoConverge, api.StrategyPostcopy}

// PolicyFor is the policy for a guest with labels: of those whose selector
// all of the labels match, the one with the most selector labels (then the
// first by name); DefaultPolicy when none does.
func PolicyFor(policies []api.MigrationPolicy, labels map[string]string) api.MigrationPolicy {
	best, found := DefaultPolicy(), false
	for _, p := range policies {
		match := true
		for k, v := range p.Selector {
			if labels[k] != v {
				match = false
				break
			}
		}
		if match && (!found || len(p.Selector) > len(best.Selector) || (len(p.Selector) == len(best.Selector) && p.Name < best.Name)) {
			best, found = p, true
		}
	}
	return best
}

// NewPolicy checks a policy request and makes the policy, saying what is
// wrong with it.
func NewPolicy(req api.MigrationPolicyRequest) (api.MigrationPolicy, error) {
	p := api.MigrationPolicy{Name: req.Name, Selector: req.Selector, Created: time.Now().UTC()}
	if err := api.ValidateName("policy", req.Name); err != nil {
		return p, err
	}
	for k, v := range req.Selector {
		if err := api.ValidateLabel(k, v); err != nil {
			return p, fmt.Errorf("selector: %w", err)
		}
	}
	def := DefaultPolicy()
	p.MaxDowntimeMS, p.AllowedDowntimeMS = def.MaxDowntimeMS, 0
	if req.MaxBandwidth != "" {
		b, err := api.ParseSize(req.MaxBandwidth)
		if err != nil || b <= 0 {
			return p, fmt.Errorf("max_bandwidth %q: want bytes per second such as 100M", req.MaxBandwidth)
		}
		p.MaxBandwidth = b
	}
	var err error
	if p.MaxDowntimeMS, err = durationMS("max_downtime", req.MaxDowntime, p.MaxDowntimeMS); err != nil {
		return p, err
	}
	if p.AllowedDowntimeMS, err = durationMS("allowed_downtime", req.AllowedDowntime, max(p.MaxDowntimeMS, def.AllowedDowntimeMS)); err != nil {
		return p, err
	}
	if p.AllowedDowntimeMS < p.MaxDowntimeMS {
		return p, fmt.Errorf("allowed_downtime (%d ms) must not be below max_downtime (%d ms)", p.AllowedDowntimeMS, p.MaxDowntimeMS)
	}
	for _, s := range req.Strategies {
		if !slices.Contains(PolicyStrategies, s) {
			return p, fmt.Errorf("strategy %q is not one of %s", s, strings.Join(PolicyStrategies, ", "))
		}
		if !slices.Contains(p.Strategies, s) {
			p.Strategies = append(p.Strategies, s)
		}
	}
	if req.Escalations == nil {
		p.Escalations = slices.Clone(AllEscalations)
	} else {
		p.Escalations = []string{}
		for _, e := range AllEscalations { // in the order they are taken
			if slices.Contains(req.Escalations, e) {
				p.Escalations = append(p.Escalations, e)
			}
		}
		for _, e := range req.Escalations {
			if !slices.Contains(AllEscalations, e) {
				return p, fmt.Errorf("escalation %q is not one of %s", e, strings.Join(AllEscalations, ", "))
			}
		}
	}
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil || d < time.Second {
			return p, fmt.Errorf("timeout %q: want a duration of at least 1s, such as 10m", req.Timeout)
		}
		p.TimeoutS = int64(d / time.Second)
	}
	return p, nil
}

func durationMS(field, s string, def int64) (int64, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Millisecond || d > time.Minute {
		return 0, fmt.Errorf("%s %q: want a duration between 1ms and 1m, such as 300ms", field, s)
	}
	return d.Milliseconds(), nil
}

// ApplyPolicy fills what the request left open from the policy, and takes
// the policy's escalation bounds.
func ApplyPolicy(o *api.MigrationOptions, p api.MigrationPolicy, askedDowntime, askedBandwidth bool) {
	o.Policy = p.Name
	if !askedDowntime && p.MaxDowntimeMS > 0 {
		o.MaxDowntimeMS = p.MaxDowntimeMS
	}
	if !askedBandwidth {
		o.MaxBandwidth = p.MaxBandwidth
	}
	o.AllowedDowntimeMS = max(o.MaxDowntimeMS, p.AllowedDowntimeMS)
	o.Escalations = slices.Clone(p.Escalations)
	o.TimeoutS = p.TimeoutS
}
