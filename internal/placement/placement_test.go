package placement

import (
	"strings"
	"testing"

	"github.com/ferryvm/ferry/api"
)

var (
	q10 = &api.QEMUInfo{Version: "10.0.2", Machines: []string{"pc-i440fx-7.2", "pc-i440fx-10.0"}, Aliases: map[string]string{"pc": "pc-i440fx-10.0"}}
	q92 = &api.QEMUInfo{Version: "9.2.0", Machines: []string{"pc-i440fx-7.2", "pc-i440fx-9.2"}, Aliases: map[string]string{"pc": "pc-i440fx-9.2"}}
)

func cluster() []api.Node {
	tiny := []string{api.ImageTiny}
	return []api.Node{
		{Name: "a", State: "ready", MemoryMiB: 1024, Images: tiny, QEMU: q10},
		{Name: "b", State: "ready", MemoryMiB: 4096, Images: tiny, QEMU: q92},
		{Name: "c", State: "not-ready", MemoryMiB: 8192, Images: tiny, QEMU: q10},
		{Name: "d", State: "ready", MemoryMiB: 8192, QEMU: q10}, // no tiny image
		{Name: "e", State: "ready", MemoryMiB: 8192, Images: tiny, QEMU: q10, Maintenance: true},
		{Name: "f", State: "ready", MemoryMiB: 8192, Images: tiny, QEMU: q10, Degraded: []string{"guest storage full"}},
	}
}

func TestPick(t *testing.T) {
	v := NewView(cluster(), nil, nil)
	for _, c := range []struct {
		spec api.VMSpec
		want string
	}{
		{api.VMSpec{MemoryMiB: 256, Image: "tiny"}, "b"},                                   // most free among those that can
		{api.VMSpec{MemoryMiB: 256, Image: "/img/x.qcow2"}, "d"},                           // path images need no built-in image
		{api.VMSpec{MemoryMiB: 5000, Image: "tiny"}, ""},                                   // fits nowhere with the image
		{api.VMSpec{MemoryMiB: 256, Image: "tiny", Machine: "pc-i440fx-10.0"}, "a"},        // only a's QEMU runs its machine type
		{api.VMSpec{MemoryMiB: 256, Image: "/img/x.qcow2", Machine: "pc-i440fx-7.2"}, "d"}, // every QEMU runs 7.2's
	} {
		got, no := v.Pick(Request{Spec: c.spec})
		if got != c.want {
			t.Errorf("%+v: got %q want %q (%s)", c.spec, got, c.want, Reasons(no))
		}
	}
	// Why each host is refused.
	_, no := v.Pick(Request{Spec: api.VMSpec{MemoryMiB: 5000, Image: "tiny"}})
	for _, want := range []string{"a has no room", "b has no room", "c is not-ready", "d has not built the tiny image", "e is in maintenance", "f is degraded"} {
		if !strings.Contains(Reasons(no), want) {
			t.Errorf("reasons lack %q: %s", want, Reasons(no))
		}
	}
}

func TestRoomCountsGuestsOnTheirWay(t *testing.T) {
	nodes := []api.Node{{Name: "a", State: "ready", MemoryMiB: 2048}, {Name: "b", State: "ready", MemoryMiB: 2048}}
	vms := []api.VM{
		{Spec: api.VMSpec{Name: "x", MemoryMiB: 512}, Node: "a"},
		{Spec: api.VMSpec{Name: "y", MemoryMiB: 256}, Node: "a"},
		{Spec: api.VMSpec{Name: "z", MemoryMiB: 128}, Node: "b"},
	}
	migs := []api.Migration{
		{VM: "x", Source: "a", Target: "b", Phase: api.MigQueued},    // counts on b
		{VM: "y", Source: "a", Target: "b", Phase: api.MigCompleted}, // ended: not counted
		{VM: "z", Source: "a", Target: "b", Phase: api.MigCopying},   // already placed on b: counted once
	}
	v := NewView(nodes, vms, migs)
	if v.Free("a") != 2048-512-256 || v.Free("b") != 2048-128-512 {
		t.Fatalf("free a %d b %d", v.Free("a"), v.Free("b"))
	}
	// A decision in the round takes its room.
	v.Reserve("b", api.VMSpec{MemoryMiB: 1000})
	if err := v.Check(Request{Spec: api.VMSpec{MemoryMiB: 500}}, "b"); err == nil || !strings.Contains(err.Error(), "no room") {
		t.Fatalf("after a reservation b should be full: %v", err)
	}
}

func TestAntiAffinity(t *testing.T) {
	nodes := []api.Node{{Name: "a", State: "ready", MemoryMiB: 4096}, {Name: "b", State: "ready", MemoryMiB: 2048}}
	vms := []api.VM{{Spec: api.VMSpec{Name: "db1", MemoryMiB: 256, AntiAffinity: "dbs"}, Node: "a"}}
	v := NewView(nodes, vms, nil)
	spec := api.VMSpec{Name: "db2", MemoryMiB: 256, AntiAffinity: "dbs"}
	if got, _ := v.Pick(Request{Spec: spec}); got != "b" {
		t.Fatalf("db2 went to %q, want b (a holds db1)", got)
	}
	v.Reserve("b", spec)
	if got, no := v.Pick(Request{Spec: api.VMSpec{Name: "db3", MemoryMiB: 256, AntiAffinity: "dbs"}}); got != "" {
		t.Fatalf("db3 went to %q although every host holds one of its group (%s)", got, Reasons(no))
	}
}

func TestLiveMoves(t *testing.T) {
	nodes := cluster()
	vm := &api.VM{Spec: api.VMSpec{Name: "g", MemoryMiB: 256, Image: "tiny", Machine: "pc-i440fx-10.0"}, Node: "a",
		Status: api.VMStatus{QEMUVersion: "10.0.2"}}
	v := NewView(nodes, []api.VM{*vm}, nil)
	// b has room but an older QEMU: a live move there is refused, by name
	// and by Pick.
	if err := v.Check(Request{Spec: vm.Spec, Live: vm}, "b"); err == nil || !strings.Contains(err.Error(), "older than the QEMU 10.0.2") {
		t.Fatalf("to an older QEMU: %v", err)
	}
	if err := v.Check(Request{Spec: vm.Spec, Live: vm}, "a"); err == nil || !strings.Contains(err.Error(), "on a already") {
		t.Fatalf("to where it runs: %v", err)
	}
	if got, no := v.Pick(Request{Spec: vm.Spec, Live: vm}); got != "" {
		t.Fatalf("picked %q; every other host is refused (%s)", got, Reasons(no))
	}
}

func TestCheckLive(t *testing.T) {
	old := &api.QEMUInfo{Version: "7.2.22", Machines: []string{"pc-i440fx-7.2"}, Aliases: map[string]string{"pc": "pc-i440fx-7.2"},
		NoLiveMigration: "QEMU 7.2.22 loses guest memory under TCG"}
	newer := &api.QEMUInfo{Version: "10.1.0", Machines: []string{"pc-i440fx-7.2", "pc-i440fx-10.0"}}
	node := func(name string, q *api.QEMUInfo) *api.Node { return &api.Node{Name: name, QEMU: q} }
	for _, c := range []struct {
		name     string
		vm       api.VM
		src, dst *api.QEMUInfo
		want     string
	}{
		{"same version", api.VM{Spec: api.VMSpec{Machine: "pc-i440fx-10.0"}}, q10, q10, ""},
		{"to a newer QEMU", api.VM{Spec: api.VMSpec{Machine: "pc-i440fx-10.0"}}, q10, newer, ""},
		{"to an older QEMU", api.VM{Spec: api.VMSpec{Machine: "pc-i440fx-7.2"}, Status: api.VMStatus{QEMUVersion: "10.1.0"}}, newer, q10, "older than the QEMU 10.1.0"},
		{"machine missing", api.VM{Spec: api.VMSpec{Machine: "pc-q35-10.0"}}, q10, q10, "cannot run the guest's machine type pc-q35-10.0"},
		{"unrecorded machine: what pc meant at the source", api.VM{}, q10, q92, "older than"},
		{"out of 7.2 under TCG", api.VM{}, old, q10, "loses guest memory"},
		{"to 7.2", api.VM{}, q10, old, "older than"},
		{"no QEMU reported", api.VM{}, nil, q10, "has not reported its QEMU"},
	} {
		c.vm.Node = "h1"
		err := CheckLive(&c.vm, node("h1", c.src), node("h2", c.dst))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"7.2.22", "9.0.0", -1}, {"10.0.2", "9.0.0", 1}, {"9.0", "9.0.0", 0}, {"10.0.2", "10.0.10", -1}} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("%s vs %s: %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

// A live move avoids a target over a degraded link while another can take
// the guest (saying why), and takes it when it is the only one; new guests
// (no link involved) are not affected.
func TestDegradedLinks(t *testing.T) {
	tiny := []string{api.ImageTiny}
	nodes := []api.Node{
		{Name: "h1", State: "ready", MemoryMiB: 4096, Images: tiny, QEMU: q10},
		{Name: "h2", State: "ready", MemoryMiB: 8192, Images: tiny, QEMU: q10},
		{Name: "h3", State: "ready", MemoryMiB: 2048, Images: tiny, QEMU: q10},
	}
	vm := &api.VM{Spec: api.VMSpec{Name: "g", MemoryMiB: 256, Image: "tiny"}, Node: "h1", Status: api.VMStatus{QEMUVersion: "10.0.2"}}
	v := NewView(nodes, []api.VM{*vm}, nil)
	if got, _ := v.Pick(Request{Spec: vm.Spec, Live: vm}); got != "h2" {
		t.Fatalf("with healthy links picked %q, want h2 (most room)", got)
	}
	v.AvoidLinks(map[string]string{"h1/h2": "5.1 % packet loss", "h2/h1": "5.0 % packet loss"})
	got, no := v.Pick(Request{Spec: vm.Spec, Live: vm})
	if got != "h3" || !strings.Contains(Reasons(no), "link from h1 to h2 is degraded (5.1 % packet loss)") {
		t.Fatalf("over a degraded link: picked %q (%s), want h3 and why h2 was passed over", got, Reasons(no))
	}
	if got, _ := v.Pick(Request{Spec: vm.Spec}); got != "h2" {
		t.Fatalf("a new guest picked %q, want h2: links do not bear on it", got)
	}
	v.AvoidLinks(map[string]string{"h1/h2": "loss", "h1/h3": "loss"})
	if got, _ := v.Pick(Request{Spec: vm.Spec, Live: vm}); got != "h2" {
		t.Fatalf("with every path degraded picked %q, want h2 (a degraded path beats none)", got)
	}
}

// TestCPUShare: a move for CPU goes to the least loaded host whose
// forecast peak with the guest stays within the share, never to a host
// whose guests wait for their CPUs (contended, whatever their use says).
func TestCPUShare(t *testing.T) {
	tiny := []string{api.ImageTiny}
	load := func(peak, waiting float64) *api.HostLoad {
		return &api.HostLoad{Capacity: 1, CPU: peak, Peak: peak, Waiting: waiting}
	}
	nodes := []api.Node{
		{Name: "busy", State: "ready", MemoryMiB: 8192, Images: tiny, Load: load(0.5, 0)},
		{Name: "contended", State: "ready", MemoryMiB: 8192, Images: tiny, Load: load(0.05, 0.3)},
		{Name: "light", State: "ready", MemoryMiB: 8192, Images: tiny, Load: load(0.2, 0.02)},
	}
	v := NewView(nodes, nil, nil)
	spec := api.VMSpec{MemoryMiB: 256, Image: "tiny"}
	if got, no := v.Pick(Request{Spec: spec, CPU: 0.3, CPUShare: 0.7}); got != "light" {
		t.Fatalf("picked %q (%s), want light", got, Reasons(no))
	}
	_, no := v.Pick(Request{Spec: spec, CPU: 0.6, CPUShare: 0.7})
	for _, want := range []string{"busy would use 1.10 of its 1.00 CPUs", "contended is contended", "light would use 0.80"} {
		if !strings.Contains(Reasons(no), want) {
			t.Errorf("reasons lack %q: %s", want, Reasons(no))
		}
	}
}
