package linkemu

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"
)

// Port is one host's underlay port: a TAP device in the host's namespace
// and, for it, a TAP device in the fabric's namespace on its bridge.
type Port struct {
	Name      string     `json:"name"` // the host
	Addr      netip.Addr `json:"addr"` // its underlay address
	NS        string     `json:"ns"`
	Tap       string     `json:"tap"`
	FabricNS  string     `json:"fabric_ns"`
	FabricTap string     `json:"fabric_tap"`
}

// port is a Port with its devices open.
type port struct {
	Port
	host, fabric *os.File
}

// Link is one configured direction between two ports.
type Link struct {
	From    string  `json:"from"`
	To      string  `json:"to"`
	Profile Profile `json:"profile"`
}

// Links is the forwarder's configuration file.
type Links struct {
	Links []Link `json:"links"`
}

// LinkState is a configured direction with what it did so far.
type LinkState struct {
	Link
	Counters Counters `json:"counters"`
}

// Forwarder carries frames between every port's two TAP devices, through
// a link's queue where one is configured for the frame's direction.
type Forwarder struct {
	ports  []*port
	byAddr map[netip.Addr]*port
	log    *slog.Logger

	mu    sync.RWMutex
	links map[[2]string]*link
	seed  uint64
}

// NewForwarder opens every port's devices.
func NewForwarder(ports []Port, log *slog.Logger) (*Forwarder, error) {
	if log == nil {
		log = slog.Default()
	}
	f := &Forwarder{byAddr: map[netip.Addr]*port{}, links: map[[2]string]*link{}, log: log, seed: uint64(time.Now().UnixNano())}
	for _, p := range ports {
		host, err := AttachTap(p.NS, p.Tap)
		if err != nil {
			f.closePorts()
			return nil, err
		}
		fabric, err := AttachTap(p.FabricNS, p.FabricTap)
		if err != nil {
			host.Close()
			f.closePorts()
			return nil, err
		}
		pt := &port{Port: p, host: host, fabric: fabric}
		f.ports = append(f.ports, pt)
		f.byAddr[p.Addr] = pt
	}
	return f, nil
}

func (f *Forwarder) closePorts() {
	for _, p := range f.ports {
		p.host.Close()
		p.fabric.Close()
	}
}

// Run forwards until ctx ends, then closes the devices.
func (f *Forwarder) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, p := range f.ports {
		wg.Add(2)
		go func() { defer wg.Done(); f.uplink(p) }()
		go func() { defer wg.Done(); f.downlink(p) }()
	}
	<-ctx.Done()
	f.closePorts()
	wg.Wait()
	f.mu.Lock()
	for k, l := range f.links {
		l.close()
		delete(f.links, k)
	}
	f.mu.Unlock()
	return nil
}

// uplink carries what a host sends into the fabric, shaped by the link
// towards the frame's destination.
func (f *Forwarder) uplink(p *port) {
	buf := make([]byte, 65536)
	for {
		n, err := p.host.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				f.log.Warn("reading a host's port", "port", p.Name, "err", err)
			}
			return
		}
		fr := buf[:n]
		var l *link
		if dst, ok := dstAddr(fr); ok {
			if to := f.byAddr[dst]; to != nil {
				f.mu.RLock()
				l = f.links[[2]string{p.Name, to.Name}]
				f.mu.RUnlock()
			}
		}
		if l == nil {
			p.fabric.Write(fr)
			continue
		}
		l.send(append([]byte(nil), fr...))
	}
}

// downlink carries what the fabric delivers to a host, unshaped (each
// direction is shaped once, as it leaves its sender).
func (f *Forwarder) downlink(p *port) {
	buf := make([]byte, 65536)
	for {
		n, err := p.fabric.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				f.log.Warn("reading the fabric's port", "port", p.Name, "err", err)
			}
			return
		}
		p.host.Write(buf[:n])
	}
}

// dstAddr is the IPv4 destination of an Ethernet frame (an ARP packet's
// target address).
func dstAddr(fr []byte) (netip.Addr, bool) {
	if len(fr) < 14 {
		return netip.Addr{}, false
	}
	switch binary.BigEndian.Uint16(fr[12:14]) {
	case 0x0800:
		if len(fr) >= 34 {
			return netip.AddrFrom4([4]byte(fr[30:34])), true
		}
	case 0x0806:
		if len(fr) >= 42 {
			return netip.AddrFrom4([4]byte(fr[38:42])), true
		}
	}
	return netip.Addr{}, false
}

// Set configures the direction from → to (a zero profile removes it).
// Frames queued in a link that changes are dropped.
func (f *Forwarder) Set(from, to string, p Profile) error {
	src, dst := f.port(from), f.port(to)
	if src == nil || dst == nil || src == dst {
		return fmt.Errorf("no link from %q to %q: ports are %v", from, to, f.names())
	}
	if err := p.Check(); err != nil {
		return err
	}
	key := [2]string{from, to}
	f.mu.Lock()
	old := f.links[key]
	if old != nil && old.prof == p {
		f.mu.Unlock()
		return nil
	}
	delete(f.links, key)
	if !p.Zero() {
		f.seed++
		l := newLink(p, src.fabric, f.seed)
		go l.run()
		f.links[key] = l
	}
	f.mu.Unlock()
	if old != nil {
		old.close()
	}
	f.log.Info("link", "from", from, "to", to, "profile", p.String())
	return nil
}

// Apply makes the configured links exactly ls: directions not in it are
// unshaped again.
func (f *Forwarder) Apply(ls Links) error {
	want := map[[2]string]Profile{}
	for _, l := range ls.Links {
		if f.port(l.From) == nil || f.port(l.To) == nil {
			return fmt.Errorf("link %s > %s: ports are %v", l.From, l.To, f.names())
		}
		if err := l.Profile.Check(); err != nil {
			return fmt.Errorf("link %s > %s: %w", l.From, l.To, err)
		}
		want[[2]string{l.From, l.To}] = l.Profile
	}
	f.mu.RLock()
	for k := range f.links {
		if _, ok := want[k]; !ok {
			want[k] = Profile{}
		}
	}
	f.mu.RUnlock()
	for k, p := range want {
		if err := f.Set(k[0], k[1], p); err != nil {
			return err
		}
	}
	return nil
}

// State lists the configured directions and their counters.
func (f *Forwarder) State() []LinkState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []LinkState
	for k, l := range f.links {
		out = append(out, LinkState{Link: Link{From: k[0], To: k[1], Profile: l.prof}, Counters: l.counters()})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].From != out[j].From {
			return out[i].From < out[j].From
		}
		return out[i].To < out[j].To
	})
	return out
}

// Follow applies the links file at path whenever it changes, and writes
// the links' state beside it (path + ".state") every second, until ctx
// ends. A file that does not parse or check is logged and left unapplied.
func (f *Forwarder) Follow(ctx context.Context, path string) {
	var seen time.Time
	var size int64 = -1
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		if st, err := os.Stat(path); err == nil && (st.ModTime() != seen || st.Size() != size) {
			seen, size = st.ModTime(), st.Size()
			if err := f.applyFile(path); err != nil {
				f.log.Error("links file not applied", "path", path, "err", err)
			}
		}
		if n%10 == 0 {
			if b, err := json.MarshalIndent(f.State(), "", "  "); err == nil {
				writeAtomic(path+".state", b)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (f *Forwarder) applyFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var ls Links
	if err := json.Unmarshal(b, &ls); err != nil {
		return err
	}
	return f.Apply(ls)
}

func (f *Forwarder) port(name string) *port {
	for _, p := range f.ports {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func (f *Forwarder) names() []string {
	var out []string
	for _, p := range f.ports {
		out = append(out, p.Name)
	}
	return out
}

// writeAtomic replaces path's contents in one step.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
