package linkemu

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// Pair is two network namespaces, A (198.18.100.1) and B (198.18.100.2),
// on a fabric bridge, each through a TAP port a forwarder carries — as
// the testbed builds its hosts — for measuring the emulator itself.
type Pair struct {
	A, B, Fabric string
	AddrB        string
	F            *Forwarder
	stop         context.CancelFunc
	done         chan struct{}
}

// NewPair makes the namespaces (their names start with tag) and starts a
// forwarder between them. Close removes everything.
func NewPair(tag string) (*Pair, error) {
	p := &Pair{A: tag + "-a", B: tag + "-b", Fabric: tag + "-f", AddrB: "198.18.100.2"}
	run := func(args ...string) error {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	steps := [][]string{}
	for _, ns := range []string{p.A, p.B, p.Fabric} {
		steps = append(steps, []string{"netns", "add", ns}, []string{"-n", ns, "link", "set", "lo", "up"})
	}
	steps = append(steps, []string{"-n", p.Fabric, "link", "add", "br0", "type", "bridge"}, []string{"-n", p.Fabric, "link", "set", "br0", "up"})
	var ports []Port
	for i, ns := range []string{p.A, p.B} {
		name := []string{"a", "b"}[i]
		addr := fmt.Sprintf("198.18.100.%d", i+1)
		steps = append(steps,
			[]string{"-n", ns, "tuntap", "add", "dev", "eth0", "mode", "tap"},
			[]string{"-n", ns, "addr", "add", addr + "/24", "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
			[]string{"-n", p.Fabric, "tuntap", "add", "dev", "p" + name, "mode", "tap"},
			[]string{"-n", p.Fabric, "link", "set", "dev", "p" + name, "master", "br0", "up"})
		ports = append(ports, Port{Name: name, Addr: netip.MustParseAddr(addr), NS: ns, Tap: "eth0", FabricNS: p.Fabric, FabricTap: "p" + name})
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			p.Close()
			return nil, err
		}
	}
	f, err := NewForwarder(ports, nil)
	if err != nil {
		p.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.F, p.stop, p.done = f, cancel, make(chan struct{})
	go func() { f.Run(ctx); close(p.done) }()
	return p, nil
}

// Both shapes both directions between A and B with pr.
func (p *Pair) Both(pr Profile) error {
	return p.F.Apply(Links{Links: []Link{{From: "a", To: "b", Profile: pr}, {From: "b", To: "a", Profile: pr}}})
}

// Close stops the forwarder and removes the namespaces.
func (p *Pair) Close() {
	if p.stop != nil {
		p.stop()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
	for _, ns := range []string{p.A, p.B, p.Fabric} {
		exec.Command("ip", "netns", "delete", ns).Run()
	}
}
