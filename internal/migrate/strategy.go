// Package migrate holds what Ferry knows about moving a running guest:
// which QEMU capabilities and parameters each strategy needs. The hosts'
// agents carry migrations out; the store records them.
package migrate

import (
	"fmt"

	"github.com/ferryvm/ferry/api"
)

// DefaultMaxDowntimeMS is the downtime limit when none is asked for.
const DefaultMaxDowntimeMS = 300

// MultifdChannels is the number of parallel streams for the multifd strategy.
const MultifdChannels = 4

// Plan is what both QEMUs are told for one migration.
type Plan struct {
	// Capabilities for both sides (they must agree on these).
	Both map[string]bool
	// SourceOnly capabilities. Not pause-before-switchover: with it, QEMU
	// 7.2 under TCG corrupts guest memory (reproduced with plain QMP, no
	// Ferry, within 5 migrations of a guest dirtying 32 MiB/s); the handover
	// gates on the target's -S instead.
	SourceOnly map[string]bool
	// Params for both sides, and for the source only.
	BothParams   map[string]any
	SourceParams map[string]any
	// Postcopy: switch to post-copy once the first pass is done.
	Postcopy bool
}

// Validate checks options and fills defaults.
func Validate(o *api.MigrationOptions) error {
	if o.Strategy == "" {
		o.Strategy = api.StrategyPrecopy
	}
	switch o.Strategy {
	case api.StrategyPrecopy, api.StrategyAutoConverge, api.StrategyPostcopy, api.StrategyMultifd:
	default:
		return fmt.Errorf("strategy %q is not precopy, auto-converge, postcopy or multifd", o.Strategy)
	}
	if o.MaxDowntimeMS == 0 {
		o.MaxDowntimeMS = DefaultMaxDowntimeMS
	}
	if o.MaxDowntimeMS < 1 || o.MaxDowntimeMS > 60000 {
		return fmt.Errorf("max downtime must be between 1ms and 60s")
	}
	if o.MaxBandwidth < 0 {
		return fmt.Errorf("max bandwidth must not be negative")
	}
	if o.Compress && (o.Strategy == api.StrategyPostcopy || o.Strategy == api.StrategyMultifd) {
		return fmt.Errorf("--compress does not combine with the %s strategy in QEMU 7.2", o.Strategy)
	}
	return nil
}

// PlanFor maps options to QEMU capabilities and parameters.
func PlanFor(o api.MigrationOptions) Plan {
	// Every capability is set explicitly: QEMU keeps them between
	// migrations, and a guest that arrived by one strategy must not carry it
	// into the next.
	p := Plan{
		Both:       map[string]bool{"events": true, "postcopy-ram": false, "multifd": false, "compress": false},
		SourceOnly: map[string]bool{"auto-converge": false},
		BothParams: map[string]any{},
		SourceParams: map[string]any{
			"downtime-limit": o.MaxDowntimeMS,
			// 0 is unlimited in QEMU's newer versions but throttles in 7.2;
			// "unlimited" is therefore a very large number.
			"max-bandwidth": unlimitedIfZero(o.MaxBandwidth),
		},
	}
	switch o.Strategy {
	case api.StrategyAutoConverge:
		p.SourceOnly["auto-converge"] = true
	case api.StrategyPostcopy:
		p.Both["postcopy-ram"] = true
		p.Postcopy = true
	case api.StrategyMultifd:
		p.Both["multifd"] = true
		p.BothParams["multifd-channels"] = MultifdChannels
	}
	if o.Compress {
		p.Both["compress"] = true
	}
	return p
}

func unlimitedIfZero(b int64) int64 {
	if b <= 0 {
		return 1 << 40
	}
	return b
}
