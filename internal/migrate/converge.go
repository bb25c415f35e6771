package migrate

import (
	"fmt"
	"time"
)

// RoundStat is a pre-copy migration at one of its dirty-bitmap syncs, as
// the source saw it.
type RoundStat struct {
	Round     int64   // QEMU's dirty-sync count
	Remaining int64   // bytes left right after the sync
	Rate      float64 // bytes per second the stream carries
	DirtyRate float64 // bytes per second the guest dirties
	At        time.Time
}

// DirtyShare is the share of the stream's rate at which a guest's dirtying
// is taken as faster than the link carries: each round then leaves nearly
// as much as it sent.
const DirtyShare = 0.9

// Converging judges a pre-copy migration from its rounds so far against
// the downtime it may take (limit): it does not converge when the guest
// dirties at DirtyShare of the stream's rate or more, or when, from the
// third sync on, what is left has not shrunk by a fifth over the last two
// syncs while it still takes longer than limit to send. It answers after
// the second sync at the earliest and by the third at the latest.
func Converging(rounds []RoundStat, limit time.Duration) (bool, string) {
	n := len(rounds)
	if n == 0 || rounds[n-1].Round < 2 {
		return true, ""
	}
	last := rounds[n-1]
	if last.Rate > 0 && last.DirtyRate >= DirtyShare*last.Rate {
		return false, fmt.Sprintf("round %d: the guest dirties %.1f MB/s, %.0f %% of the %.1f MB/s the link carries",
			last.Round, last.DirtyRate/1e6, 100*last.DirtyRate/last.Rate, last.Rate/1e6)
	}
	if last.Round < 3 || n < 3 || last.Rate <= 0 {
		return true, ""
	}
	before := rounds[n-3]
	needs := time.Duration(float64(last.Remaining) / last.Rate * float64(time.Second))
	if float64(last.Remaining) > 0.8*float64(before.Remaining) && needs > limit {
		return false, fmt.Sprintf("round %d: %.1f MB left after the sync (%.1f MB two syncs before), %s to send where %s is allowed",
			last.Round, float64(last.Remaining)/1e6, float64(before.Remaining)/1e6, needs.Round(time.Millisecond), limit)
	}
	return true, ""
}
