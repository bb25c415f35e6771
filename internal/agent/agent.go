// Package agent is the per-host reconciler: it watches the store for the VMs
// placed on its host, drives QEMU towards their desired state, re-attaches to
// guests that outlived a previous agent, and writes what it observes back.
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/health"
	"github.com/ferryvm/ferry/internal/hostnet"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/paths"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/predict"
	"github.com/ferryvm/ferry/internal/promhist"
	"github.com/ferryvm/ferry/internal/store"
)

// Config is the agent's view of its host.
type Config struct {
	Node       string // this host's name
	Address    string // this host's address as other hosts see it
	DataDir    string // per-VM state (logs, runtime records) under DataDir/vms
	RunDir     string // QMP and console sockets; keep it short (107-byte socket paths)
	StorageDir string // VM disks
	ImageDir   string // built-in images
	Accel      string // kvm or tcg (already resolved)
	CPUModel   string
	// QEMU is what this host's QEMU binary can do (qemu.Probe), reported
	// with the node; migrations and placement decide by it.
	QEMU *api.QEMUInfo
	// GuestHostAddr is the host address on which user-mode guests' port 80 is
	// forwarded (loopback).
	GuestHostAddr string
	// HA is the fencing timing (lease, renewals, self-fence and watchdog
	// deadlines); zero means ha.DefaultTiming. New refuses unsafe timing.
	HA ha.Timing
	// WatchdogCmd starts this host's watchdog process (see ha.Watchdog);
	// the agent appends "--socket PATH". Empty: HA guests cannot start.
	WatchdogCmd []string
	// Watchdog, if set, is used instead of starting WatchdogCmd (a
	// simulated host's).
	Watchdog Watchdog
	// FailpointFile arms fault-injection points (package failpoint); the
	// fault suite writes it, nothing else should.
	FailpointFile string
	// MigrationTLSDir holds this host's migration credentials in QEMU's
	// layout (pki.IssueMigration); migrations are TLS unless the cluster
	// allowed one in plaintext.
	MigrationTLSDir string
	// CRLFile is where the cluster CA's revocation list is kept for the
	// embedded etcd (DER); the migration CA's goes to
	// MigrationTLSDir/ca-crl.pem for QEMU. Both follow the store.
	CRLFile string
	// CertSerials are this host's certificates (hex serials), reported in
	// its node record; when one is revoked the host was removed and the
	// agent stops.
	CertSerials []string
	Log         *slog.Logger
	// Runtime runs the guests; nil is the real host's (HostRuntime).
	Runtime Runtime
	// MigrationStall ends an outgoing pre-copy migration that makes no
	// progress for this long (0: DefaultMigrationStall).
	MigrationStall time.Duration
	// CPUs and MemoryMiB are the capacity the host reports; zero is the
	// machine's own (a simulated host says what it simulates).
	CPUs, MemoryMiB int
	// Overlay, if set, puts guests on tap devices bridged into the VXLAN
	// overlay; otherwise guests use QEMU's user-mode network.
	Overlay *hostnet.Overlay
	// OverlayPeers are extra underlay addresses (not Ferry hosts, e.g. a
	// gateway or test client) that join the overlay.
	OverlayPeers []net.IP
	// Paths are this host's underlay paths, one per fabric (devices and
	// their addresses), when it has several: other hosts reach its
	// Address over all that are healthy (package paths). PathPeers are
	// hosts that are not Ferry's (a gateway, a test client) on the same
	// fabrics.
	Paths     []paths.Local
	PathPeers []paths.Peer
	// APIAddress is where this host serves the API (host:port), for the
	// other hosts' link probes.
	APIAddress string
	// MeasureEvery is how often each guest's memory use is measured (0:
	// DefaultMeasureEvery; negative: never).
	MeasureEvery time.Duration
	// HealthRoot is the directory the host's health signals are read
	// under ("/" when empty; the testbed gives each host one of its own
	// to feed traces through). HealthEvery is how often they are read (0:
	// DefaultHealthEvery; negative: never).
	HealthRoot  string
	HealthEvery time.Duration
	// Risk tunes the failure risk model; RiskThreshold is the probability
	// of failing within its horizon at which the host reports itself at
	// risk (0: DefaultRiskThreshold).
	Risk          predict.RiskConfig
	RiskThreshold float64
	// LoadEvery is how often the guests' CPU use is sampled (0:
	// DefaultLoadEvery; negative: never); LoadPeriod is its season
	// (DefaultLoadPeriod: a day) and LoadHorizon how far ahead it is
	// forecast. CapacityCPUs is how many CPUs the guests may use (0: CPUs).
	LoadEvery, LoadPeriod, LoadHorizon time.Duration
	CapacityCPUs                       float64
	// GuestCgroup, if set, is a cgroup directory every guest's QEMU is
	// moved into when it starts (a host that caps what its guests use).
	GuestCgroup string
	// LoadSource, if set, is a Prometheus server the guests' CPU
	// histories are read from (it scrapes every host's
	// ferry_guest_cpu_seconds_total); nil: the agents keep them in the
	// store.
	LoadSource *promhist.Source
}

// Agent reconciles one host.
type Agent struct {
	cfg Config
	st  *store.Store
	rt  Runtime
	log *slog.Logger
	lk  *store.HostLease
	wd  Watchdog

	fmu       sync.Mutex
	fenced    bool   // HA guests were fenced in the current outage
	fenceWhy  string // what to record as an event once etcd answers again
	aliveAt   time.Time
	aliveBusy bool

	mu       sync.Mutex
	vms      map[string]*instance
	incoming map[string]*instance // target QEMUs of migrations not yet switched over
	// traffic splits the underlay's traffic by class for the heartbeat.
	traffic *trafficMeter
	// paths watches this host's underlay paths (nil with one or none).
	paths *paths.Monitor
	// phases is the phase this host last reported for each guest placed
	// here (for metrics), guarded by mu.
	phases map[string]string

	queue    *queue
	launches *launchHealth
	health   *health.Self  // the signals the agent observes in its own work
	risk     *api.HostRisk // the last assessment, guarded by mu
	load     *api.HostLoad // the last load sampling, guarded by mu
	stopRun  context.CancelFunc
	removed  atomic.Bool
	serials  atomic.Pointer[[]string] // this host's certificates; renewals change them
}

// New creates an agent; Run starts it.
func New(cfg Config, st *store.Store) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.HA == (ha.Timing{}) {
		cfg.HA = ha.DefaultTiming()
	}
	if err := cfg.HA.Check(); err != nil {
		return nil, fmt.Errorf("agent: unsafe HA timing: %w", err)
	}
	if cfg.QEMU == nil {
		return nil, fmt.Errorf("agent: no QEMU information (qemu.Probe)")
	}
	if cfg.MigrationStall <= 0 {
		cfg.MigrationStall = DefaultMigrationStall
	}
	if cfg.GuestHostAddr == "" {
		cfg.GuestHostAddr = "127.0.0.1"
	}
	for _, d := range []string{filepath.Join(cfg.DataDir, "vms"), cfg.RunDir, cfg.StorageDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	if cfg.Runtime == nil {
		cfg.Runtime = HostRuntime()
	}
	a := &Agent{cfg: cfg, st: st, rt: cfg.Runtime, log: cfg.Log.With("node", cfg.Node), vms: map[string]*instance{}, incoming: map[string]*instance{}, phases: map[string]string{}, queue: newQueue(), launches: newLaunchHealth(), health: &health.Self{}, traffic: newTrafficMeter()}
	a.serials.Store(&cfg.CertSerials)
	if err := a.newPaths(); err != nil {
		return nil, err
	}
	a.lk = st.HostLease(store.LeaseTiming{TTL: cfg.HA.LeaseTTL, Renew: cfg.HA.Renew, RenewTimeout: cfg.HA.RenewTimeout},
		filepath.Join(cfg.DataDir, "lease"))
	if cfg.Watchdog != nil {
		a.wd = cfg.Watchdog
	} else if len(cfg.WatchdogCmd) > 0 {
		sock := filepath.Join(cfg.RunDir, "watchdog.sock")
		a.wd = ha.NewWatchdogClient(sock, filepath.Join(cfg.DataDir, "watchdog.log"),
			append(append([]string(nil), cfg.WatchdogCmd...), "--socket", sock), a.log)
	}
	return a, nil
}

// Run reconciles until ctx ends. Guests keep running when it returns: the
// next agent re-attaches to them.
func (a *Agent) Run(ctx context.Context) error {
	// The lease is not revoked on the way out: ownership keys bound to it
	// must outlive a quick agent restart, and the next agent adopts it.
	adopted, err := a.lk.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("agent: lease: %w", err)
	}
	a.log.Info("node lease", "lease", fmt.Sprintf("%x", a.lk.ID()), "adopted", adopted, "ttl", a.cfg.HA.LeaseTTL)
	if a.wd != nil {
		defer a.wd.Close() // the watchdog stays armed: a next agent feeds it
	}

	if a.cfg.Overlay != nil {
		if err := a.cfg.Overlay.Ensure(); err != nil {
			return fmt.Errorf("agent: guest network: %w", err)
		}
	}
	if a.paths != nil {
		// Before the lease: the paths carry the store's traffic too.
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		done := make(chan error, 1)
		go func() { done <- a.paths.Run(pctx) }()
		defer func() { stop(); <-done }()
	}
	a.reattach(ctx)
	if err := a.heartbeat(ctx); err != nil {
		// The lease may have run out while this host started (etcd
		// overloaded): take a new one rather than give up.
		a.log.Warn("first heartbeat", "err", err)
		if err := a.newLease(ctx); err != nil {
			return err
		}
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.stopRun = cancel
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); a.worker(ctx) }()
	}
	wg.Add(9)
	go func() { defer wg.Done(); a.leaseLoop(ctx) }()
	go func() { defer wg.Done(); a.healthLoop(ctx) }()
	go func() { defer wg.Done(); a.loadLoop(ctx) }()
	go func() { defer wg.Done(); a.fenceLoop(ctx) }()
	go func() { defer wg.Done(); a.overlayLoop(ctx) }()
	go func() { defer wg.Done(); a.heartbeatLoop(ctx) }()
	go func() { defer wg.Done(); a.probeLoop(ctx) }()
	go func() { defer wg.Done(); a.measureLoop(ctx) }()
	go func() { defer wg.Done(); a.watch(ctx) }()
	a.log.Info("agent running", "accel", a.cfg.Accel)
	<-ctx.Done()
	a.queue.close()
	wg.Wait()
	a.mu.Lock()
	for _, in := range a.vms {
		in.detach()
	}
	for _, in := range a.incoming {
		in.detach()
	}
	a.mu.Unlock()
	return nil
}

// resyncEvery is how often an agent re-reads its range as a safety net
// for anything a watch missed: each resync reconciles every local guest
// (two reads each), the largest part of an idle agent's load on etcd.
const resyncEvery = 15 * time.Second

// watch turns store changes into reconcile requests, with a periodic resync
// as a safety net for anything a watch could miss.
func (a *Agent) watch(ctx context.Context) {
	// Before the first resync reads this host's range; the lease is kept
	// alive meanwhile.
	if err := a.st.IndexPlacements(ctx); err != nil {
		// Not fatal: this host's own guests are queued by every resync.
		a.log.Warn("indexing the hosts' ranges of VMs (the next agent to start tries again)", "err", err)
	}
	resync := time.NewTicker(resyncEvery)
	defer resync.Stop()
	for ctx.Err() == nil {
		rev := a.resync(ctx)
		a.syncCRLs(ctx)
		wctx, cancel := context.WithCancel(ctx)
		wc := a.st.WatchHost(wctx, rev+1, a.cfg.Node, store.KindPKI, store.KindRevoked)
		a.follow(ctx, wc, resync.C)
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// follow handles the changes of one watch until it ends.
func (a *Agent) follow(ctx context.Context, wc <-chan store.Change, resync <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-resync:
			a.resync(ctx)
		case c, ok := <-wc:
			if !ok {
				return
			}
			switch c.Kind {
			case store.KindPKI:
				a.syncCRLs(ctx)
			case store.KindRevoked:
				if slices.Contains(a.certSerials(), c.Name) && removal(c.Value) {
					a.leave("this host's certificate was revoked: it was removed from the cluster; stopping")
				}
			default: // a VM in this host's range
				a.queue.add(c.Name)
			}
		}
	}
}

// resync queues every VM in this host's range (placed here, or migrating
// to or from here) and every local guest; it returns the store revision it
// read at.
func (a *Agent) resync(ctx context.Context) int64 {
	vms, rev, err := a.st.HostVMs(ctx, a.cfg.Node)
	if err != nil {
		if a.refused(err) {
			// The revocation can reach etcd before its record reaches
			// this host's watch: etcd then ends the watch first.
			a.leave("etcd refuses this host's certificate as revoked: it was removed from the cluster; stopping", "err", err)
			return 0
		}
		a.log.Warn("resync", "err", err)
		return 0
	}
	for _, vm := range vms {
		a.queue.add(vm)
	}
	a.mu.Lock()
	for n := range a.vms {
		a.queue.add(n)
	}
	for n := range a.incoming {
		a.queue.add(n)
	}
	a.mu.Unlock()
	return rev
}

func (a *Agent) worker(ctx context.Context) {
	for {
		name, ok := a.queue.get()
		if !ok {
			return
		}
		if err := a.reconcile(ctx, name); err != nil && ctx.Err() == nil {
			a.log.Warn("reconcile", "vm", name, "err", err)
			// Try again shortly; transient store errors heal themselves.
			time.AfterFunc(2*time.Second, func() { a.queue.add(name) })
		}
		a.queue.done(name)
	}
}

func (a *Agent) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := a.heartbeat(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("heartbeat", "err", err)
			}
		}
	}
}

func (a *Agent) heartbeat(ctx context.Context) error {
	n := api.Node{
		Name:        a.cfg.Node,
		State:       "ready",
		Address:     a.cfg.Address,
		API:         a.cfg.APIAddress,
		CPUs:        a.cfg.CPUs,
		MemoryMiB:   a.cfg.MemoryMiB,
		Accel:       a.cfg.Accel,
		QEMUVersion: a.cfg.QEMU.Version,
		QEMU:        a.cfg.QEMU,
		Images:      []string{},
		Load1:       load1(),
		Paths:       a.pathAddrs(),
		PathsDown:   a.pathsDown(),
		Heartbeat:   time.Now().UTC(),
		CertSerials: a.certSerials(),
	}
	if n.CPUs == 0 {
		n.CPUs = runtime.NumCPU()
	}
	if n.MemoryMiB == 0 {
		n.MemoryMiB = memTotalMiB()
	}
	if _, err := image.Find(a.cfg.ImageDir); err == nil {
		n.Images = append(n.Images, api.ImageTiny)
	}
	n.Degraded = a.selfCheck()
	if a.cfg.Overlay != nil {
		if t, err := a.cfg.Overlay.Traffic(); err == nil {
			n.Traffic = a.traffic.rates(t, time.Now())
		}
	}
	a.mu.Lock()
	for _, in := range a.vms {
		n.VMs++
		n.UsedMiB += in.memoryMiB
	}
	n.Risk, n.Load = a.risk, a.load
	a.mu.Unlock()
	return a.st.PutNode(ctx, n, a.lk.ID())
}

// MinFreeStorageMiB is the free space below which the guests' storage
// counts as nearly full and the host reports itself degraded.
const MinFreeStorageMiB = 256

// selfCheck is the agent's own health checks: what it finds wrong makes the
// host degraded, and the HA manager drains it while it still works.
func (a *Agent) selfCheck() []string {
	var out []string
	var fs syscall.Statfs_t
	if err := syscall.Statfs(a.cfg.StorageDir, &fs); err != nil {
		out = append(out, "guest storage unreadable: "+err.Error())
	} else if free := int64(fs.Bavail) * fs.Bsize >> 20; free < MinFreeStorageMiB {
		out = append(out, fmt.Sprintf("guest storage %s has only %d MiB free", a.cfg.StorageDir, free))
	}
	if a.cfg.Overlay != nil {
		if err := a.cfg.Overlay.Check(); err != nil {
			out = append(out, err.Error())
		}
	}
	if p := a.launches.problem(time.Now()); p != "" {
		out = append(out, p)
	}
	return out
}

func memTotalMiB() int {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.Atoi(f[1])
			return kb / 1024
		}
	}
	return 0
}

func load1() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// ConsoleLog returns the path of a local guest's console log, for the API.
func (a *Agent) ConsoleLog(name string) string {
	return filepath.Join(a.vmDir(name), "console.log")
}

// LeaseAge is how long ago etcd last accepted a renewal of this host's
// lease.
func (a *Agent) LeaseAge() time.Duration { return a.lk.SinceOK() }

// Node is this agent's host name.
func (a *Agent) Node() string { return a.cfg.Node }

func (a *Agent) vmDir(name string) string { return filepath.Join(a.cfg.DataDir, "vms", name) }

// overlayLoop keeps the VXLAN flood list equal to the cluster's hosts (plus
// static peers): new hosts join the overlay, gone hosts leave it.
func (a *Agent) overlayLoop(ctx context.Context) {
	if a.cfg.Overlay == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		nodes, err := a.st.ListNodes(ctx)
		if err == nil {
			a.setPathPeers(nodes)
			peers := append([]net.IP(nil), a.cfg.OverlayPeers...)
			for _, n := range nodes {
				if ip := net.ParseIP(n.Address); ip != nil {
					peers = append(peers, ip)
				}
			}
			if err := a.cfg.Overlay.SyncPeers(peers); err != nil {
				a.log.Warn("overlay peers", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// syncCRLs writes the revocation lists kept in the store where etcd (the
// cluster CA's) and QEMU (the migration CA's) read them.
func (a *Agent) syncCRLs(ctx context.Context) {
	crl, mcrl, err := a.st.CRLs(ctx)
	if err != nil {
		return
	}
	write := func(path string, data []byte) {
		if path == "" || data == nil {
			return
		}
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
			return
		}
		if err := pki.WriteFileAtomic(path, data); err != nil {
			a.log.Warn("writing a revocation list", "path", path, "err", err)
			return
		}
		a.log.Info("revocation list updated", "path", path)
	}
	write(a.cfg.CRLFile, crl)
	if a.cfg.MigrationTLSDir != "" {
		write(filepath.Join(a.cfg.MigrationTLSDir, "ca-crl.pem"), mcrl)
	}
}

// leave stops the agent because this host was removed from the cluster.
func (a *Agent) leave(why string, args ...any) {
	a.log.Error(why, args...)
	a.removed.Store(true)
	a.stopRun()
}

// refused reports whether err is etcd refusing one of this host's own
// certificates as revoked. etcd distrusts a certificate only when it was
// revoked for a reason other than renewal (store.revocationOptions), so
// this host can no longer act as a member of the cluster.
func (a *Agent) refused(err error) bool {
	if !errors.Is(err, errdefs.ErrUnauthenticated) {
		return false
	}
	for _, s := range a.certSerials() {
		if strings.Contains(err.Error(), "(serial "+s+")") {
			return true
		}
	}
	return false
}

// Removed reports whether the agent stopped because this host was removed
// from the cluster.
func (a *Agent) Removed() bool { return a.removed.Load() }

// SetCertSerials records this host's certificates after a renewal; the
// next heartbeat reports them.
func (a *Agent) SetCertSerials(serials []string) { a.serials.Store(&serials) }

func (a *Agent) certSerials() []string { return *a.serials.Load() }

// removal reports whether a revocation record says its holder was removed
// (not that it renewed its certificate: this agent's own renewal revokes
// the certificates it replaces a moment before it records the new ones).
func removal(v []byte) bool {
	var r api.Revocation
	return json.Unmarshal(v, &r) == nil && r.Reason == api.RevokedRemoved
}
