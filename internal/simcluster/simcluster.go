// Package simcluster runs Ferry's control plane on simulated hosts in one
// process: each host is a real agent — its own etcd client, lease,
// heartbeats, liveness beats and watch — and, where asked, the control
// plane every host runs (the leader's controllers), on a simulated QEMU
// (package simqemu). The agent's unit tests and `ferry bench scale` use it.
package simcluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/daemon"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/predict"
	"github.com/ferryvm/ferry/internal/promhist"
	"github.com/ferryvm/ferry/internal/simqemu"
	"github.com/ferryvm/ferry/internal/store"
)

// Config describes a simulated cluster.
type Config struct {
	// Endpoints and TLS reach the cluster's etcd.
	Endpoints []string
	TLS       *tls.Config
	// Dir holds the hosts' data (keep it short: sockets live under it).
	Dir string
	// HA is every host's fencing timing (zero: ha.DefaultTiming).
	HA ha.Timing
	// ControlPlane: every host also campaigns for leadership and runs the
	// controllers while it leads, as `ferry agent` does.
	ControlPlane bool
	// Candidates, when ControlPlane is set, is how many hosts campaign
	// (the first to start; 0: all), as `ferry agent --no-leader` on the
	// rest would make it.
	Candidates int
	// OnRound is told each leader round's duration.
	OnRound func(time.Duration)
	// MemoryMiB and CPUs are what each host reports (default 64 GiB, 16).
	MemoryMiB, CPUs int
	// Partitions: each host reaches etcd through a proxy of its own, so
	// that Host.CutEtcd can cut it off.
	Partitions bool
	// NoWatchdog: the agents run without a watchdog (they refuse HA
	// guests); Host.Watchdog is still made but never fed.
	NoWatchdog bool
	// MigrationStall is the agents' agent.Config.MigrationStall.
	MigrationStall time.Duration
	// MigrationCredentials: each host gets migration credentials from a
	// migration CA of the cluster's own, so that migrations the
	// controllers start with the defaults (TLS) can run, as a drain's do.
	MigrationCredentials bool
	// HealthEvery, Risk and RiskThreshold are the agents' health
	// sampling and failure forecast (agent.Config's fields); each host
	// reads its signals under a directory of its own, Host.HealthRoot.
	HealthEvery   time.Duration
	Risk          predict.RiskConfig
	RiskThreshold float64
	// LoadEvery, LoadPeriod and LoadHorizon are the agents' CPU sampling
	// and forecast (agent.Config's fields; LoadEvery 0 samples never
	// here, unlike an agent's default); CapacityCPUs what each host's
	// guests may use (0: CPUs).
	LoadEvery, LoadPeriod, LoadHorizon time.Duration
	CapacityCPUs                       float64
	LoadSource                         *promhist.Source // agent.Config.LoadSource
	// Balance is the balancer's configuration on the hosts that lead.
	Balance balance.Config
	Log     *slog.Logger
}

// Cluster is a set of simulated hosts sharing one World.
type Cluster struct {
	cfg   Config
	World *simqemu.World
	image string

	mu         sync.Mutex
	hosts      map[string]*Host
	candidates int // hosts that campaign
}

// New prepares a cluster; Start adds hosts to it.
func New(cfg Config) (*Cluster, error) {
	if cfg.HA == (ha.Timing{}) {
		cfg.HA = ha.DefaultTiming()
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 64 << 10
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 16
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	img := filepath.Join(cfg.Dir, "images")
	if err := simqemu.WriteImage(img); err != nil {
		return nil, err
	}
	return &Cluster{cfg: cfg, World: simqemu.NewWorld(), image: img, hosts: map[string]*Host{}}, nil
}

// Host is one simulated host.
type Host struct {
	Name     string
	Runtime  *simqemu.Runtime
	Watchdog *simqemu.Watchdog
	// Store is the host's own etcd client.
	Store *store.Store
	Agent *agent.Agent

	c         *Cluster
	candidate bool // campaigns for leadership
	proxies   []*proxy
	cancel    context.CancelFunc
	done      chan struct{}
	err       error
}

// Start starts host name's agent (again, if it ran before: it re-attaches
// to the guests that outlived it).
func (c *Cluster) Start(ctx context.Context, name string) (*Host, error) {
	c.mu.Lock()
	h := c.hosts[name]
	c.mu.Unlock()
	if h != nil && h.running() {
		return nil, fmt.Errorf("host %s already runs", name)
	}
	if h == nil {
		rt := c.World.Runtime(name)
		h = &Host{Name: name, Runtime: rt, Watchdog: rt.Watchdog(), c: c}
	}
	endpoints := c.cfg.Endpoints
	if c.cfg.Partitions {
		if h.proxies == nil {
			for _, ep := range c.cfg.Endpoints {
				p, _, err := newProxy(ep)
				if err != nil {
					return nil, err
				}
				h.proxies = append(h.proxies, p)
			}
		}
		endpoints = nil
		for _, p := range h.proxies {
			endpoints = append(endpoints, "http://"+p.ln.Addr().String())
		}
	}
	st, err := store.Open(ctx, endpoints, c.cfg.TLS)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.cfg.Dir, name)
	var wd agent.Watchdog = h.Watchdog
	if c.cfg.NoWatchdog {
		wd = nil
	}
	loadEvery := c.cfg.LoadEvery
	if loadEvery == 0 {
		loadEvery = -1
	}
	migDir, err := c.migrationCredentials(dir, name)
	if err != nil {
		st.Close()
		return nil, err
	}
	ag, err := agent.New(agent.Config{
		Node: name, Address: "127.0.0.1", DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run"),
		StorageDir: filepath.Join(dir, "storage"), ImageDir: c.image, Accel: "tcg", QEMU: c.World.Info(),
		HA: c.cfg.HA, Watchdog: wd, Runtime: h.Runtime, Log: c.cfg.Log.With("host", name),
		CPUs: c.cfg.CPUs, MemoryMiB: c.cfg.MemoryMiB, MigrationStall: c.cfg.MigrationStall,
		FailpointFile: h.failpoints(), MigrationTLSDir: migDir,
		HealthRoot: h.HealthRoot(), HealthEvery: c.cfg.HealthEvery, Risk: c.cfg.Risk, RiskThreshold: c.cfg.RiskThreshold,
		LoadEvery: loadEvery, LoadPeriod: c.cfg.LoadPeriod, LoadHorizon: c.cfg.LoadHorizon, CapacityCPUs: c.cfg.CapacityCPUs, LoadSource: c.cfg.LoadSource,
	}, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.Store, h.Agent, h.cancel, h.done, h.err = st, ag, cancel, make(chan struct{}), nil
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if h.err = ag.Run(actx); h.err != nil {
			c.cfg.Log.Error("agent ended", "host", name, "err", h.err)
		}
	}()
	c.mu.Lock()
	candidate := c.cfg.ControlPlane && (c.cfg.Candidates == 0 || c.candidates < c.cfg.Candidates || h.candidate)
	if candidate && !h.candidate {
		h.candidate = true
		c.candidates++
	}
	c.mu.Unlock()
	if candidate {
		wg.Add(1)
		go func() {
			defer wg.Done()
			daemon.RunControlPlane(actx, st, daemon.ControlPlane{Node: name, HA: c.cfg.HA, Balance: c.cfg.Balance, Log: c.cfg.Log.With("host", name), OnRound: c.cfg.OnRound})
		}()
	}
	go func() { wg.Wait(); st.Close(); close(h.done) }()
	c.mu.Lock()
	c.hosts[name] = h
	c.mu.Unlock()
	return h, nil
}

// Host returns a host by name (nil if it never started).
func (c *Cluster) Host(name string) *Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hosts[name]
}

// Hosts returns every host that ever started.
func (c *Cluster) Hosts() []*Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Host, 0, len(c.hosts))
	for _, h := range c.hosts {
		out = append(out, h)
	}
	return out
}

func (h *Host) running() bool {
	if h.done == nil {
		return false
	}
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

// Stop stops the host's agent and waits for it; the guests keep running
// (an agent restart or upgrade).
func (h *Host) Stop() error {
	if h.cancel == nil {
		return nil
	}
	h.cancel()
	<-h.done
	return h.err
}

// Kill is the host's death: its agent stops at once, its guests die with
// it, and its lease runs out in etcd.
func (h *Host) Kill() {
	h.Watchdog.Disarm()
	h.Stop() // first: a dead host reports nothing about its guests' end
	for _, p := range h.c.World.All() {
		if p.Host == h.Name {
			p.Crash()
		}
	}
}

func (h *Host) failpoints() string { return filepath.Join(h.c.cfg.Dir, h.Name, "failpoints") }

// migrationCredentials issues host name's migration credentials under its
// directory when the cluster gives hosts some, and returns where they are
// ("" for none).
func (c *Cluster) migrationCredentials(dir, name string) (string, error) {
	if !c.cfg.MigrationCredentials {
		return "", nil
	}
	ca, err := pki.EnsureMigrationCA(filepath.Join(c.cfg.Dir, "migration-ca"))
	if err != nil {
		return "", err
	}
	if err := ca.EnsureMigration(dir, name, []string{"127.0.0.1"}); err != nil {
		return "", err
	}
	return filepath.Join(dir, pki.MigrationDir), nil
}

// HealthRoot is the directory the host reads its health signals under: a
// test writes traces there in the layout of /sys (package health).
func (h *Host) HealthRoot() string { return filepath.Join(h.c.cfg.Dir, h.Name, "health") }

// Arm makes the host's agent wait d at a failpoint (package failpoint);
// d = 0 disarms it.
func (h *Host) Arm(point string, d time.Duration) error {
	text := ""
	if d > 0 {
		text = fmt.Sprintf("%s %s\n", point, d)
	}
	return os.WriteFile(h.failpoints(), []byte(text), 0o644)
}

// CutEtcd cuts the host off etcd (true) or heals the cut (false); the
// cluster must have been made with Partitions.
func (h *Host) CutEtcd(cut bool) {
	for _, p := range h.proxies {
		p.setCut(cut)
	}
}

// Close stops every host and kills every simulated guest.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, h := range c.Hosts() {
		wg.Add(1)
		go func() { defer wg.Done(); h.Watchdog.Disarm(); h.Stop() }()
	}
	wg.Wait()
	for _, p := range c.World.All() {
		p.Crash()
	}
	for _, h := range c.Hosts() {
		for _, p := range h.proxies {
			p.close()
		}
	}
}
