package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/apiserver"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/hostnet"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/ipam"
	"github.com/ferryvm/ferry/internal/linkprobe"
	"github.com/ferryvm/ferry/internal/metrics"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/paths"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/predict"
	"github.com/ferryvm/ferry/internal/promhist"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/store"
)

// Host is one Ferry host: what `ferry agent` turns its flags into.
type Host struct {
	Node string
	// How the host takes part: Dev is a whole single-host cluster; Server
	// runs an etcd member (the first, or with Join another); Join alone is
	// a host of the cluster whose API is at Join (host:port), with Token
	// on its first start; EtcdEndpoints use an external etcd instead.
	Dev, Server bool
	Join, Token string
	// Advertise is the underlay address other hosts reach this one at
	// (nil for Dev or an external etcd without --advertise).
	Advertise net.IP
	Listen    string // the API's TLS listen address

	DataDir, RunDir, ImageDir, StorageDir string

	EtcdEndpoints []string    // an external etcd (https)
	EtcdTLS       *tls.Config // its client TLS
	// EtcdClientURL and EtcdPeerURL are the embedded member's.
	EtcdClientURL, EtcdPeerURL string

	VNI          int      // the guest overlay's VXLAN identifier
	OverlayPeers []net.IP // extra underlay addresses on the overlay
	// Paths are the host's underlay devices when it has several (one per
	// fabric); PathPeers hosts on them that are not Ferry's.
	Paths     []string
	PathPeers []paths.Peer
	// APIVIP, when valid, is the cluster API's virtual address: this host
	// takes part in its VRRP group (VIP) and serves the API on it when it
	// holds it (vip.go).
	APIVIP netip.Addr
	VIP    VIPConfig

	Accel, CPUModel, GuestTHP string // auto|kvm|tcg; QEMU's CPU model; auto|on|off

	HA                                      ha.Timing
	MigrationsPerHost, MigrationsPerCluster int
	NoLeader                                bool // never lead: run no controllers

	// LinkProbeEvery is how often this host probes its links to the others
	// (package linkprobe; negative: never, 0: every 30 s).
	LinkProbeEvery time.Duration

	// Health is where and how often the host reads its health signals,
	// and how it judges its risk of failing (agent.Config's fields).
	Health Health
	// Load is how the host samples and forecasts its guests' CPU use;
	// Balance how the balancer acts on it while this host leads.
	Load    Load
	Balance balance.Config

	// CertCheck is how often the certificates' expiry is checked;
	// CertBefore how much lifetime left triggers renewal (0: a third).
	CertCheck, CertBefore time.Duration

	Log *slog.Logger
}

// Health configures a host's health signals and failure forecast.
type Health struct {
	Root      string        // read signals under this directory ("/")
	Every     time.Duration // how often (0: agent.DefaultHealthEvery; negative: never)
	Horizon   time.Duration // how far ahead the risk is judged (0: the model's default)
	Threshold float64       // the probability at which the host is at risk (0: agent.DefaultRiskThreshold)
	TimeScale float64       // counters' limits multiplied by this (compressed traces; 0: 1)
}

// Load configures a host's sampling and forecast of its guests' CPU use
// (agent.Config's fields).
type Load struct {
	Every, Period, Horizon time.Duration
	CapacityCPUs           float64
	GuestCgroup            string // a cgroup every guest's QEMU is moved into
	// Source is where the guests' histories are read from: "" (kept by
	// the agents in the store) or prometheus://HOST:PORT.
	Source string
}

func (h *Host) pkiDir() string { return filepath.Join(h.DataDir, "pki") }

// identity is what a host's TLS is made of.
type identity struct {
	cas     *hostCAs
	serials []string    // of the host's node and migration certificates
	server  *tls.Config // the API's
	etcd    *tls.Config // the etcd client's
	crl     string      // the revocation list's path
}

// Run runs the host — its etcd member if it has one, the agent, the API
// and, when it leads, the controllers — until ctx ends or a part fails.
// Guests keep running when it returns.
func Run(ctx context.Context, h Host) error {
	if err := h.check(); err != nil {
		return err
	}
	qinfo, err := qemu.Probe(ctx, h.RunDir)
	if err != nil {
		return err
	}
	id, err := h.identity(ctx)
	if err != nil {
		return err
	}
	st, endpoints, closeEtcd, err := h.openStore(ctx, id)
	if err != nil {
		return err
	}
	defer closeEtcd()
	defer st.Close()
	ag, err := h.newAgent(ctx, st, qinfo, id)
	if err != nil {
		return err
	}
	return h.serve(ctx, st, ag, id, endpoints)
}

// check fills in defaults and refuses what cannot run.
func (h *Host) check() error {
	if h.Log == nil {
		h.Log = slog.Default()
	}
	if err := h.HA.Check(); err != nil {
		return fmt.Errorf("unsafe HA timing: %w", err)
	}
	if err := api.ValidateName("node", h.Node); err != nil {
		return fmt.Errorf("%v (pass --node-name)", err)
	}
	if _, _, err := net.SplitHostPort(h.Listen); err != nil {
		return fmt.Errorf("--listen %q: %w", h.Listen, err)
	}
	if t := h.GuestTHP; t != "on" && t != "off" && t != "auto" {
		return fmt.Errorf("--guest-thp %q is not auto, on or off", t)
	}
	if h.StorageDir == "" {
		h.StorageDir = filepath.Join(h.DataDir, "storage")
	}
	for _, d := range []string{h.DataDir, h.RunDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	return nil
}

// identity makes sure of the host's credentials (credentials.go: a host
// with the CA keys makes its own, a host joining with a token asks the
// cluster) and builds its TLS: etcd with mutual TLS, the embedded member
// serving with this host's certificate and admitting only the cluster
// CA's minus the revoked; an external etcd brings its own.
func (h *Host) identity(ctx context.Context) (*identity, error) {
	listenHost, _, _ := net.SplitHostPort(h.Listen)
	hosts := []string{"127.0.0.1", "localhost", h.Node}
	if listenHost != "" && listenHost != "0.0.0.0" && listenHost != "::" {
		hosts = append(hosts, listenHost)
	}
	if h.APIVIP.IsValid() {
		hosts = append(hosts, h.APIVIP.String()) // clients that reach the API at the virtual address
	}
	migHosts := []string{h.Node}
	if h.Advertise != nil {
		migHosts = append(migHosts, h.Advertise.String())
	}
	cas, err := h.credentials(ctx, hosts, migHosts)
	if err != nil {
		return nil, err
	}
	pkiDir := h.pkiDir()
	id := &identity{cas: cas, crl: filepath.Join(pkiDir, pki.CRLFile), etcd: h.EtcdTLS}
	if id.serials, err = pki.Serials(filepath.Join(pkiDir, pki.ServerCert), filepath.Join(pkiDir, pki.MigrationDir, "server-cert.pem")); err != nil {
		return nil, err
	}
	if id.server, err = pki.ServerTLS(pkiDir); err != nil {
		return nil, err
	}
	if id.etcd == nil {
		if id.etcd, err = pki.ClientTLS(pkiDir, pki.ServerCert, pki.ServerKey); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(id.crl); err != nil && cas.Cluster.Key != nil {
		if err := cas.Cluster.WriteCRL(id.crl, nil); err != nil {
			return nil, fmt.Errorf("revocation list: %w", err)
		}
	}
	return id, nil
}

// openStore starts this host's etcd member where it runs one (joining the
// cluster's etcd as a learner first when it is another server) and opens
// the store; it returns the endpoints and what closes the member.
func (h *Host) openStore(ctx context.Context, id *identity) (*store.Store, []string, func(), error) {
	endpoints := h.EtcdEndpoints
	var initialCluster string
	if h.Join != "" && len(endpoints) == 0 {
		info, err := h.fetchCluster(ctx)
		if err != nil {
			return nil, nil, nil, err
		}
		endpoints, h.VNI = info.EtcdEndpoints, info.VNI
		if h.Server && !store.HasMemberData(filepath.Join(h.DataDir, "etcd")) {
			if initialCluster, err = store.AddMember(ctx, endpoints, id.etcd, h.Node, h.EtcdPeerURL); err != nil {
				return nil, nil, nil, err
			}
			h.Log.Info("joining the cluster's etcd", "initial_cluster", initialCluster)
		}
	}
	closeEtcd := func() {}
	if h.Server || len(endpoints) == 0 {
		pkiDir := h.pkiDir()
		emb, err := store.StartEmbedded(ctx, store.EmbedConfig{Dir: filepath.Join(h.DataDir, "etcd"), Name: h.Node,
			ClientURL: h.EtcdClientURL, PeerURL: h.EtcdPeerURL, Log: h.Log,
			InitialCluster: initialCluster, Existing: initialCluster != "",
			TLS: &store.TLSFiles{CA: filepath.Join(pkiDir, pki.CACert), Cert: filepath.Join(pkiDir, pki.ServerCert),
				Key: filepath.Join(pkiDir, pki.ServerKey), CRL: id.crl},
			Distrusted: pki.NewRevocationFile(id.crl, id.cas.Cluster.Cert).Distrusted})
		if err != nil {
			return nil, nil, nil, err
		}
		closeEtcd = emb.Close
		if len(endpoints) > 0 {
			// Joined as a learner (store.AddMember): a voter once caught up.
			if err := store.PromoteMember(ctx, endpoints, id.etcd, h.Node); err != nil {
				emb.Close()
				return nil, nil, nil, err
			}
		}
		endpoints = append([]string{emb.ClientURL()}, endpoints...)
	}
	st, err := store.Open(ctx, endpoints, id.etcd)
	if err != nil {
		closeEtcd()
		return nil, nil, nil, err
	}
	// Migration metrics are counted where a record's change is written.
	st.ObserveMigrations(metrics.ObserveMigration)
	return st, endpoints, closeEtcd, nil
}

// newAgent chooses the accelerator and builds the agent.
func (h *Host) newAgent(ctx context.Context, st *store.Store, qinfo *api.QEMUInfo, id *identity) (*agent.Agent, error) {
	log := h.Log
	var kernel, initrd string
	if img, err := image.Find(h.ImageDir); err == nil {
		kernel, initrd = img.Kernel, img.Initrd
	} else {
		log.Warn("built-in image missing; VMs from image tiny cannot start until it is built", "err", err)
	}
	accel, why, err := qemu.ChooseAccel(ctx, h.Accel, kernel, initrd, h.DataDir)
	if err != nil {
		return nil, err
	}
	log.Info("accelerator chosen", "accel", accel, "reason", why)
	if h.GuestTHP == "off" || (h.GuestTHP == "auto" && accel == "tcg") {
		if err := qemu.DisableTHP(); err != nil {
			return nil, err
		}
		log.Info("transparent huge pages off for guests", "why", "--guest-thp "+h.GuestTHP)
	}
	qinfo.NoLiveMigration = migrate.NoLiveMigration(accel, qinfo.Version)
	log.Info("QEMU", "version", qinfo.Version, "package", qinfo.Package, "pc", qinfo.Aliases["pc"],
		"migration_capabilities", len(qinfo.Capabilities), "multifd_compression", qinfo.MultifdCompression)
	if qinfo.NoLiveMigration != "" {
		log.Warn("this host cannot live-migrate guests", "why", qinfo.NoLiveMigration)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	pkiDir := h.pkiDir()
	listenHost, _, _ := net.SplitHostPort(h.Listen)
	cfg := agent.Config{
		Node: h.Node, Address: listenHost, DataDir: h.DataDir, RunDir: h.RunDir, StorageDir: h.StorageDir,
		ImageDir: h.ImageDir, Accel: accel, CPUModel: h.CPUModel, QEMU: qinfo, Log: log,
		HA: h.HA, WatchdogCmd: []string{exe, "watchdog"}, FailpointFile: filepath.Join(h.DataDir, "failpoints"),
		MigrationTLSDir: filepath.Join(pkiDir, pki.MigrationDir), CRLFile: id.crl, CertSerials: id.serials,
		OverlayPeers: h.OverlayPeers, APIAddress: h.Listen,
		HealthRoot: h.Health.Root, HealthEvery: h.Health.Every, Risk: predict.RiskConfig{Horizon: h.Health.Horizon, TimeScale: h.Health.TimeScale},
		RiskThreshold: h.Health.Threshold,
		LoadEvery:     h.Load.Every, LoadPeriod: h.Load.Period, LoadHorizon: h.Load.Horizon, CapacityCPUs: h.Load.CapacityCPUs,
		GuestCgroup: h.Load.GuestCgroup,
	}
	if h.Load.Source != "" {
		src, err := promhist.Parse(h.Load.Source)
		if err != nil {
			return nil, err
		}
		cfg.LoadSource = src
	}
	if h.Advertise != nil {
		local, _ := netip.AddrFromSlice(h.Advertise.To4())
		ba := ipam.HostOverlayAddr(local)
		cfg.Address = h.Advertise.String()
		cfg.Overlay = &hostnet.Overlay{Bridge: "ferry0", VXLAN: "fvx0", VNI: h.VNI, Port: 4789, Local: h.Advertise,
			BridgeAddr: &net.IPNet{IP: ba.Addr().AsSlice(), Mask: net.CIDRMask(ba.Bits(), 32)}, Paths: h.Paths}
	}
	if cfg.Paths, err = localPaths(h.Paths); err != nil {
		return nil, err
	}
	cfg.PathPeers = h.PathPeers
	return agent.New(cfg, st)
}

// apiServer builds the API this host serves.
func (h *Host) apiServer(ctx context.Context, st *store.Store, ag *agent.Agent, id *identity, endpoints []string) *apiserver.Server {
	srv := apiserver.New(st, func(vm *api.VM) (string, error) {
		if vm.Node != ag.Node() {
			node := vm.Node
			if node == "" {
				node = "-"
			}
			return "", errdefs.New(errdefs.ErrUnavailable, fmt.Sprintf("vm %s runs on node %s; ask that node's API for its console", vm.Spec.Name, node))
		}
		return ag.ConsoleLog(vm.Spec.Name), nil
	}, h.Log)
	srv.Cluster = api.ClusterInfo{EtcdEndpoints: endpoints, VNI: h.VNI}
	srv.CAs = &apiserver.Signers{Cluster: id.cas.Cluster, Migration: id.cas.Migration, Users: id.cas.Users}
	srv.ClusterCA = id.cas.Cluster.Cert
	srv.Mirror = st.Mirror(ctx)
	srv.KeepHistory(ctx)
	if urls, err := st.ClientURLs(ctx); err == nil && len(urls) > 0 {
		srv.Cluster.EtcdEndpoints = urls
	}
	return srv
}

// watchLinks starts this host's link prober (unless switched off) and
// registers its figures for /metrics, asked for at each scrape; the
// returned function unregisters them.
func (h *Host) watchLinks(ctx context.Context, st *store.Store, ag *agent.Agent) (unregister func()) {
	var prober *linkprobe.Prober
	if h.LinkProbeEvery >= 0 {
		if cfg, err := pki.ClientTLS(h.pkiDir(), pki.ServerCert, pki.ServerKey); err == nil {
			prober = &linkprobe.Prober{Node: h.Node, St: st, TLS: cfg, RTTEvery: h.LinkProbeEvery, Log: h.Log.With("part", "linkprobe")}
			go prober.Run(ctx)
		}
	}
	metrics.InitHost(h.Node)
	return metrics.RegisterHost(h.Node, func() metrics.HostFigures {
		f := ag.Figures()
		if prober != nil {
			for _, l := range prober.Known() {
				ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
				f.Links = append(f.Links, metrics.LinkFigures{Peer: l.To, RTT: ms(l.RTTMS), Bandwidth: l.Bandwidth,
					Loss: l.LossPct / 100, Jitter: ms(l.JitterMS), Degraded: l.Degraded})
			}
		}
		return f
	})
}

// serve runs the API, the agent, the control plane and certificate
// renewal until ctx ends or one of them fails.
func (h *Host) serve(ctx context.Context, st *store.Store, ag *agent.Agent, id *identity, endpoints []string) error {
	log := h.Log
	ln, err := net.Listen("tcp", h.Listen)
	if err != nil {
		return fmt.Errorf("API listener: %w", err)
	}
	srv := &http.Server{Handler: h.apiServer(ctx, st, ag, id, endpoints).Handler(), TLSConfig: id.server,
		ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	endpoint := "https://" + ln.Addr().String()
	if err := os.WriteFile(filepath.Join(h.DataDir, client.EndpointFile), []byte(endpoint+"\n"), 0o644); err != nil {
		ln.Close()
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- err
			}
		}()
	}
	run(func() error {
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("API server: %w", err)
		}
		return nil
	})
	run(func() error {
		if err := ag.Run(ctx); err != nil {
			return err
		}
		if ag.Removed() {
			return errors.New("this host was removed from the cluster (ferry node remove): its certificates are revoked")
		}
		return nil
	})
	if !h.NoLeader {
		run(func() error {
			RunControlPlane(ctx, st, ControlPlane{Node: h.Node, HA: h.HA, Balance: h.Balance,
				MigrationsPerHost: h.MigrationsPerHost, MigrationsPerCluster: h.MigrationsPerCluster, Log: log})
			return nil
		})
	}
	renewAt := h.Join
	if renewAt == "" {
		renewAt = ln.Addr().String()
	}
	go renewLoop(ctx, h.pkiDir(), renewAt, h.CertCheck, h.CertBefore, ag, log)
	if h.APIVIP.IsValid() {
		stop, err := h.serveVIP(ctx, srv, ag)
		if err != nil {
			return err
		}
		defer stop()
	}
	defer h.watchLinks(ctx, st, ag)()
	log.Info("ferry is up", "api", endpoint, "node", h.Node, "data_dir", h.DataDir)
	select {
	case <-ctx.Done():
		log.Info("shutting down; guests keep running")
	case err = <-errc:
		log.Error("shutting down", "err", err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	srv.Shutdown(sctx)
	scancel()
	cancel()
	wg.Wait()
	return err
}
