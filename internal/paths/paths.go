// Package paths keeps a host's redundant underlay paths. A host with
// several underlay links (one per fabric) has a service address of its
// own (on its loopback device) that the others reach over every healthy
// path at once: a kernel multipath route to each peer's service address,
// one next hop per fabric, hashed by layer-4 ports
// (fib_multipath_hash_policy=1), so that overlay, migration and control
// connections spread over the paths. These kernels have no bonding, and
// FRR's BGP and BFD would bring a routing daemon per host for what is, on
// a shared layer-2 fabric, a question of which next hops answer: so Ferry
// watches the paths itself.
//
// The Monitor sends a small UDP probe over each path to each peer every
// Every (50 ms by default) and answers the peers' probes; a path that has
// not answered for DownAfter (250 ms) is withdrawn from the peer's route,
// and so is a lossy one (3 of its last 40 probes unanswered while another
// path to the peer lost none); either is restored once it has answered
// without a gap or a loss for UpAfter (2 s). A connection hashed onto a path that dies stalls until the route changes
// and then carries on over another (TCP retransmits; the kernel looks the
// route up again): it is not cut. The bounds are tight because TCP's
// retransmissions back off: on a LAN a lost segment is sent again after
// 200 ms, then 600 ms, then 1.4 s after the loss, and a path withdrawn
// within 600 ms costs a connection about 600 ms, one withdrawn later
// 1.4 s — as long as a host's lease tolerates (its guests are fenced
// after 1.4 s without a renewal). With every path to a peer
// down, the route keeps them all, as a silent monitor is likelier than
// every fabric failing at once.
package paths

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"
)

// Defaults.
const (
	DefaultPort      = 7446
	DefaultEvery     = 50 * time.Millisecond
	DefaultDownAfter = 250 * time.Millisecond
	DefaultUpAfter   = 2 * time.Second
)

// A path that answers but loses probes is lossy: lossWindow probes are
// judged (2 s at the default interval), and lossDown lost among them
// withdraw the path while another path to the peer loses none; it comes
// back only after a window without loss.
const (
	lossWindow = 40
	lossDown   = 3
)

// Local is one of this host's paths: its device and its address there
// (with the fabric's prefix length).
type Local struct {
	Dev  string
	Addr netip.Prefix
}

// Peer is another host: its service address and its address on each
// fabric it is on.
type Peer struct {
	Name    string
	Service netip.Addr
	Paths   []netip.Addr
}

// Hop is one next hop of a route: the peer's address on a fabric and this
// host's device on it.
type Hop struct {
	Dev string
	Via netip.Addr
}

// Router installs the route to a peer's service address (the kernel's in
// production: NetlinkRouter).
type Router interface {
	Replace(dst, src netip.Addr, hops []Hop) error
}

// Change is a path going down or coming back.
type Change struct {
	Peer string
	Dev  string
	Via  netip.Addr
	Up   bool
	Why  string
}

// Config configures a Monitor.
type Config struct {
	Local   []Local
	Service netip.Addr // this host's own service address (the routes' source)
	Port    int
	Every   time.Duration
	// DownAfter without an answer withdraws a path; UpAfter of answers
	// without a gap restores it.
	DownAfter, UpAfter time.Duration
	Router             Router
	// OnChange is called (from the monitor's goroutine) for each path
	// that goes down or comes back.
	OnChange func(Change)
	Log      *slog.Logger
}

// PathState is one path to one peer as the monitor sees it.
type PathState struct {
	Peer      string     `json:"peer"`
	Dev       string     `json:"dev"`
	Via       netip.Addr `json:"via"`
	Up        bool       `json:"up"`
	RTTMS     float64    `json:"rtt_ms"` // the last answer's round trip
	LastReply time.Time  `json:"last_reply"`
	Since     time.Time  `json:"since"` // when it last went up or down
}

type pathKey struct {
	local int
	via   netip.Addr
}

type pathState struct {
	peer      string
	up        bool
	since     time.Time
	lastReply time.Time
	// answering is when the replies began without a gap (zero: none
	// lately).
	answering time.Time
	rtt       time.Duration
	// The last lossWindow probes: their sequence numbers, when they were
	// sent and whether they were answered (a ring, next at ring).
	seqs     [lossWindow]uint64
	sentAt   [lossWindow]time.Time
	answered [lossWindow]bool
	ring     int
}

// lost counts the probes of the window that went unanswered for longer
// than wait, and how many were judged.
func (s *pathState) lost(now time.Time, wait time.Duration) (lost, judged int) {
	for i := range lossWindow {
		if s.sentAt[i].IsZero() || now.Sub(s.sentAt[i]) < wait {
			continue
		}
		judged++
		if !s.answered[i] {
			lost++
		}
	}
	return lost, judged
}

// Monitor watches the paths to every peer and keeps their routes.
type Monitor struct {
	cfg   Config
	conns []*net.UDPConn // one per local path

	mu     sync.Mutex
	peers  map[string]Peer
	paths  map[pathKey]*pathState
	routes map[string][]Hop // what is installed per peer
	seq    uint64
	drop   map[int]bool    // tests: local paths that neither send nor answer
	lose   map[int]float64 // tests: the share of probes a local path does not send
	rnd    *rand.Rand
}

// New returns a Monitor; Run starts it.
func New(cfg Config) (*Monitor, error) {
	if len(cfg.Local) == 0 {
		return nil, errors.New("paths: no local path")
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultEvery
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = DefaultDownAfter
	}
	if cfg.UpAfter <= 0 {
		cfg.UpAfter = DefaultUpAfter
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Monitor{cfg: cfg, peers: map[string]Peer{}, paths: map[pathKey]*pathState{}, routes: map[string][]Hop{}, drop: map[int]bool{}, lose: map[int]float64{},
		rnd: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}, nil
}

// SetPeers replaces the peers (the hosts of the cluster but this one). A
// peer's path is matched to the local path whose prefix holds it; paths on
// no local fabric are ignored. New paths start up.
func (m *Monitor) SetPeers(peers []Peer) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.peers = map[string]Peer{}
	keep := map[pathKey]bool{}
	for _, p := range peers {
		if !p.Service.IsValid() {
			continue
		}
		m.peers[p.Name] = p
		for _, via := range p.Paths {
			i := m.localFor(via)
			if i < 0 {
				continue
			}
			k := pathKey{i, via}
			keep[k] = true
			if s, ok := m.paths[k]; !ok || s.peer != p.Name {
				m.paths[k] = &pathState{peer: p.Name, up: true, since: now}
			}
		}
	}
	for k := range m.paths {
		if !keep[k] {
			delete(m.paths, k)
		}
	}
	for name := range m.routes {
		if _, ok := m.peers[name]; !ok {
			delete(m.routes, name)
		}
	}
}

func (m *Monitor) localFor(a netip.Addr) int {
	for i, l := range m.cfg.Local {
		if l.Addr.Masked().Contains(a) && l.Addr.Addr() != a {
			return i
		}
	}
	return -1
}

// Run answers probes and probes every path until ctx ends.
func (m *Monitor) Run(ctx context.Context) error {
	for _, l := range m.cfg.Local {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.Addr.Addr(), uint16(m.cfg.Port))))
		if err != nil {
			for _, c := range m.conns {
				c.Close()
			}
			return fmt.Errorf("paths: listening on %s: %w", l.Addr.Addr(), err)
		}
		m.conns = append(m.conns, c)
	}
	defer func() {
		for _, c := range m.conns {
			c.Close()
		}
	}()
	for i, c := range m.conns {
		go m.read(i, c)
	}
	m.sync(time.Now())
	t := time.NewTicker(m.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			m.probe(now)
			m.judge(now)
			m.sync(now)
		}
	}
}

// A probe: magic, kind, sequence number, the sender's clock.
const (
	magic     = "FPv1"
	kindAsk   = 'Q'
	kindReply = 'R'
	probeLen  = len(magic) + 1 + 8 + 8
)

func (m *Monitor) probe(now time.Time) {
	m.mu.Lock()
	m.seq++
	seq := m.seq
	var sends []pathKey
	for k, s := range m.paths {
		s.seqs[s.ring], s.sentAt[s.ring], s.answered[s.ring] = seq, now, false
		s.ring = (s.ring + 1) % lossWindow
		if !m.drop[k.local] && (m.lose[k.local] == 0 || m.rnd.Float64() >= m.lose[k.local]) {
			sends = append(sends, k)
		}
	}
	m.mu.Unlock()
	var b [probeLen]byte
	copy(b[:], magic)
	b[len(magic)] = kindAsk
	binary.BigEndian.PutUint64(b[len(magic)+1:], seq)
	binary.BigEndian.PutUint64(b[len(magic)+9:], uint64(now.UnixNano()))
	for _, k := range sends {
		m.conns[k.local].WriteToUDPAddrPort(b[:], netip.AddrPortFrom(k.via, uint16(m.cfg.Port)))
	}
}

func (m *Monitor) read(i int, c *net.UDPConn) {
	buf := make([]byte, 64)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed
		}
		if n != probeLen || string(buf[:len(magic)]) != magic {
			continue
		}
		m.mu.Lock()
		dropped := m.drop[i]
		m.mu.Unlock()
		if dropped {
			continue
		}
		switch buf[len(magic)] {
		case kindAsk:
			buf[len(magic)] = kindReply
			c.WriteToUDPAddrPort(buf[:n], from)
		case kindReply:
			seq := binary.BigEndian.Uint64(buf[len(magic)+1:])
			sent := time.Unix(0, int64(binary.BigEndian.Uint64(buf[len(magic)+9:])))
			now := time.Now()
			m.mu.Lock()
			if s, ok := m.paths[pathKey{i, from.Addr().Unmap()}]; ok {
				for j := range lossWindow {
					if s.seqs[j] == seq {
						s.answered[j] = true
					}
				}
				if now.Sub(s.lastReply) > 2*m.cfg.Every+m.cfg.Every/2 || s.answering.IsZero() {
					s.answering = now // the first answer after a gap
				}
				s.lastReply, s.rtt = now, now.Sub(sent)
			}
			m.mu.Unlock()
		}
	}
}

// judge marks paths down or up.
func (m *Monitor) judge(now time.Time) {
	var changes []Change
	m.mu.Lock()
	// A reply later than this counts as lost in the loss window.
	wait := max(m.cfg.DownAfter, 4*m.cfg.Every)
	// clean: peers with a path that is up and lost nothing lately.
	clean := map[string]bool{}
	for _, s := range m.paths {
		if lost, judged := s.lost(now, wait); s.up && lost == 0 && judged > 0 {
			clean[s.peer] = true
		}
	}
	for k, s := range m.paths {
		silent := now.Sub(s.lastReply)
		if s.lastReply.IsZero() {
			silent = now.Sub(s.since)
		}
		if silent > 2*m.cfg.Every+m.cfg.Every/2 {
			s.answering = time.Time{}
		}
		lost, judged := s.lost(now, wait)
		switch {
		case s.up && silent > m.cfg.DownAfter:
			s.up, s.since = false, now
			changes = append(changes, Change{Peer: s.peer, Dev: m.cfg.Local[k.local].Dev, Via: k.via, Up: false,
				Why: fmt.Sprintf("no answer over %s for %s", m.cfg.Local[k.local].Dev, silent.Round(time.Millisecond))})
		case s.up && lost >= lossDown && clean[s.peer]:
			s.up, s.since = false, now
			changes = append(changes, Change{Peer: s.peer, Dev: m.cfg.Local[k.local].Dev, Via: k.via, Up: false,
				Why: fmt.Sprintf("lossy: %d of its last %d probes over %s unanswered, another path lost none", lost, judged, m.cfg.Local[k.local].Dev)})
		case !s.up && !s.answering.IsZero() && now.Sub(s.answering) >= m.cfg.UpAfter && lost == 0:
			s.up, s.since = true, now
			changes = append(changes, Change{Peer: s.peer, Dev: m.cfg.Local[k.local].Dev, Via: k.via, Up: true,
				Why: fmt.Sprintf("answering over %s again for %s", m.cfg.Local[k.local].Dev, now.Sub(s.answering).Round(time.Millisecond))})
		}
	}
	m.mu.Unlock()
	sort.Slice(changes, func(i, j int) bool { return changes[i].Peer+changes[i].Dev < changes[j].Peer+changes[j].Dev })
	for _, c := range changes {
		if c.Up {
			m.cfg.Log.Info("path up", "peer", c.Peer, "dev", c.Dev, "via", c.Via, "why", c.Why)
		} else {
			m.cfg.Log.Warn("path down", "peer", c.Peer, "dev", c.Dev, "via", c.Via, "why", c.Why)
		}
		if m.cfg.OnChange != nil {
			m.cfg.OnChange(c)
		}
	}
}

// sync installs each peer's route where its healthy hops changed.
func (m *Monitor) sync(now time.Time) {
	type want struct {
		peer    Peer
		hops    []Hop
		changed bool
	}
	var todo []want
	m.mu.Lock()
	for name, p := range m.peers {
		var up, all []Hop
		for _, via := range p.Paths {
			i := m.localFor(via)
			if i < 0 {
				continue
			}
			h := Hop{Dev: m.cfg.Local[i].Dev, Via: via}
			all = append(all, h)
			if s := m.paths[pathKey{i, via}]; s != nil && s.up {
				up = append(up, h)
			}
		}
		if len(all) == 0 {
			continue
		}
		if len(up) == 0 {
			up = all
		}
		if !slices.Equal(up, m.routes[name]) {
			todo = append(todo, want{p, up, true})
		}
	}
	m.mu.Unlock()
	for _, w := range todo {
		if m.cfg.Router == nil {
			continue
		}
		if err := m.cfg.Router.Replace(w.peer.Service, m.cfg.Service, w.hops); err != nil {
			m.cfg.Log.Warn("paths: installing the route", "peer", w.peer.Name, "to", w.peer.Service, "err", err)
			continue
		}
		m.mu.Lock()
		m.routes[w.peer.Name] = w.hops
		m.mu.Unlock()
	}
}

// State is every path to every peer, by peer and device.
func (m *Monitor) State() []PathState {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []PathState
	for k, s := range m.paths {
		out = append(out, PathState{Peer: s.peer, Dev: m.cfg.Local[k.local].Dev, Via: k.via, Up: s.up, RTTMS: float64(s.rtt.Microseconds()) / 1000, LastReply: s.lastReply, Since: s.since})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Peer != out[j].Peer {
			return out[i].Peer < out[j].Peer
		}
		return out[i].Dev < out[j].Dev
	})
	return out
}

// Routes is what the monitor last installed per peer.
func (m *Monitor) Routes() map[string][]Hop {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][]Hop{}
	for k, v := range m.routes {
		out[k] = slices.Clone(v)
	}
	return out
}

// Lose makes local path i leave out that share of its probes (tests: a
// lossy path).
func (m *Monitor) Lose(i int, share float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lose[i] = share
}

// Drop makes local path i neither send nor answer probes (tests: a path
// that fails at this end).
func (m *Monitor) Drop(i int, drop bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.drop[i] = drop
}
