package sched

import (
	"testing"

	"github.com/ferryvm/ferry/api"
)

func TestPick(t *testing.T) {
	nodes := []api.Node{
		{Name: "a", State: "ready", MemoryMiB: 1024, Images: []string{"tiny"}},
		{Name: "b", State: "ready", MemoryMiB: 4096, Images: []string{"tiny"}},
		{Name: "c", State: "not-ready", MemoryMiB: 8192, Images: []string{"tiny"}},
		{Name: "d", State: "ready", MemoryMiB: 8192},
	}
	free := map[string]int{"a": 1024, "b": 4096, "c": 8192, "d": 8192}
	cases := []struct {
		spec api.VMSpec
		want string
	}{
		{api.VMSpec{MemoryMiB: 256, Image: "tiny"}, "b"},         // most free among those with the image
		{api.VMSpec{MemoryMiB: 256, Image: "/img/x.qcow2"}, "d"}, // path images need no built-in image
		{api.VMSpec{MemoryMiB: 5000, Image: "tiny"}, ""},         // fits nowhere with the image
		{api.VMSpec{MemoryMiB: 9000, Image: "/img/x.qcow2"}, ""}, // fits nowhere
	}
	for _, c := range cases {
		if got := Pick(nodes, free, c.spec); got != c.want {
			t.Errorf("%+v: got %q want %q", c.spec, got, c.want)
		}
	}
}
