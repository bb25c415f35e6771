package migrate

import (
	"slices"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/api"
)

// TestPredictionSaysWhatItAssumed: a guest moved before its memory was
// measured, over a link not measured yet, gets a prediction that names both
// as assumed and says so in its reason; once both are measured it names
// none.
func TestPredictionSaysWhatItAssumed(t *testing.T) {
	vm := &api.VM{Spec: api.VMSpec{Name: "g", Machine: "pc-i440fx-10.0", MemoryMiB: 1024}, Node: "h1"}
	in := Predicting{VM: vm, Src: node("h1", qemu10), Dst: node("h2", qemu10),
		Opts: api.MigrationOptions{MaxDowntimeMS: 300}}
	p := Predict(in)
	if !slices.Equal(p.Assumed, []string{"memory", "link"}) || !strings.Contains(p.Why, "memory use is not measured yet") ||
		!strings.Contains(p.Why, "not measured yet: 125 MB/s assumed") {
		t.Fatalf("unmeasured: assumed %v, why %q", p.Assumed, p.Why)
	}
	vm.Status.Memory = &api.MemoryLoad{DirtyRate: 1 << 20, ZeroShare: 0.8}
	in.Link = &api.LinkStat{Bandwidth: 50e6, RTTMS: 1}
	if p := Predict(in); len(p.Assumed) != 0 || strings.Contains(p.Why, "not measured") {
		t.Fatalf("measured: assumed %v, why %q", p.Assumed, p.Why)
	}
}
