// Package linkprobe measures the paths between the cluster's hosts: each
// host's prober times TCP handshakes with other hosts' API ports (round
// trip, jitter and loss, often; a link that loses packets or grows slow is
// judged degraded, health.go) and now and then streams to one for a moment
// (one TCP stream's bandwidth, over the same mutual TLS as everything
// else), and records what it found in the store (api.LinkStat) for
// migration predictions, the placement engine and the link matrix. It probes a few peers per round
// in turn, so that a large cluster's hosts do not all probe all.
package linkprobe

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/store"
)

// Prober measures this host's links to the others.
type Prober struct {
	Node string
	St   *store.Store
	// TLS is this host's client TLS (its node certificate).
	TLS *tls.Config
	// RTTEvery is how often a round of round-trip probes runs (0: 30 s);
	// BandwidthEvery how old a link's bandwidth may grow before it is
	// measured again (0: 10 minutes); BurstFor how long a bandwidth probe
	// streams (0: 1 s).
	RTTEvery, BandwidthEvery, BurstFor time.Duration
	// PeersPerRound bounds the hosts probed per round (0: 16).
	PeersPerRound int
	Log           *slog.Logger

	mu    sync.Mutex
	hc    *http.Client
	next  int // where the next round starts in the sorted peer list
	known map[string]api.LinkStat
	// health is each link's recent probes and judgement.
	health map[string]*health
}

func (p *Prober) defaults() {
	if p.RTTEvery == 0 {
		p.RTTEvery = 30 * time.Second
	}
	if p.BandwidthEvery == 0 {
		p.BandwidthEvery = 10 * time.Minute
	}
	if p.BurstFor == 0 {
		p.BurstFor = time.Second
	}
	if p.PeersPerRound == 0 {
		p.PeersPerRound = 16
	}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.hc == nil {
		p.hc = &http.Client{Transport: &http.Transport{TLSClientConfig: p.TLS, MaxIdleConnsPerHost: 1, IdleConnTimeout: 2 * time.Minute}}
	}
	if p.known == nil {
		p.known = map[string]api.LinkStat{}
	}
	if p.health == nil {
		p.health = map[string]*health{}
	}
}

// Known is this host's last measurement of each of its links.
func (p *Prober) Known() []api.LinkStat {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]api.LinkStat, 0, len(p.known))
	for _, l := range p.known {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].To < out[j].To })
	return out
}

// Run probes round after round until ctx ends.
func (p *Prober) Run(ctx context.Context) {
	p.mu.Lock()
	p.defaults()
	p.mu.Unlock()
	// The first round soon after start (the other hosts' APIs may still
	// be coming up), then every RTTEvery, and a full one when asked.
	next := time.After(min(p.RTTEvery, 5*time.Second))
	asked := p.St.WatchLinkProbeRequests(ctx, p.Node)
	for {
		select {
		case <-ctx.Done():
			return
		case <-next:
		case c, ok := <-asked:
			if !ok {
				time.Sleep(time.Second)
				asked = p.St.WatchLinkProbeRequests(ctx, p.Node)
				continue
			}
			var req store.LinkProbeRequest
			if c.Deleted {
				continue
			}
			if json.Unmarshal(c.Value, &req) == nil && req.Peer != "" {
				if err := p.One(ctx, req.Peer); err != nil && ctx.Err() == nil {
					p.Log.Info("link test (asked for)", "to", req.Peer, "err", err)
				}
				continue
			}
			if err := p.All(ctx); err != nil && ctx.Err() == nil {
				p.Log.Info("link probes (asked for)", "err", err)
			}
			continue
		}
		if err := p.Round(ctx); err != nil && ctx.Err() == nil {
			p.Log.Info("link probes", "err", err)
		}
		next = time.After(p.RTTEvery)
	}
}

// Round probes the next PeersPerRound peers: the round trip of each, the
// bandwidth of those whose figure is older than BandwidthEvery.
func (p *Prober) Round(ctx context.Context) error {
	p.mu.Lock()
	p.defaults()
	p.mu.Unlock()
	nodes, err := p.St.ListNodes(ctx)
	if err != nil {
		return err
	}
	var peers []api.Node
	for _, n := range nodes {
		if n.Name != p.Node && n.API != "" {
			peers = append(peers, n)
		}
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
	if len(peers) == 0 {
		return nil
	}
	p.mu.Lock()
	start := p.next % len(peers)
	p.next = start + p.PeersPerRound
	p.mu.Unlock()
	var errs []error
	for i := 0; i < min(p.PeersPerRound, len(peers)); i++ {
		peer := peers[(start+i)%len(peers)]
		p.mu.Lock()
		old := p.known[peer.Name]
		p.mu.Unlock()
		wantBW := time.Since(old.MeasuredAt) > bandwidthEvery(p.BandwidthEvery, p.BurstFor, len(peers))
		if _, err := p.Measure(ctx, peer, wantBW); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", peer.Name, err))
		}
	}
	return errors.Join(errs...)
}

// All measures every link of this host now, bandwidth included. Hosts
// asked at once take turns, by their place in the sorted list of hosts:
// bandwidth probes running together would share the machines' links and
// CPUs and each measure less.
func (p *Prober) All(ctx context.Context) error {
	p.mu.Lock()
	p.defaults()
	p.mu.Unlock()
	nodes, err := p.St.ListNodes(ctx)
	if err != nil {
		return err
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	turn := slices.IndexFunc(nodes, func(n api.Node) bool { return n.Name == p.Node })
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Duration(max(turn, 0)) * time.Duration(len(nodes)-1) * (p.BurstFor + 500*time.Millisecond)):
	}
	var errs []error
	for _, n := range nodes {
		if n.Name != p.Node && n.API != "" {
			if _, err := p.Measure(ctx, n, true); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// One measures the link to one peer now, bandwidth included.
func (p *Prober) One(ctx context.Context, peer string) error {
	nodes, err := p.St.ListNodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.Name == peer && n.API != "" {
			_, err := p.Measure(ctx, n, true)
			return err
		}
	}
	return fmt.Errorf("host %s is not in the cluster or does not say where it serves", peer)
}

// Measure probes one peer now (its bandwidth too if asked), judges the
// link's health over its recent probes, records the result when it
// changed noticeably or is getting old, says so in an event when the link
// became degraded or healthy again, and returns it.
func (p *Prober) Measure(ctx context.Context, peer api.Node, bandwidth bool) (api.LinkStat, error) {
	p.mu.Lock()
	p.defaults()
	old := p.known[peer.Name]
	p.mu.Unlock()
	cur := old
	cur.From, cur.To = p.Node, peer.Name
	ps, err := p.probeRound(ctx, peer.API)
	if err != nil {
		return cur, err
	}
	now := time.Now().UTC()
	p.mu.Lock()
	h := p.health[peer.Name]
	if h == nil {
		h = &health{}
		p.health[peer.Name] = h
	}
	changed := h.add(ps, now)
	f := h.figures()
	cur.Degraded, cur.Why, cur.DegradedSince = h.degraded, h.why, h.since
	p.mu.Unlock()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	if f.rtt > 0 {
		cur.RTTMS = ms(f.rtt)
	}
	cur.RTTAt, cur.JitterMS, cur.BaselineRTTMS, cur.LossPct, cur.Samples = now, ms(f.jitter), ms(f.baseline), f.lossPct, f.samples
	if bandwidth && !cur.Degraded {
		if cur.Bandwidth, err = p.bandwidth(ctx, peer.API); err != nil {
			return cur, err
		}
		cur.MeasuredAt = time.Now().UTC()
	}
	p.mu.Lock()
	p.known[peer.Name] = cur
	p.mu.Unlock()
	if changed {
		p.tell(ctx, cur)
	}
	if changed || bandwidth || old.RTTAt.IsZero() || moved(old.RTTMS, cur.RTTMS, 0.5) || math.Abs(old.LossPct-cur.LossPct) >= 0.5 ||
		time.Since(old.RTTAt) > 5*time.Minute {
		if err := p.St.PutLinkStat(ctx, cur); err != nil {
			return cur, err
		}
	}
	return cur, nil
}

// tell records that a link became degraded or healthy again.
func (p *Prober) tell(ctx context.Context, l api.LinkStat) {
	ev := api.Event{Kind: "link-recovered", Node: l.From,
		Message: fmt.Sprintf("link %s → %s is healthy again: round trip %.1f ms, %.1f %% loss", l.From, l.To, l.RTTMS, l.LossPct)}
	if l.Degraded {
		ev = api.Event{Kind: "link-degraded", Node: l.From,
			Message: fmt.Sprintf("link %s → %s is degraded: %s; no guest moves over it while another host can take it", l.From, l.To, l.Why)}
		p.Log.Warn("link degraded", "to", l.To, "why", l.Why)
	} else {
		p.Log.Info("link healthy again", "to", l.To)
	}
	if err := p.St.PutEvent(ctx, ev); err != nil {
		p.Log.Warn("recording event", "kind", ev.Kind, "err", err)
	}
}

// probeRound makes probesPerRound TCP handshakes with the peer's API port,
// probeGap apart: one round trip each, answered by the peer's kernel (an
// HTTP request would add the API's own work). A handshake not answered
// within probeTimeout is lost; a peer that refuses (its API is down) is an
// error, not a lossy link.
func (p *Prober) probeRound(ctx context.Context, addr string) ([]probe, error) {
	var d net.Dialer
	var out []probe
	var refused error
	for i := 0; i < probesPerRound; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(probeGap):
			}
		}
		dctx, cancel := context.WithTimeout(ctx, probeTimeout)
		t0 := time.Now()
		c, err := d.DialContext(dctx, "tcp", addr)
		took := time.Since(t0)
		cancel()
		switch {
		case err == nil:
			c.Close()
			out = append(out, probe{rtt: took})
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
			out = append(out, probe{lost: true})
		default:
			refused = err
		}
	}
	if len(out) == 0 {
		return nil, refused
	}
	return out, nil
}

// isTimeout reports whether a dial ran out of time.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bandwidth streams zeros to the peer for BurstFor and returns the rate
// the peer counted over the stream's second half.
func (p *Prober) bandwidth(ctx context.Context, addr string) (float64, error) {
	rctx, cancel := context.WithTimeout(ctx, p.BurstFor+30*time.Second)
	defer cancel()
	body := &timedZeros{until: time.Now().Add(p.BurstFor)}
	req, _ := http.NewRequestWithContext(rctx, "POST", "https://"+addr+"/v1/linkprobe", body)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := p.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("bandwidth probe answered %s", resp.Status)
	}
	var r struct {
		Rate float64 `json:"rate"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	return r.Rate, nil
}

// maxBurstShare is the most of its time a host spends streaming bandwidth
// probes: a burst fills the link for BurstFor, so with many peers each
// one's bandwidth is measured less often.
const maxBurstShare = 0.01

// bandwidthEvery is how old a link's bandwidth may grow before it is
// measured again: every, or longer where the host's peers' bursts would
// otherwise take more than maxBurstShare of its time (with 100 peers and
// 1 s bursts: every 2.8 hours instead of 16.5 % of the time streaming).
func bandwidthEvery(every, burst time.Duration, peers int) time.Duration {
	return max(every, time.Duration(float64(peers)*float64(burst)/maxBurstShare))
}

// timedZeros reads as zeros until a moment.
type timedZeros struct{ until time.Time }

func (z *timedZeros) Read(b []byte) (int, error) {
	if time.Now().After(z.until) {
		return 0, io.EOF
	}
	clear(b)
	return len(b), nil
}

// moved: by more than share of the larger.
func moved(a, b, share float64) bool {
	return math.Abs(a-b) > share*math.Max(math.Abs(a), math.Abs(b))
}
