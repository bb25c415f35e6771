package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/internal/linkemu"
)

// With Options.EmulatedLinks, each host's underlay port is a TAP device
// (eth0 in its namespace, one named for the host on the fabric's bridge),
// and a forwarder process in the fabric's namespace carries the frames
// between them (package linkemu), shaping each direction between two hosts
// as `ferry testbed link` sets it. Without, the ports are veth pairs, which
// the kernel carries at full speed.

// LinksFile, in a testbed's directory, holds the links' profiles; the
// forwarder applies it when it changes and writes LinksFile+".state".
const LinksFile = "links.json"

// Ports are the forwarder's ports: every host's.
func (b *Bed) Ports() []linkemu.Port {
	var out []linkemu.Port
	for _, h := range b.Hosts {
		out = append(out, linkemu.Port{Name: h.Name, Addr: netip.MustParseAddr(h.Addr), NS: h.NS, Tap: "eth0",
			FabricNS: b.FabricNS, FabricTap: h.Name})
	}
	return out
}

// startForwarder runs `ferry testbed forward` in the fabric's namespace
// (Down ends it with the namespace's other processes) and waits until it
// carries frames.
func (b *Bed) startForwarder(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(b.Dir, "forwarder.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", b.FabricNS, b.Bin, "testbed", "forward", "--name", b.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	b.ForwarderPID = cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	state := filepath.Join(b.Dir, LinksFile+".state")
	for {
		if exists(state) {
			return b.save()
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(b.Dir, "forwarder.log"))
			return fmt.Errorf("testbed: the link forwarder exited: %s", log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Forward runs the forwarder of testbed name until ctx ends (the body of
// `ferry testbed forward`).
func Forward(ctx context.Context, name string) error {
	b, err := Load(name)
	if err != nil {
		return err
	}
	f, err := linkemu.NewForwarder(b.Ports(), nil)
	if err != nil {
		return err
	}
	go f.Follow(ctx, filepath.Join(b.Dir, LinksFile))
	return f.Run(ctx)
}

// SetLink shapes the direction from → to (and to → from unless oneWay)
// with p (a zero profile unshapes it), and waits until the forwarder
// applies it. Bad input changes nothing.
func (b *Bed) SetLink(ctx context.Context, from, to string, p linkemu.Profile, oneWay bool) error {
	if !b.EmulatedLinks {
		return fmt.Errorf("testbed %s was built without emulated links (ferry testbed up --emulate-links)", b.Name)
	}
	if err := p.Check(); err != nil {
		return err
	}
	if b.host(from) == nil || b.host(to) == nil || from == to {
		return fmt.Errorf("testbed %s has no link between %q and %q (hosts h1..h%d)", b.Name, from, to, len(b.Hosts))
	}
	ls, err := b.readLinks()
	if err != nil {
		return err
	}
	set := func(from, to string) {
		kept := ls.Links[:0]
		for _, l := range ls.Links {
			if l.From != from || l.To != to {
				kept = append(kept, l)
			}
		}
		ls.Links = kept
		if !p.Zero() {
			ls.Links = append(ls.Links, linkemu.Link{From: from, To: to, Profile: p})
		}
	}
	set(from, to)
	if !oneWay {
		set(to, from)
	}
	data, _ := json.MarshalIndent(ls, "", "  ")
	path := filepath.Join(b.Dir, LinksFile)
	if err := os.WriteFile(path+".tmp", data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return err
	}
	return b.waitApplied(ctx, ls)
}

// Links is what the forwarder last reported: every shaped direction and
// its counters.
func (b *Bed) Links() ([]linkemu.LinkState, error) {
	data, err := os.ReadFile(filepath.Join(b.Dir, LinksFile+".state"))
	if err != nil {
		return nil, fmt.Errorf("testbed %s: no link state (is its forwarder running?): %w", b.Name, err)
	}
	var st []linkemu.LinkState
	return st, json.Unmarshal(data, &st)
}

func (b *Bed) readLinks() (linkemu.Links, error) {
	var ls linkemu.Links
	data, err := os.ReadFile(filepath.Join(b.Dir, LinksFile))
	if errors.Is(err, os.ErrNotExist) {
		return ls, nil
	}
	if err != nil {
		return ls, err
	}
	return ls, json.Unmarshal(data, &ls)
}

// waitApplied waits until the forwarder's state shows exactly ls.
func (b *Bed) waitApplied(ctx context.Context, ls linkemu.Links) error {
	want := map[[2]string]linkemu.Profile{}
	for _, l := range ls.Links {
		want[[2]string{l.From, l.To}] = l.Profile
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := b.Links()
		if err == nil && len(st) == len(want) {
			same := true
			for _, s := range st {
				if p, ok := want[[2]string{s.From, s.To}]; !ok || p != s.Profile {
					same = false
				}
			}
			if same {
				return nil
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(b.Dir, "forwarder.log"))
			return fmt.Errorf("testbed %s: the forwarder did not apply the links within 10 s: %v %s", b.Name, err, tail(log, 400))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (b *Bed) host(name string) *Host {
	for _, h := range b.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
