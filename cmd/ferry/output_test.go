package main

import (
	"os"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/api"
)

// Lines longer than the terminal are cut with an ellipsis, keeping their
// newline; shorter ones, and any when the width is unknown, are kept.
func TestFitLine(t *testing.T) {
	for _, c := range []struct {
		in    string
		width int
		want  string
	}{
		{"h1  ready  a long message\n", 12, "h1  ready  …\n"},
		{"short\n", 12, "short\n"},
		{"h1  ready  a long message\n", 0, "h1  ready  a long message\n"},
		{"näïve text", 6, "näïve…"},
	} {
		if got := fitLine(c.in, c.width); got != c.want {
			t.Errorf("fitLine(%q, %d) = %q, want %q", c.in, c.width, got, c.want)
		}
	}
}

// -o yaml writes the same fields as -o json, by their JSON names.
func TestEmitYAML(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	g := &globals{output: "yaml"}
	err = g.emit(api.Event{Kind: "vm-running", VM: "web", Message: "vm web on h1: running"})
	os.Stdout = stdout
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _ := r.Read(buf)
	out := string(buf[:n])
	for _, want := range []string{"kind: vm-running", "vm: web", "message: 'vm web on h1: running'"} {
		if !strings.Contains(out, want) {
			t.Errorf("yaml output lacks %q:\n%s", want, out)
		}
	}
}
