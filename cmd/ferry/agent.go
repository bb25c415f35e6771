package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/apiserver"
	"github.com/ferryvm/ferry/internal/daemon"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/hostnet"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/ipam"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/store"
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
	f.BoolVar(&o.noLeader, "no-leader", false, "never lead the cluster (run no controllers): in large clusters a few hosts campaign, not all (see docs/BENCHMARKS.md, scale)")
	f.DurationVar(&o.haTiming.LeaseTTL, "lease-ttl", o.haTiming.LeaseTTL, "this host's etcd lease (whole seconds); the rest of the fencing timing scales with it unless set (docs/HA.md)")
	f.DurationVar(&o.haTiming.Renew, "lease-renew", o.haTiming.Renew, "how often the lease is renewed")
	f.DurationVar(&o.haTiming.FenceAfter, "self-fence-after", o.haTiming.FenceAfter, "kill HA guests after this long without a lease renewal")
	f.DurationVar(&o.haTiming.WatchdogAfter, "watchdog-after", o.haTiming.WatchdogAfter, "the watchdog kills HA guests after this long without a renewal if the agent does not")
	f.DurationVar(&o.haTiming.Margin, "ha-margin", o.haTiming.Margin, "the HA manager waits this long after a host's lease expired before restarting its guests")
	return c
}

func runAgent(ctx context.Context, g *globals, o *agentOpts) error {
	if err := o.haTiming.Check(); err != nil {
		return fmt.Errorf("unsafe HA timing: %w", err)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)
	modes := 0
	for _, m := range []bool{o.dev, o.server || o.join != ""} {
		if m {
			modes++
		}
	}
	if modes > 1 || (modes == 0 && len(o.etcdEndpoints) == 0) {
		return errors.New("say --dev (single host), --server (the first server), --server --join ADDR (another etcd server), --join ADDR (another host), or give --etcd-endpoints")
	}
	var adv net.IP
	if o.server || o.join != "" {
		if adv = net.ParseIP(o.advertise).To4(); adv == nil {
			return fmt.Errorf("--advertise must be this host's IPv4 underlay address, not %q", o.advertise)
		}
		if !o.changed("listen") {
			o.listen = net.JoinHostPort(adv.String(), "7443")
		}
		if !o.changed("etcd-client-url") {
			o.etcdClientURL = "https://" + net.JoinHostPort(adv.String(), "2379")
		}
		if !o.changed("etcd-peer-url") {
			o.etcdPeerURL = "https://" + net.JoinHostPort(adv.String(), "2380")
		}
	}
	dataDir, err := filepath.Abs(g.dataDir)
	if err != nil {
		return err
	}
	if o.storageDir == "" {
		o.storageDir = filepath.Join(dataDir, "storage")
	}
	if o.node == "" {
		o.node = defaultNodeName()
	}
	if err := api.ValidateName("node", o.node); err != nil {
		return fmt.Errorf("%v (pass --node-name)", err)
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	for _, d := range []string{dataDir, o.runDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	qinfo, err := qemu.Probe(ctx, o.runDir)
	if err != nil {
		return err
	}

	// Credentials (credentials.go): a host with the CA keys (the first
	// server, or a server given them) makes its own; a host joining with a
	// token asks the cluster for them.
	pkiDir := filepath.Join(dataDir, "pki")
	hosts := []string{"127.0.0.1", "localhost", o.node}
	if host != "" && host != "0.0.0.0" && host != "::" {
		hosts = append(hosts, host)
	}
	migHosts := []string{o.node}
	if adv != nil {
		migHosts = append(migHosts, adv.String())
	}
	cas, err := hostCredentials(ctx, o, pkiDir, hosts, migHosts, log)
	if err != nil {
		return err
	}
	serials, err := pki.Serials(filepath.Join(pkiDir, pki.ServerCert), filepath.Join(pkiDir, pki.MigrationDir, "server-cert.pem"))
	if err != nil {
		return err
	}
	tlsCfg, err := pki.ServerTLS(pkiDir)
	if err != nil {
		return err
	}

	// etcd: mutual TLS. The embedded member serves with this host's
	// certificate and admits only the cluster CA's, minus the revoked (CRL);
	// an external etcd brings its own CA and client certificate.
	etcdTLS, err := pki.ClientTLS(pkiDir, pki.ServerCert, pki.ServerKey)
	if err != nil {
		return err
	}
	if len(o.etcdEndpoints) > 0 {
		if etcdTLS, err = externalEtcdTLS(o); err != nil {
			return err
		}
	}
	crlPath := filepath.Join(pkiDir, pki.CRLFile)
	if _, err := os.Stat(crlPath); err != nil && cas.Cluster.Key != nil {
		if err := cas.Cluster.WriteCRL(crlPath, nil); err != nil {
			return fmt.Errorf("revocation list: %w", err)
		}
	}
	endpoints := o.etcdEndpoints
	var initialCluster string
	if o.join != "" && len(endpoints) == 0 {
		info, err := fetchCluster(ctx, pkiDir, o.join)
		if err != nil {
			return err
		}
		endpoints = info.EtcdEndpoints
		o.vni = info.VNI
		etcdDir := filepath.Join(dataDir, "etcd")
		if o.server && !store.HasMemberData(etcdDir) {
			// Another etcd server: become a member of the cluster's etcd.
			if initialCluster, err = store.AddMember(ctx, endpoints, etcdTLS, o.node, o.etcdPeerURL); err != nil {
				return err
			}
			log.Info("joining the cluster's etcd", "initial_cluster", initialCluster)
		}
	}
	if o.server || len(endpoints) == 0 {
		emb, err := store.StartEmbedded(ctx, store.EmbedConfig{Dir: filepath.Join(dataDir, "etcd"), Name: o.node,
			ClientURL: o.etcdClientURL, PeerURL: o.etcdPeerURL, Log: log,
			InitialCluster: initialCluster, Existing: initialCluster != "",
			TLS: &store.TLSFiles{CA: filepath.Join(pkiDir, pki.CACert), Cert: filepath.Join(pkiDir, pki.ServerCert),
				Key: filepath.Join(pkiDir, pki.ServerKey), CRL: crlPath},
			Distrusted: pki.NewRevocationFile(crlPath, cas.Cluster.Cert).Distrusted})
		if err != nil {
			return err
		}
		defer emb.Close()
		if len(endpoints) > 0 {
			// Joined as a learner (store.AddMember): a voter once caught up.
			if err := store.PromoteMember(ctx, endpoints, etcdTLS, o.node); err != nil {
				return err
			}
		}
		endpoints = append([]string{emb.ClientURL()}, endpoints...)
	}
	st, err := store.Open(ctx, endpoints, etcdTLS)
	if err != nil {
		return err
	}
	defer st.Close()

	var kernel, initrd string
	if img, err := image.Find(o.imageDir); err == nil {
		kernel, initrd = img.Kernel, img.Initrd
	} else {
		log.Warn("built-in image missing; VMs from image tiny cannot start until it is built", "err", err)
	}
	accel, why, err := qemu.ChooseAccel(ctx, o.accel, kernel, initrd, dataDir)
	if err != nil {
		return err
	}
	log.Info("accelerator chosen", "accel", accel, "reason", why)
	switch thp := o.guestTHP; {
	case thp == "off" || (thp == "auto" && accel == "tcg"):
		if err := qemu.DisableTHP(); err != nil {
			return err
		}
		log.Info("transparent huge pages off for guests", "why", "--guest-thp "+thp)
	case thp != "on" && thp != "auto":
		return fmt.Errorf("--guest-thp %q is not auto, on or off", thp)
	}
	qinfo.NoLiveMigration = migrate.NoLiveMigration(accel, qinfo.Version)
	log.Info("QEMU", "version", qinfo.Version, "package", qinfo.Package, "pc", qinfo.Aliases["pc"],
		"migration_capabilities", len(qinfo.Capabilities), "multifd_compression", qinfo.MultifdCompression)
	if qinfo.NoLiveMigration != "" {
		log.Warn("this host cannot live-migrate guests", "why", qinfo.NoLiveMigration)
	}

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	acfg := agent.Config{
		Node: o.node, Address: host, DataDir: dataDir, RunDir: o.runDir, StorageDir: o.storageDir,
		ImageDir: o.imageDir, Accel: accel, CPUModel: o.cpuModel, QEMU: qinfo, Log: log,
		HA: o.haTiming, WatchdogCmd: []string{exe, "watchdog"}, FailpointFile: filepath.Join(dataDir, "failpoints"),
		MigrationTLSDir: filepath.Join(pkiDir, pki.MigrationDir), CRLFile: crlPath, CertSerials: serials,
	}
	if adv != nil {
		local, _ := netip.AddrFromSlice(adv)
		ba := ipam.HostOverlayAddr(local)
		acfg.Address = adv.String()
		acfg.Overlay = &hostnet.Overlay{Bridge: "ferry0", VXLAN: "fvx0", VNI: o.vni, Port: 4789, Local: adv,
			BridgeAddr: &net.IPNet{IP: ba.Addr().AsSlice(), Mask: net.CIDRMask(ba.Bits(), 32)}}
		for _, p := range o.overlayPeers {
			ip := net.ParseIP(p).To4()
			if ip == nil {
				return fmt.Errorf("--overlay-peer %q is not an IPv4 address", p)
			}
			acfg.OverlayPeers = append(acfg.OverlayPeers, ip)
		}
	}
	ag, err := agent.New(acfg, st)
	if err != nil {
		return err
	}
	apiSrv := apiserver.New(st, func(vm *api.VM) (string, error) {
		if vm.Node != ag.Node() {
			return "", errdefs.New(errdefs.ErrUnavailable, fmt.Sprintf("vm %s runs on node %s; ask that node's API for its console", vm.Spec.Name, dash(vm.Node)))
		}
		return ag.ConsoleLog(vm.Spec.Name), nil
	}, log)
	apiSrv.Cluster = api.ClusterInfo{EtcdEndpoints: endpoints, VNI: o.vni}
	apiSrv.CAs = &apiserver.Signers{Cluster: cas.Cluster, Migration: cas.Migration, Users: cas.Users}
	apiSrv.ClusterCA = cas.Cluster.Cert
	apiSrv.Mirror = st.Mirror(ctx)
	if urls, err := st.ClientURLs(ctx); err == nil && len(urls) > 0 {
		apiSrv.Cluster.EtcdEndpoints = urls
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("API listener: %w", err)
	}
	srv := &http.Server{Handler: apiSrv.Handler(), TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	endpoint := "https://" + ln.Addr().String()
	if err := os.WriteFile(filepath.Join(dataDir, client.EndpointFile), []byte(endpoint+"\n"), 0o644); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("API server: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := ag.Run(ctx); err != nil {
			errc <- err
		} else if ag.Removed() {
			errc <- errors.New("this host was removed from the cluster (ferry node remove): its certificates are revoked")
		}
	}()
	go func() {
		defer wg.Done()
		if o.noLeader {
			return
		}
		daemon.RunControlPlane(ctx, st, daemon.ControlPlane{Node: o.node, HA: o.haTiming,
			MigrationsPerHost: o.migPerHost, MigrationsPerCluster: o.migPerCluster, Log: log})
	}()
	renewAt := o.join
	if renewAt == "" {
		renewAt = ln.Addr().String()
	}
	go renewLoop(ctx, pkiDir, renewAt, o.certCheck, o.certBefore, ag, log)
	log.Info("ferry is up", "api", endpoint, "node", o.node, "data_dir", dataDir)
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

// fetchCluster asks a cluster's API what a joining host needs, with this
// host's node certificate (issued from the cluster CA placed in pkiDir).
func fetchCluster(ctx context.Context, pkiDir, addr string) (*api.ClusterInfo, error) {
	cfg, err := pki.ClientTLS(pkiDir, pki.ServerCert, pki.ServerKey)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	var last error
	for i := 0; i < 30; i++ {
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addr+"/v1/cluster", nil)
		resp, err := hc.Do(req)
		if err == nil {
			var info api.ClusterInfo
			err = json.NewDecoder(resp.Body).Decode(&info)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 && len(info.EtcdEndpoints) > 0 {
				return &info, nil
			}
			if err == nil {
				err = fmt.Errorf("answered %s", resp.Status)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return nil, fmt.Errorf("--join %s: cannot reach the cluster API: %w", addr, last)
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
