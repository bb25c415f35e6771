package migrate

import (
	"strings"
	"testing"
	"time"
)

func TestConverging(t *testing.T) {
	limit := 300 * time.Millisecond
	for _, tc := range []struct {
		name   string
		rounds []RoundStat
		want   bool
		why    string
	}{
		{"first pass", []RoundStat{{Round: 1, Remaining: 200e6, Rate: 25e6, DirtyRate: 40e6}}, true, ""},
		{"dirtier than the link at the second sync", []RoundStat{{Round: 1, Remaining: 200e6, Rate: 25e6}, {Round: 2, Remaining: 60e6, Rate: 25e6, DirtyRate: 23e6}}, false, "92 %"},
		{"shrinking", []RoundStat{{Round: 1, Remaining: 200e6, Rate: 25e6}, {Round: 2, Remaining: 60e6, Rate: 25e6, DirtyRate: 10e6},
			{Round: 3, Remaining: 24e6, Rate: 25e6, DirtyRate: 10e6}}, true, ""},
		{"stuck at the working set", []RoundStat{{Round: 1, Remaining: 64e6, Rate: 25e6}, {Round: 2, Remaining: 60e6, Rate: 25e6, DirtyRate: 20e6},
			{Round: 3, Remaining: 58e6, Rate: 25e6, DirtyRate: 20e6}}, false, "left after the sync"},
		{"stuck but small enough", []RoundStat{{Round: 1, Remaining: 6e6, Rate: 25e6}, {Round: 2, Remaining: 6e6, Rate: 25e6, DirtyRate: 5e6},
			{Round: 3, Remaining: 6e6, Rate: 25e6, DirtyRate: 5e6}}, true, ""},
	} {
		got, why := Converging(tc.rounds, limit)
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("%s: %v %q, want %v %q", tc.name, got, why, tc.want, tc.why)
		}
	}
}
