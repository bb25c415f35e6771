package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/daemon"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/promhist"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/spf13/cobra"
)

type agentOpts struct {
	dev           bool
	server        bool
	join          string
	token         string
	certCheck     time.Duration
	certBefore    time.Duration
	advertise     string
	overlayPeers  []string
	paths         []string
	pathPeers     []string
	apiVIP        string
	vip           daemon.VIPConfig
	vrid          int
	vrrpPriority  int
	vni           int
	migPerHost    int
	migPerCluster int
	// changed reports whether a flag was set explicitly.
	changed       func(name string) bool
	listen        string
	etcdEndpoints []string
	etcdClientURL string
	etcdPeerURL   string
	etcdCA        string
	etcdCert      string
	etcdKey       string
	node          string
	accel         string
	cpuModel      string
	guestTHP      string
	runDir        string
	imageDir      string
	storageDir    string
	logLevel      string
	haTiming      ha.Timing
	noLeader      bool
	linkProbe     time.Duration
	health        daemon.Health
	load          daemon.Load
	balance       balance.Config
}

func agentCmd(g *globals) *cobra.Command {
	o := &agentOpts{}
	c := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent (with --dev: a whole single-host cluster)",
		Long: `Run Ferry on this host.

With --dev, one process is a whole cluster: an embedded etcd, the API on
127.0.0.1 and the agent that runs guests. On first start it makes a cluster CA
and admin credentials in --data-dir, where the CLI finds them.

Stopping the agent leaves guests running; the next agent re-attaches to them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.changed = cmd.Flags().Changed
			if f := cmd.Flags(); f.Changed("lease-ttl") {
				// The rest of the fencing timing follows the lease
				// (ha.TimingFor) unless set by hand.
				t := ha.TimingFor(o.haTiming.LeaseTTL)
				scaled := func(flag string, v *time.Duration, to time.Duration) {
					if !f.Changed(flag) {
						*v = to
					}
				}
				scaled("lease-renew", &o.haTiming.Renew, t.Renew)
				scaled("self-fence-after", &o.haTiming.FenceAfter, t.FenceAfter)
				scaled("watchdog-after", &o.haTiming.WatchdogAfter, t.WatchdogAfter)
				scaled("ha-margin", &o.haTiming.Margin, t.Margin)
				o.haTiming.RenewTimeout, o.haTiming.Alive = t.RenewTimeout, t.Alive
			}
			return runAgent(cmd.Context(), g, o)
		},
	}
	f := c.Flags()
	f.BoolVar(&o.dev, "dev", false, "single host: embedded etcd, API and agent in one process, guests on user-mode networking")
	f.BoolVar(&o.server, "server", false, "first host of a cluster: embedded etcd on --advertise, API and agent")
	f.StringVar(&o.join, "join", "", "join the cluster whose API is at ADDR (host:port), with --token (or, for another etcd server, the cluster's CA keys in DATA-DIR/pki)")
	f.DurationVar(&o.certCheck, "cert-check", time.Hour, "how often to check whether this host's certificates need renewing (they are renewed with a third of their lifetime left, without a restart)")
	f.DurationVar(&o.certBefore, "cert-renew-before", 0, "renew when less than this is left (default: a third of the lifetime)")
	f.StringVar(&o.token, "token", "", "one-time join token from `ferry cluster token create` (first start of a joining host)")
	f.StringVar(&o.advertise, "advertise", "", "this host's underlay address, which other hosts reach (required with --server and --join)")
	f.StringSliceVar(&o.overlayPeers, "overlay-peer", nil, "extra underlay address that joins the guest overlay (a gateway or client); repeatable")
	f.StringSliceVar(&o.paths, "path", nil, "an underlay device of this host, one per fabric, when it has several (repeat: --path eth0 --path eth1); --advertise is then an address of the host's own (on lo) that the others reach over every healthy path")
	f.StringVar(&o.apiVIP, "api-vip", "", "the cluster API's virtual address (IPv4): this host takes part in its VRRPv3 group and serves the API there while it holds it (give it on every host that may)")
	f.StringVar(&o.vip.Dev, "vrrp-dev", "", "the interface of the API's VRRP group (default: the one holding --advertise)")
	f.IntVar(&o.vrid, "vrrp-id", 51, "the API's VRRP virtual router id (1..255; the same on every host, and on keepalived routers sharing the address)")
	f.IntVar(&o.vrrpPriority, "vrrp-priority", 100, "this host's VRRP priority for the API's address (1..254; the highest healthy host holds it)")
	f.DurationVar(&o.vip.Interval, "vrrp-interval", 100*time.Millisecond, "how often the holder of the API's address advertises it (a multiple of 10ms; a backup takes over after three missed)")
	f.StringSliceVar(&o.pathPeers, "path-peer", nil, "a host on the same fabrics that is not Ferry's (a gateway, a client): NAME=ADDRESS/PATHADDR/PATHADDR...; repeatable")
	f.IntVar(&o.vni, "vni", 42, "VXLAN network identifier of the guest overlay")
	f.IntVar(&o.migPerHost, "migrations-per-host", migrate.DefaultPerHost, "live migrations in flight out of one host (when this host leads)")
	f.IntVar(&o.migPerCluster, "migrations-per-cluster", migrate.DefaultPerCluster, "live migrations in flight in the cluster (when this host leads)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:7443", "API listen address (TLS)")
	f.StringSliceVar(&o.etcdEndpoints, "etcd-endpoints", nil, "use an external etcd cluster (https URLs, with --etcd-cacert, --etcd-cert, --etcd-key) instead of the embedded one")
	f.StringVar(&o.etcdCA, "etcd-cacert", "", "CA certificate of an external etcd (PEM)")
	f.StringVar(&o.etcdCert, "etcd-cert", "", "client certificate for an external etcd (PEM)")
	f.StringVar(&o.etcdKey, "etcd-key", "", "client key for an external etcd (PEM)")
	f.StringVar(&o.etcdClientURL, "etcd-client-url", "https://127.0.0.1:2379", "embedded etcd client URL (mutual TLS with the cluster CA)")
	f.StringVar(&o.etcdPeerURL, "etcd-peer-url", "https://127.0.0.1:2380", "embedded etcd peer URL (mutual TLS with the cluster CA)")
	f.StringVar(&o.node, "node-name", "", "this host's name (default: the host name)")
	f.StringVar(&o.accel, "accel", "auto", "accelerator: auto (KVM only if a probe guest boots under it), kvm or tcg")
	f.StringVar(&o.cpuModel, "cpu-model", "", "QEMU CPU model (default: QEMU's)")
	f.StringVar(&qemu.Binary, "qemu-binary", qemu.Binary, "the QEMU system emulator to run guests with (name or path)")
	f.StringVar(&o.guestTHP, "guest-thp", "auto", "transparent huge pages for guest memory: on, off, or auto (off under TCG, where they slow migration targets and gain little)")
	f.StringVar(&o.runDir, "run-dir", "/run/ferry", "directory for QMP and console sockets (keep the path short)")
	f.StringVar(&o.imageDir, "image-dir", image.DefaultDir, "where built-in images are kept")
	f.StringVar(&o.storageDir, "storage-dir", "", "where VM disks live (default: DATA-DIR/storage)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	o.haTiming = ha.DefaultTiming()
	f.DurationVar(&o.linkProbe, "link-probe-every", 30*time.Second, "how often to measure the round trip to other hosts (and, every 10 minutes, a second's bandwidth); 0 never")
	f.StringVar(&o.health.Root, "health-root", "/", "read the host's health signals (EDAC, SMART, NIC, thermal: docs/PREDICTIVE.md) under this directory")
	f.DurationVar(&o.health.Every, "health-every", agent.DefaultHealthEvery, "how often to read the health signals and judge the host's risk of failing; 0 never")
	f.DurationVar(&o.health.Horizon, "risk-horizon", 30*time.Minute, "how far ahead the risk of failing is judged")
	f.Float64Var(&o.health.TimeScale, "risk-time-scale", 1, "for testbeds replaying health traces compressed in time: counters' failure limits (rates) are multiplied by this")
	f.Float64Var(&o.health.Threshold, "risk-threshold", agent.DefaultRiskThreshold, "probability of failing within the horizon at which the host is evacuated (0 to 1)")
	f.DurationVar(&o.load.Every, "load-every", agent.DefaultLoadEvery, "how often to sample the guests' CPU use (for the balancer's forecasts); 0 never")
	f.DurationVar(&o.load.Period, "load-period", agent.DefaultLoadPeriod, "the season of the guests' load (a day; shorter in compressed testbed traces)")
	f.DurationVar(&o.load.Horizon, "load-horizon", agent.DefaultLoadHorizon, "how far ahead the guests' load is forecast")
	f.Float64Var(&o.load.CapacityCPUs, "capacity-cpus", 0, "how many CPUs this host's guests may use (default: all of them)")
	f.StringVar(&o.load.GuestCgroup, "guest-cgroup", "", "a cgroup directory (e.g. with a CPU quota) every guest's QEMU is moved into when it starts")
	f.StringVar(&o.load.Source, "metrics-source", "", "read the guests' load histories from a Prometheus server scraping the cluster (prometheus://HOST:PORT) instead of keeping them in the store")
	f.StringVar(&o.balance.Mode, "balance", api.BalancePredictive, "when this host leads, how guests are moved off overloaded hosts: predictive (ahead of a forecast overload), reactive (once one lasts), or off")
	f.Float64Var(&o.balance.Threshold, "balance-threshold", 0.8, "share of a host's capacity above which it counts as overloaded")
	f.DurationVar(&o.balance.Sustain, "balance-sustain", 2*time.Minute, "how long an overload must last before the reactive balancer acts (and the predictive one, while a host has no forecast yet)")
	f.DurationVar(&o.balance.Cooldown, "balance-cooldown", 10*time.Minute, "how long a guest the balancer moved stays put")
	f.BoolVar(&o.balance.Heal, "heal", true, "when this host leads, move guests served badly where they are (waiting for their CPUs, slow health answers) for --balance-sustain to a host where they do better, whatever --balance says")
	f.Float64Var(&o.balance.HealHealthMS, "heal-health-ms", 250, "a guest whose health checks take longer than this (median of the last ten) is served badly")
	f.BoolVar(&o.noLeader, "no-leader", false, "never lead the cluster (run no controllers): in large clusters a few hosts campaign, not all (see docs/BENCHMARKS.md, scale)")
	f.DurationVar(&o.haTiming.LeaseTTL, "lease-ttl", o.haTiming.LeaseTTL, "this host's etcd lease (whole seconds); the rest of the fencing timing scales with it unless set (docs/HA.md)")
	f.DurationVar(&o.haTiming.Renew, "lease-renew", o.haTiming.Renew, "how often the lease is renewed")
	f.DurationVar(&o.haTiming.FenceAfter, "self-fence-after", o.haTiming.FenceAfter, "kill HA guests after this long without a lease renewal")
	f.DurationVar(&o.haTiming.WatchdogAfter, "watchdog-after", o.haTiming.WatchdogAfter, "the watchdog kills HA guests after this long without a renewal if the agent does not")
	f.DurationVar(&o.haTiming.Margin, "ha-margin", o.haTiming.Margin, "the HA manager waits this long after a host's lease expired before restarting its guests")
	return c
}

// runAgent turns the flags into a host's configuration; internal/daemon
// runs it.
func runAgent(ctx context.Context, g *globals, o *agentOpts) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)
	if o.dev && (o.server || o.join != "") || (!o.dev && !o.server && o.join == "" && len(o.etcdEndpoints) == 0) {
		return errors.New("say --dev (single host), --server (the first server), --server --join ADDR (another etcd server), --join ADDR (another host), or give --etcd-endpoints")
	}
	dataDir, err := filepath.Abs(g.dataDir)
	if err != nil {
		return err
	}
	h := daemon.Host{Node: o.node, Dev: o.dev, Server: o.server, Join: o.join, Token: o.token, Listen: o.listen,
		DataDir: dataDir, RunDir: o.runDir, ImageDir: o.imageDir, StorageDir: o.storageDir,
		EtcdEndpoints: o.etcdEndpoints, EtcdClientURL: o.etcdClientURL, EtcdPeerURL: o.etcdPeerURL,
		VNI: o.vni, Accel: o.accel, CPUModel: o.cpuModel, GuestTHP: o.guestTHP, HA: o.haTiming,
		MigrationsPerHost: o.migPerHost, MigrationsPerCluster: o.migPerCluster, NoLeader: o.noLeader,
		CertCheck: o.certCheck, CertBefore: o.certBefore, Log: log, LinkProbeEvery: o.linkProbe, Health: o.health, Load: o.load, Balance: o.balance}
	if o.load.Every == 0 {
		h.Load.Every = -1
	}
	if o.load.Source != "" {
		if _, err := promhist.Parse(o.load.Source); err != nil {
			return fmt.Errorf("--metrics-source: %w", err)
		}
	}
	switch o.balance.Mode {
	case api.BalanceOff, api.BalanceReactive, api.BalancePredictive:
	default:
		return fmt.Errorf("--balance %q: say predictive, reactive or off", o.balance.Mode)
	}
	if o.balance.Threshold <= 0 || o.balance.Threshold > 1 {
		return fmt.Errorf("--balance-threshold %g: give a share above 0 and at most 1", o.balance.Threshold)
	}
	if o.health.Every == 0 {
		h.Health.Every = -1
	}
	if o.health.Threshold <= 0 || o.health.Threshold > 1 {
		return fmt.Errorf("--risk-threshold %g: give a probability above 0 and at most 1", o.health.Threshold)
	}
	if o.linkProbe == 0 {
		h.LinkProbeEvery = -1
	}
	if h.Node == "" {
		h.Node = defaultNodeName()
	}
	if o.server || o.join != "" {
		if h.Advertise = net.ParseIP(o.advertise).To4(); h.Advertise == nil {
			return fmt.Errorf("--advertise must be this host's IPv4 underlay address, not %q", o.advertise)
		}
		adv := h.Advertise.String()
		if !o.changed("listen") {
			h.Listen = net.JoinHostPort(adv, "7443")
		}
		if !o.changed("etcd-client-url") {
			h.EtcdClientURL = "https://" + net.JoinHostPort(adv, "2379")
		}
		if !o.changed("etcd-peer-url") {
			h.EtcdPeerURL = "https://" + net.JoinHostPort(adv, "2380")
		}
	}
	for _, p := range o.overlayPeers {
		ip := net.ParseIP(p).To4()
		if ip == nil {
			return fmt.Errorf("--overlay-peer %q is not an IPv4 address", p)
		}
		h.OverlayPeers = append(h.OverlayPeers, ip)
	}
	if len(o.paths) > 0 && h.Advertise == nil {
		return errors.New("--path needs --advertise (the host's own address, reached over the paths)")
	}
	h.Paths = o.paths
	if o.apiVIP != "" {
		vip, err := netip.ParseAddr(o.apiVIP)
		if err != nil || !vip.Is4() {
			return fmt.Errorf("--api-vip must be an IPv4 address, not %q", o.apiVIP)
		}
		if h.Advertise == nil {
			return errors.New("--api-vip needs --advertise")
		}
		if o.vrid < 1 || o.vrid > 255 {
			return fmt.Errorf("--vrrp-id must be 1..255, not %d", o.vrid)
		}
		if o.vrrpPriority < 1 || o.vrrpPriority > 254 {
			return fmt.Errorf("--vrrp-priority must be 1..254, not %d", o.vrrpPriority)
		}
		if o.vip.Interval < 10*time.Millisecond || o.vip.Interval%(10*time.Millisecond) != 0 || o.vip.Interval > 40950*time.Millisecond {
			return fmt.Errorf("--vrrp-interval must be a multiple of 10ms up to 40.95s, not %s", o.vip.Interval)
		}
		h.APIVIP, h.VIP = vip, o.vip
		h.VIP.VRID, h.VIP.Priority = uint8(o.vrid), uint8(o.vrrpPriority)
	}
	for _, p := range o.pathPeers {
		peer, err := daemon.ParsePathPeer(p)
		if err != nil {
			return err
		}
		h.PathPeers = append(h.PathPeers, peer)
	}
	if len(o.etcdEndpoints) > 0 {
		if h.EtcdTLS, err = externalEtcdTLS(o); err != nil {
			return err
		}
	}
	return daemon.Run(ctx, h)
}

func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil {
		return "node1"
	}
	h = strings.ToLower(strings.SplitN(h, ".", 2)[0])
	if api.ValidateName("node", h) != nil {
		return "node1"
	}
	return h
}

// externalEtcdTLS is the client TLS for --etcd-endpoints: https only, with
// the external cluster's CA and a client certificate.
func externalEtcdTLS(o *agentOpts) (*tls.Config, error) {
	for _, e := range o.etcdEndpoints {
		if !strings.HasPrefix(e, "https://") {
			return nil, fmt.Errorf("--etcd-endpoints %q: Ferry talks to etcd over TLS only (https://)", e)
		}
	}
	if o.etcdCA == "" || o.etcdCert == "" || o.etcdKey == "" {
		return nil, errors.New("--etcd-endpoints needs --etcd-cacert, --etcd-cert and --etcd-key (mutual TLS)")
	}
	return pki.TLSFromFiles(o.etcdCA, o.etcdCert, o.etcdKey)
}
