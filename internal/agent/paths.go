package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/paths"
)

// newPaths builds the monitor of this host's underlay paths when it has
// them (Config.Paths): it keeps the multipath route to every other host's
// address over the paths that answer, and records each path that goes
// down or comes back as an event.
func (a *Agent) newPaths() error {
	if len(a.cfg.Paths) == 0 {
		return nil
	}
	svc, err := netip.ParseAddr(a.cfg.Address)
	if err != nil {
		return fmt.Errorf("agent: underlay paths need the host's address: %q: %w", a.cfg.Address, err)
	}
	if err := paths.HashByPorts(); err != nil {
		return fmt.Errorf("agent: spreading connections over the paths by port: %w", err)
	}
	m, err := paths.New(paths.Config{Local: a.cfg.Paths, Service: svc, Router: paths.NetlinkRouter{}, Log: a.log,
		OnChange: a.pathChanged})
	if err != nil {
		return err
	}
	m.SetPeers(a.cfg.PathPeers)
	a.paths = m
	return nil
}

// pathChanged records a path going down or coming back.
func (a *Agent) pathChanged(c paths.Change) {
	kind, msg := "path-down", fmt.Sprintf("path from %s to %s over %s (%s) down: %s; traffic to %s goes over its other paths", a.cfg.Node, c.Peer, c.Dev, c.Via, c.Why, c.Peer)
	if c.Up {
		kind, msg = "path-up", fmt.Sprintf("path from %s to %s over %s (%s) back: %s", a.cfg.Node, c.Peer, c.Dev, c.Via, c.Why)
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.event(ctx, api.Event{Kind: kind, Node: a.cfg.Node, Message: msg})
	}()
}

// setPathPeers gives the path monitor the cluster's other hosts (and the
// configured peers that are not Ferry's).
func (a *Agent) setPathPeers(nodes []api.Node) {
	if a.paths == nil {
		return
	}
	peers := append([]paths.Peer(nil), a.cfg.PathPeers...)
	for _, n := range nodes {
		svc, err := netip.ParseAddr(n.Address)
		if n.Name == a.cfg.Node || err != nil {
			continue
		}
		p := paths.Peer{Name: n.Name, Service: svc}
		for _, s := range n.Paths {
			if ad, err := netip.ParseAddr(s); err == nil {
				p.Paths = append(p.Paths, ad)
			}
		}
		peers = append(peers, p)
	}
	a.paths.SetPeers(peers)
}

// pathAddrs are this host's addresses on its paths, for its record.
func (a *Agent) pathAddrs() []string {
	var out []string
	for _, p := range a.cfg.Paths {
		out = append(out, p.Addr.Addr().String())
	}
	return out
}

// PathStates is every path to every other host as this host sees it (nil
// without paths).
func (a *Agent) PathStates() []paths.PathState {
	if a.paths == nil {
		return nil
	}
	return a.paths.State()
}

// pathsDown names the paths to other hosts that are down now, "PEER/DEV",
// for this host's record.
func (a *Agent) pathsDown() []string {
	if a.paths == nil {
		return nil
	}
	var out []string
	for _, s := range a.paths.State() {
		if !s.Up {
			out = append(out, s.Peer+"/"+s.Dev)
		}
	}
	return out
}
