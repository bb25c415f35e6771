package migrate

import (
	"testing"

	"github.com/ferryvm/ferry/api"
)

func TestValidate(t *testing.T) {
	ok := api.MigrationOptions{}
	if err := Validate(&ok); err != nil || ok.Strategy != api.StrategyPrecopy || ok.MaxDowntimeMS != DefaultMaxDowntimeMS {
		t.Fatalf("defaults: %+v %v", ok, err)
	}
	for _, bad := range []api.MigrationOptions{
		{Strategy: "teleport"},
		{MaxDowntimeMS: 120000},
		{MaxBandwidth: -1},
		{Strategy: api.StrategyMultifd, Compress: true},
		{Strategy: api.StrategyPostcopy, Compress: true},
	} {
		b := bad
		if Validate(&b) == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// Every plan names every capability, so a guest that arrived by one
// strategy does not carry it into the next (QEMU keeps capabilities).
func TestPlanSetsEveryCapability(t *testing.T) {
	all := []string{"events", "postcopy-ram", "multifd", "compress", "auto-converge"}
	for _, s := range []string{api.StrategyPrecopy, api.StrategyAutoConverge, api.StrategyPostcopy, api.StrategyMultifd} {
		p := PlanFor(api.MigrationOptions{Strategy: s, MaxDowntimeMS: 300})
		for _, c := range all {
			_, both := p.Both[c]
			_, src := p.SourceOnly[c]
			if !both && !src {
				t.Errorf("%s: capability %s not set explicitly", s, c)
			}
		}
		if _, ok := p.SourceOnly["pause-before-switchover"]; ok && p.SourceOnly["pause-before-switchover"] {
			t.Errorf("%s: pause-before-switchover must stay off (QEMU 7.2/TCG memory loss)", s)
		}
	}
	if !PlanFor(api.MigrationOptions{Strategy: api.StrategyPostcopy}).Postcopy {
		t.Error("postcopy plan does not switch to post-copy")
	}
	if PlanFor(api.MigrationOptions{Strategy: api.StrategyMultifd}).BothParams["multifd-channels"] != MultifdChannels {
		t.Error("multifd plan lacks its channels on both sides")
	}
	if PlanFor(api.MigrationOptions{}).SourceParams["max-bandwidth"].(int64) <= 0 {
		t.Error("unlimited bandwidth must not be 0 (QEMU 7.2 throttles)")
	}
}
