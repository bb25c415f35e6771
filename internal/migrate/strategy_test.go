package migrate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/api"
)

func TestValidate(t *testing.T) {
	ok := api.MigrationOptions{}
	if err := Validate(&ok); err != nil || ok.Strategy != api.StrategyPrecopy || ok.MaxDowntimeMS != DefaultMaxDowntimeMS || ok.Transport != DefaultTransport {
		t.Fatalf("defaults: %+v %v", ok, err)
	}
	plain := api.MigrationOptions{Plaintext: true}
	if err := Validate(&plain); err != nil || plain.Transport != api.TransportPlain {
		t.Fatalf("plaintext: %+v %v", plain, err)
	}
	compress := api.MigrationOptions{Compress: true}
	if err := Validate(&compress); err != nil {
		t.Fatalf("compress with pre-copy is multifd with compression: %v", err)
	}
	for _, bad := range []api.MigrationOptions{
		{Strategy: "teleport"},
		{MaxDowntimeMS: -1},
		{MaxDowntimeMS: 70000},
		{MaxBandwidth: -5},
		{Strategy: api.StrategyPostcopy, Compress: true},
		{Transport: "carrier-pigeon"},
		{Plaintext: true, Transport: api.TransportQEMU},
	} {
		b := bad
		if Validate(&b) == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// qemu72 and qemu10 are what QEMU 7.2 and 10.0 report (query-migrate-capabilities
// and -parameters, abridged to what Ferry looks at).
var (
	qemu72 = &api.QEMUInfo{Version: "7.2.22", Machines: []string{"pc-i440fx-7.2"},
		Capabilities:       []string{"auto-converge", "compress", "events", "multifd", "pause-before-switchover", "postcopy-ram", "return-path"},
		Parameters:         []string{"compress-level", "downtime-limit", "max-bandwidth", "max-postcopy-bandwidth", "multifd-channels", "multifd-compression"},
		MultifdCompression: []string{"zstd", "zlib"}}
	qemu10 = &api.QEMUInfo{Version: "10.0.2", Machines: []string{"pc-i440fx-7.2", "pc-i440fx-10.0"},
		Capabilities: []string{"auto-converge", "events", "multifd", "pause-before-switchover", "postcopy-preempt", "postcopy-ram", "return-path"},
		Parameters: []string{"avail-switchover-bandwidth", "downtime-limit", "max-bandwidth", "max-postcopy-bandwidth", "multifd-channels",
			"multifd-compression", "zero-page-detection"},
		MultifdCompression: []string{"zstd", "zlib"}}
)

func node(name string, q *api.QEMUInfo) *api.Node {
	return &api.Node{Name: name, State: "ready", QEMU: q}
}

func TestPlanUsesOnlyKnownCapabilities(t *testing.T) {
	vm := &api.VM{Spec: api.VMSpec{Name: "g", Machine: "pc-i440fx-10.0"}, Node: "h1"}
	src, dst := node("h1", qemu10), node("h2", qemu10)
	for _, c := range []struct {
		opts     api.MigrationOptions
		caps     map[string]bool
		params   map[string]any
		postcopy bool
	}{
		{opts: api.MigrationOptions{Strategy: api.StrategyPrecopy},
			caps: map[string]bool{"events": true, "postcopy-ram": false, "postcopy-preempt": false, "multifd": false}},
		{opts: api.MigrationOptions{Strategy: api.StrategyPostcopy},
			caps: map[string]bool{"postcopy-ram": true, "postcopy-preempt": true, "multifd": false}, postcopy: true},
		{opts: api.MigrationOptions{Strategy: api.StrategyMultifd},
			caps:   map[string]bool{"multifd": true, "postcopy-ram": false},
			params: map[string]any{"multifd-channels": MultifdChannels, "zero-page-detection": "multifd", "multifd-compression": "none"}},
		{opts: api.MigrationOptions{Strategy: api.StrategyPrecopy, Compress: true},
			caps:   map[string]bool{"multifd": true},
			params: map[string]any{"multifd-compression": "zstd"}},
	} {
		o := c.opts
		if err := Validate(&o); err != nil {
			t.Fatal(err)
		}
		p, err := PlanFor(o, vm, src, dst)
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		if _, ok := p.Capabilities["compress"]; ok {
			t.Errorf("%s: plan sets the compress capability QEMU 10 does not have", o.Strategy)
		}
		for k, v := range c.caps {
			if got, ok := p.Capabilities[k]; !ok || got != v {
				t.Errorf("%s: capability %s = %v (set: %v), want %v", o.Strategy, k, got, ok, v)
			}
		}
		for k, v := range c.params {
			if p.Parameters[k] != v {
				t.Errorf("%s: parameter %s = %v, want %v", o.Strategy, k, p.Parameters[k], v)
			}
		}
		if p.Postcopy != c.postcopy || !p.PauseBeforeSwitchover || p.Machine != "pc-i440fx-10.0" {
			t.Errorf("%s: %+v", o.Strategy, p)
		}
		if p.SourceParameters["max-bandwidth"].(int64) <= 0 {
			t.Errorf("max-bandwidth %v", p.SourceParameters["max-bandwidth"])
		}
	}

	// Between 7.2 and 10.0 only what both know is set: no postcopy-preempt
	// (7.2 lacks it), and no compress (10.0 lacks it).
	p, err := PlanFor(api.MigrationOptions{Strategy: api.StrategyPostcopy, MaxDowntimeMS: 300}, vm, node("h1", qemu72), dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Capabilities["postcopy-preempt"]; ok {
		t.Errorf("postcopy-preempt set although the source lacks it: %v", p.Capabilities)
	}
	if _, ok := p.Capabilities["compress"]; ok {
		t.Errorf("compress set: %v", p.Capabilities)
	}
	if _, ok := p.SourceParameters["avail-switchover-bandwidth"]; ok {
		t.Errorf("avail-switchover-bandwidth set on a source that lacks it")
	}
}

func TestPlanRefusesWhatAQEMULacks(t *testing.T) {
	vm := &api.VM{Spec: api.VMSpec{Name: "g"}, Node: "h1"}
	noMultifd := *qemu10
	noMultifd.Capabilities = []string{"events", "postcopy-ram"}
	noZstd := *qemu10
	noZstd.MultifdCompression = []string{"zlib"}
	noCompression := *qemu10
	noCompression.MultifdCompression = nil
	for _, c := range []struct {
		opts     api.MigrationOptions
		src, dst *api.QEMUInfo
		want     string // in the error; "" means accepted
	}{
		{api.MigrationOptions{Strategy: api.StrategyMultifd}, qemu10, &noMultifd, "h2 (QEMU 10.0.2)"},
		{api.MigrationOptions{Strategy: api.StrategyPostcopy}, &noMultifd, qemu10, ""},
		{api.MigrationOptions{Strategy: api.StrategyAutoConverge}, &noMultifd, qemu10, "auto-converge migration capability, which h1"},
		{api.MigrationOptions{Compress: true}, qemu10, &noCompression, "compression method"},
		{api.MigrationOptions{Compress: true}, qemu10, &noZstd, ""}, // zlib then
		{api.MigrationOptions{}, nil, qemu10, "must both report their QEMU"},
	} {
		o := c.opts
		if err := Validate(&o); err != nil {
			t.Fatal(err)
		}
		p, err := PlanFor(o, vm, node("h1", c.src), node("h2", c.dst))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v refused: %v", o, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: error %v, want one saying %q", o, err, c.want)
		}
		if c.want == "" && err == nil && o.Compress && p.Parameters["multifd-compression"] != "zlib" {
			t.Errorf("compression %v, want zlib (the only common one)", p.Parameters["multifd-compression"])
		}
	}
}

func TestNoLiveMigration(t *testing.T) {
	why := NoLiveMigration("tcg", "7.2.22")
	if why == "" || !strings.Contains(why, "bookworm-backports") {
		t.Fatalf("TCG on 7.2 must be refused with how to upgrade: %q", why)
	}
	if NoLiveMigration("kvm", "7.2.22") != "" || NoLiveMigration("tcg", "9.0.0") != "" || NoLiveMigration("tcg", "10.0.2") != "" {
		t.Fatal("refused a host that may migrate")
	}
}

func TestAdaptiveDowntime(t *testing.T) {
	if got := InitialDowntimeMS(300); got != 20 {
		t.Errorf("initial %d, want 20", got)
	}
	if got := InitialDowntimeMS(5); got != 5 {
		t.Errorf("an operator's limit below the first one must hold: %d", got)
	}
	var seen []int64
	for cur := InitialDowntimeMS(300); ; {
		seen = append(seen, cur)
		next := NextDowntimeMS(cur, 300)
		if next == cur {
			break
		}
		cur = next
	}
	if want := []int64{20, 40, 80, 160, 300}; fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("limits %v, want %v", seen, want)
	}
}
