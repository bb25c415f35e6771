package sched

import (
	"testing"

	"github.com/ferryvm/ferry/api"
)

func TestPick(t *testing.T) {
	nodes := []api.Node{
		{Name: "a", State: "ready", MemoryMiB: 1024, Images: []string{"tiny"},
			QEMU: &api.QEMUInfo{Version: "10.0.2", Machines: []string{"pc-i440fx-7.2", "pc-i440fx-10.0"}}},
		{Name: "b", State: "ready", MemoryMiB: 4096, Images: []string{"tiny"},
			QEMU: &api.QEMUInfo{Version: "9.2.0", Machines: []string{"pc-i440fx-7.2", "pc-i440fx-9.2"}}},
		{Name: "c", State: "not-ready", MemoryMiB: 8192, Images: []string{"tiny"}},
		{Name: "d", State: "ready", MemoryMiB: 8192},
	}
	free := map[string]int{"a": 1024, "b": 4096, "c": 8192, "d": 8192}
	cases := []struct {
		spec api.VMSpec
		want string
	}{
		{api.VMSpec{MemoryMiB: 256, Image: "tiny"}, "b"},                            // most free among those with the image
		{api.VMSpec{MemoryMiB: 256, Image: "/img/x.qcow2"}, "d"},                    // path images need no built-in image
		{api.VMSpec{MemoryMiB: 5000, Image: "tiny"}, ""},                            // fits nowhere with the image
		{api.VMSpec{MemoryMiB: 9000, Image: "/img/x.qcow2"}, ""},                    // fits nowhere
		{api.VMSpec{MemoryMiB: 256, Image: "tiny", Machine: "pc-i440fx-10.0"}, "a"}, // only a's QEMU runs its machine type
		{api.VMSpec{MemoryMiB: 256, Image: "tiny", Machine: "pc-i440fx-7.2"}, "b"},
	}
	for _, c := range cases {
		if got := Pick(nodes, free, c.spec); got != c.want {
			t.Errorf("%+v: got %q want %q", c.spec, got, c.want)
		}
	}
}

func TestFreeMemoryCountsGuestsOnTheirWay(t *testing.T) {
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
	free := FreeMemory(nodes, vms, migs)
	if free["a"] != 2048-512-256 || free["b"] != 2048-128-512 {
		t.Fatalf("free = %v", free)
	}
}
