// Package scale measures Ferry's control plane at scale: N simulated hosts —
// real agents, each with its own etcd client, lease, heartbeats, watch and
// campaign for leadership, on the simulated QEMU of package simqemu — against
// a real etcd, with the real API in front. It times API calls, the leader's
// rounds and a 50-guest host's death, and reads etcd's database size, write
// rate and the agents' CPU and memory. `ferry bench scale` runs it; a test
// at N = 50 asserts the restart bound.
package scale

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/simcluster"
	"github.com/ferryvm/ferry/internal/store"
)

// Config is one scale run.
type Config struct {
	Hosts         int // simulated hosts
	GuestsPerHost int // guests on every host but the victim
	VictimGuests  int // HA guests on the host that dies
	// Candidates is how many hosts campaign for leadership (0: all).
	Candidates int
	// LeaseTTL is every host's lease (0: ha.DefaultTiming's); the rest of
	// the fencing timing scales with it (ha.TimingFor).
	LeaseTTL time.Duration
	// Endpoints reach the etcd under test; EtcdPIDs are its processes
	// (their CPU is reported apart from the agents'; empty when etcd runs
	// in this process).
	Endpoints []string
	EtcdPIDs  []int
	Etcd      string        // what the etcd is, for the report
	Dir       string        // scratch space (short: sockets live under it)
	Samples   int           // API calls timed per kind
	Idle      time.Duration // the idle window CPU and write rate are read over
	// Progress, if set, is told what the run does.
	Progress func(string)
}

// Result is what a run measured. Times are milliseconds.
type Result struct {
	Hosts         int     `json:"hosts"`
	GuestsPerHost int     `json:"guests_per_host"`
	VMs           int     `json:"vms"`
	Etcd          string  `json:"etcd"`
	Candidates    int     `json:"leader_candidates"` // 0: every host
	LeaseTTLS     float64 `json:"lease_ttl_s"`
	CPUs          int     `json:"cpus"`
	StartupS      float64 `json:"startup_s"` // hosts up and every guest running
	// StartRetries counts agents started again because etcd did not
	// answer their first connection within its 10 s (as systemd would
	// restart a ferry agent that exits on it).
	StartRetries int `json:"start_retries,omitempty"`

	API         map[string]Latency `json:"api"`
	LeaderRound Latency            `json:"leader_round"`

	DBSizeBytes     int64   `json:"db_size_bytes"`
	DBInUseBytes    int64   `json:"db_in_use_bytes"`
	WritesPerSec    float64 `json:"writes_per_s"`               // store revisions per second while idle
	AgentCPUPercent float64 `json:"agent_cpu_percent"`          // idle CPU per agent, % of one core
	AgentsPer2Cores int     `json:"agents_per_2_cores"`         // how many such agents two cores hold
	AgentHeapKiB    float64 `json:"agent_heap_kib"`             // Go heap per agent
	EtcdCPUPercent  float64 `json:"etcd_cpu_percent,omitempty"` // etcd's idle CPU, % of one core
	Death           Death   `json:"host_death"`
	// Error says why the run ended early (the figures before it stand).
	Error string `json:"error,omitempty"`
}

// Latency summarises timed calls.
type Latency struct {
	N     int     `json:"n"`
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
}

// Death is a host's death under its HA guests.
type Death struct {
	Guests int `json:"guests"`
	// LeaseExpiredMS: from the kill to etcd expiring the host's lease.
	LeaseExpiredMS float64 `json:"lease_expired_ms"`
	// RestartsIssuedMS: from the lease expiring to the last guest placed
	// on a surviving host.
	RestartsIssuedMS float64 `json:"restarts_issued_ms"`
	// AllRunningMS: from the lease expiring to every guest running again.
	AllRunningMS float64 `json:"all_running_ms"`
}

// rounds collects the leader's round durations.
type rounds struct {
	mu sync.Mutex
	d  []time.Duration
}

func (r *rounds) add(d time.Duration) { r.mu.Lock(); r.d = append(r.d, d); r.mu.Unlock() }

func (r *rounds) take() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.d
	r.d = nil
	return d
}

// Run starts the hosts and guests, measures, and stops everything again.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Samples <= 0 {
		cfg.Samples = 100
	}
	if cfg.Idle <= 0 {
		cfg.Idle = 20 * time.Second
	}
	say := cfg.Progress
	if say == nil {
		say = func(string) {}
	}
	logf, err := os.Create(filepath.Join(cfg.Dir, "agents.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	log := slog.New(slog.NewTextHandler(io.Writer(logf), &slog.HandlerOptions{Level: slog.LevelWarn}))

	var rs rounds
	c, err := simcluster.New(simcluster.Config{Endpoints: cfg.Endpoints, Dir: cfg.Dir, ControlPlane: true, Candidates: cfg.Candidates, HA: ha.TimingFor(cfg.LeaseTTL),
		OnRound: rs.add, Log: log, MemoryMiB: 256 << 10, CPUs: 64})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st, err := store.Open(ctx, cfg.Endpoints, nil)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if err := st.SetSecurity(ctx, api.Security{PlaintextMigration: true}); err != nil {
		return nil, err
	}

	res := &Result{LeaseTTLS: ha.TimingFor(cfg.LeaseTTL).LeaseTTL.Seconds(), Candidates: cfg.Candidates, Hosts: cfg.Hosts, GuestsPerHost: cfg.GuestsPerHost, Etcd: cfg.Etcd, CPUs: runtime.NumCPU(), API: map[string]Latency{}}
	names := hostNames(cfg.Hosts)
	victim := names[len(names)-1]
	guests, err := startCluster(ctx, c, st, cfg, res, names, say)
	if err != nil {
		return res, err
	}
	say(fmt.Sprintf("%d guests run; idle for %s", res.VMs, cfg.Idle))
	time.Sleep(5 * time.Second) // let the start-up writes settle
	if err := measureIdle(ctx, st, cfg, res, &rs); err != nil {
		return res, err
	}

	say("timing API calls")
	if err := measureAPI(ctx, c, st, cfg, res, names, victim); err != nil {
		return res, err
	}

	say("killing " + victim)
	onVictim, err := placedOn(ctx, st, victim, guests[victim])
	if err != nil {
		return res, err
	}
	if len(onVictim) != len(guests[victim]) {
		return res, fmt.Errorf("only %d of %s's %d HA guests are still placed there before it dies; %s", len(onVictim), victim, len(guests[victim]), eventsOf(ctx, st, victim))
	}
	if res.Death, err = killHost(ctx, c, st, victim, onVictim); err != nil {
		return res, err
	}
	stats, err := st.Stats(ctx)
	if err != nil {
		return res, err
	}
	res.DBSizeBytes, res.DBInUseBytes = stats.DBSize, stats.DBSizeInUse
	return res, nil
}

// startCluster records the guests, starts the hosts and waits until every
// guest runs; it fills in the start-up time, the guest count and the heap
// per agent.
func startCluster(ctx context.Context, c *simcluster.Cluster, st *store.Store, cfg Config, res *Result, names []string, say func(string)) (map[string][]guest, error) {
	heap0 := heapInUse()
	start := time.Now()
	victim := names[len(names)-1]
	// The guests are recorded first, placed on their hosts (the leader's
	// scheduler would otherwise spread them its own way), and the hosts
	// then come up and start them: a whole cluster's start.
	say("creating guests")
	guests, err := populate(ctx, st, names, victim, cfg.GuestsPerHost, cfg.VictimGuests)
	if err != nil {
		return guests, err
	}
	say(fmt.Sprintf("starting %d hosts", cfg.Hosts))
	// The victim first: a host that is not up yet when the leader looks
	// counts as lost, and its HA guests would start elsewhere before the
	// run kills it.
	order := append([]string{victim}, names[:len(names)-1]...)
	if res.StartRetries, err = startHosts(ctx, c, st, order, say); err != nil {
		return guests, err
	}
	for _, gs := range guests {
		res.VMs += len(gs)
	}
	if err := waitRunning(ctx, c, res.VMs, 10*time.Minute); err != nil {
		return guests, err
	}
	res.StartupS = time.Since(start).Seconds()
	res.AgentHeapKiB = float64(heapInUse()-heap0) / 1024 / float64(cfg.Hosts)
	return guests, nil
}

// eventsOf tells what the store's events say about host: why its guests
// may have moved before the run meant them to.
func eventsOf(ctx context.Context, st *store.Store, host string) string {
	evs, err := st.ListEvents(ctx, 0)
	if err != nil {
		return "its events could not be read: " + err.Error()
	}
	var out []string
	for _, ev := range evs {
		if ev.Node == host {
			out = append(out, fmt.Sprintf("%s %s %s: %s", ev.Time.Format("15:04:05.000"), ev.Kind, ev.VM, ev.Message))
		}
	}
	if len(out) == 0 {
		return "no event names it"
	}
	if len(out) > 12 {
		out = append(out[:12], fmt.Sprintf("and %d more", len(out)-12))
	}
	return "its events: " + strings.Join(out, "; ")
}

func hostNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("h%04d", i+1)
	}
	return out
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
