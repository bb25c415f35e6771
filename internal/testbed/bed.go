package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
)

// Bed is a cluster of hosts on one machine: each host is a network namespace
// with a veth into a "fabric" namespace holding the underlay bridge; a client
// namespace sits on the same underlay and joins the guests' VXLAN overlay.
// Addresses are from 198.18.0.0/15 only, and no namespace has a route out.
type Bed struct {
	Name       string  `json:"name"`
	Dir        string  `json:"dir"`
	Bin        string  `json:"bin"`
	ImageDir   string  `json:"image_dir"`
	Accel      string  `json:"accel"`
	FabricNS   string  `json:"fabric_ns"`
	ClientNS   string  `json:"client_ns"`
	ClientAddr string  `json:"client_addr"`    // underlay
	ClientIP   string  `json:"client_overlay"` // on the guest overlay
	StorageDir string  `json:"storage_dir"`
	Hosts      []*Host `json:"hosts"`
	// EmulatedLinks: the hosts' underlay ports go through the link
	// forwarder (links.go), whose process is ForwarderPID.
	EmulatedLinks bool `json:"emulated_links,omitempty"`
	ForwarderPID  int  `json:"forwarder_pid,omitempty"`
	// HostCPUs is each host's CPU cap (0: none; cpucap.go).
	HostCPUs float64 `json:"host_cpus,omitempty"`
	// Paths is the number of fabrics (paths.go; 0 or 1: one), and
	// PathKeeperPID the client's path monitor.
	Paths         int `json:"paths,omitempty"`
	PathKeeperPID int `json:"path_keeper_pid,omitempty"`
	// APIVIP is the API's virtual address every host bids for (VRRP;
	// empty: none).
	APIVIP string `json:"api_vip,omitempty"`
}

// Host is one testbed host and its agent.
type Host struct {
	Name    string `json:"name"`
	NS      string `json:"ns"`
	Addr    string `json:"addr"`
	DataDir string `json:"data_dir"`
	RunDir  string `json:"run_dir"`
	PID     int    `json:"pid"`
	// token is the join token for the host's first start (not kept).
	token string
	// ExtraArgs are added to the agent's command line (tests).
	ExtraArgs []string `json:"extra_args,omitempty"`
}

// HostAddr is the underlay address of host hN of any testbed (known
// before it is built, for arguments that name another host).
func HostAddr(n int) string { return underlayPrefix + strconv.Itoa(10+n) }

// HealthRoot is the directory the host's agent reads its health signals
// under (its --health-root): traces written there in the layout of /sys
// are what the host's hardware says.
func (h *Host) HealthRoot() string { return filepath.Join(h.DataDir, "health") }

// Options configure Up.
type Options struct {
	Name     string // short; prefixes namespaces and the directory (default "fbed")
	Hosts    int
	Bin      string // the ferry binary
	ImageDir string
	Accel    string // default tcg
	// HostArgs are extra agent arguments per host index (e.g. another
	// QEMU build with --qemu-binary).
	HostArgs map[int][]string
	// EmulatedLinks puts the link emulator between the hosts (SetLink).
	EmulatedLinks bool
	// HostCPUs caps each host's CPU (its agent and guests, in a cgroup of
	// its own), and tells the agent its guests have that many (0: no cap).
	HostCPUs float64
	// Paths gives every host that many underlay paths, one per fabric
	// (paths.go; 0 or 1: one).
	Paths int
	// APIVIP gives the cluster's API a virtual address (VIPAddr) that
	// every host bids for with VRRP.
	APIVIP bool
}

// VIPAddr is the API's virtual address in a testbed built with APIVIP.
const VIPAddr = underlayPrefix + "250"

const (
	underlayPrefix = "198.18.0."
	clientOctet    = 200
	clientOverlay  = "198.19.255.1/16"
	vni            = 42
)

// StateFile names the file in a testbed's directory that records it.
const StateFile = "testbed.json"

// Dir is where a testbed of this name keeps its state (short, for sockets).
func Dir(name string) string { return filepath.Join("/tmp", name) }

// Up builds the testbed and starts one agent per host, joined into one
// cluster; on any failure it tears down what it made.
func Up(ctx context.Context, o Options) (b *Bed, err error) {
	if o.Name == "" {
		o.Name = "fbed"
	}
	if o.Hosts < 1 || o.Hosts > 50 {
		return nil, fmt.Errorf("testbed: hosts must be 1..50")
	}
	if o.Accel == "" {
		o.Accel = "tcg"
	}
	if o.Paths < 0 || o.Paths > MaxPaths {
		return nil, fmt.Errorf("testbed: paths must be 1..%d, not %d", MaxPaths, o.Paths)
	}
	if o.APIVIP && o.Paths > 1 {
		return nil, fmt.Errorf("testbed: a virtual address for the API and several paths cannot be combined yet")
	}
	if o.Paths > 1 && o.EmulatedLinks {
		return nil, fmt.Errorf("testbed: emulated links and several paths cannot be combined yet")
	}
	if len(o.Name) > 8 || strings.ContainsAny(o.Name, "/ .") {
		return nil, fmt.Errorf("testbed: name %q must be at most 8 plain characters", o.Name)
	}
	dir := Dir(o.Name)
	if _, err := os.Stat(filepath.Join(dir, StateFile)); err == nil {
		return nil, fmt.Errorf("testbed %s already exists (ferry testbed down --name %s)", o.Name, o.Name)
	}
	b = &Bed{Name: o.Name, Dir: dir, Bin: o.Bin, ImageDir: o.ImageDir, Accel: o.Accel,
		FabricNS: o.Name + "-fab", ClientNS: o.Name + "-cl",
		ClientAddr: underlayPrefix + strconv.Itoa(clientOctet), ClientIP: clientOverlay,
		StorageDir: filepath.Join(dir, "storage"), EmulatedLinks: o.EmulatedLinks, HostCPUs: o.HostCPUs}
	if o.APIVIP {
		b.APIVIP = VIPAddr
	}
	addr := HostAddr
	if o.Paths > 1 {
		b.Paths = o.Paths
		addr = func(n int) string { return servicePrefix + strconv.Itoa(10+n) }
		b.ClientAddr = servicePrefix + strconv.Itoa(clientOctet)
	}
	for i := 1; i <= o.Hosts; i++ {
		b.Hosts = append(b.Hosts, &Host{Name: fmt.Sprintf("h%d", i), NS: fmt.Sprintf("%s-h%d", o.Name, i),
			Addr: addr(i), DataDir: filepath.Join(dir, fmt.Sprintf("h%d", i)),
			RunDir: filepath.Join(dir, fmt.Sprintf("r%d", i)), ExtraArgs: o.HostArgs[i-1]})
	}
	defer func() {
		// FERRY_TESTBED_KEEP=1 keeps a testbed that failed to come up, to
		// read its agents' logs; remove it with ferry testbed down.
		if err != nil && os.Getenv("FERRY_TESTBED_KEEP") == "" {
			b.Down()
			b = nil
		}
	}()
	for _, d := range []string{dir, b.StorageDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return b, err
		}
	}
	if err := b.save(); err != nil {
		return b, err
	}
	build := b.buildNetwork
	if b.Paths > 1 {
		build = b.buildPaths
	}
	if err := build(); err != nil {
		return b, err
	}
	if b.Paths > 1 {
		if err := b.startPathKeeper(ctx); err != nil {
			return b, err
		}
	}
	if b.EmulatedLinks {
		if err := b.startForwarder(ctx); err != nil {
			return b, err
		}
	}
	if err := b.makeCAs(); err != nil {
		return b, err
	}
	// etcd members join one at a time (etcd adds one learner-free member
	// at a time safely); the other hosts can start together.
	for i := range b.Hosts {
		if err := b.StartAgent(ctx, i); err != nil {
			return b, err
		}
		if i < Servers(len(b.Hosts)) {
			if err := b.WaitNodes(ctx, i+1); err != nil {
				return b, err
			}
		}
	}
	return b, b.WaitNodes(ctx, len(b.Hosts))
}

// makeCAs makes the cluster's CAs and the testbed's admin credentials.
func (b *Bed) makeCAs() error {
	// The cluster's CAs are made here and given to the first server; the
	// other etcd servers join with server tokens (and are given the CA
	// keys), the other hosts with host tokens. The testbed's own admin
	// credentials are made beside them.
	if _, err := pki.EnsureCA(filepath.Join(b.Dir, "pki"), "ferry testbed CA"); err != nil {
		return err
	}
	uca, err := pki.EnsureUserCA(filepath.Join(b.Dir, "pki"))
	if err != nil {
		return err
	}
	if err := uca.EnsureLeaf(filepath.Join(b.Dir, "pki"), pki.AdminCert, pki.AdminKey, "testbed-admin", pki.RoleAdmin, nil); err != nil {
		return err
	}
	if _, err := pki.EnsureMigrationCA(filepath.Join(b.Dir, "pki")); err != nil {
		return err
	}
	return nil
}

func (b *Bed) buildNetwork() error {
	ip := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := ip("netns", "add", b.FabricNS); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", b.FabricNS, "link", "add", "br0", "type", "bridge"},
		{"-n", b.FabricNS, "link", "set", "br0", "up"},
		{"-n", b.FabricNS, "link", "set", "lo", "up"},
	}
	type member struct{ ns, port, addr string }
	var members []member
	for _, h := range b.Hosts {
		members = append(members, member{h.NS, h.Name, h.Addr})
	}
	members = append(members, member{b.ClientNS, "cl", b.ClientAddr})
	for _, m := range members {
		if err := ip("netns", "add", m.ns); err != nil {
			return err
		}
		if b.EmulatedLinks && m.ns != b.ClientNS {
			// TAP ports the link forwarder carries (links.go).
			steps = append(steps,
				[]string{"-n", m.ns, "tuntap", "add", "dev", "eth0", "mode", "tap"},
				[]string{"-n", b.FabricNS, "tuntap", "add", "dev", m.port, "mode", "tap"})
		} else {
			steps = append(steps,
				[]string{"-n", b.FabricNS, "link", "add", m.port, "type", "veth", "peer", "name", "eth0", "netns", m.ns})
		}
		steps = append(steps,
			[]string{"-n", b.FabricNS, "link", "set", "dev", m.port, "master", "br0", "up"},
			[]string{"-n", m.ns, "link", "set", "lo", "up"},
			[]string{"-n", m.ns, "addr", "add", m.addr + "/24", "dev", "eth0"},
			[]string{"-n", m.ns, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	for _, s := range b.clientOverlay() {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(s, " "), err, bytes.TrimSpace(out))
		}
	}
	return b.floodToHosts()
}

// clientOverlay are the commands that put the client on the guest overlay
// with a VXLAN device of its own.
func (b *Bed) clientOverlay() [][]string {
	vx := []string{"ip", "-n", b.ClientNS, "link", "add", "fvx0", "type", "vxlan", "id", strconv.Itoa(vni), "local", b.ClientAddr,
		"dstport", "4789", "nolearning"}
	if b.Paths < 2 {
		vx = append(vx, "dev", "eth0") // its one underlay device
	}
	return [][]string{vx,
		{"ip", "-n", b.ClientNS, "link", "set", "fvx0", "mtu", "1450"},
		{"ip", "-n", b.ClientNS, "addr", "add", b.ClientIP, "dev", "fvx0"},
		{"ip", "-n", b.ClientNS, "link", "set", "fvx0", "up"},
	}
}

// floodToHosts makes the client's VXLAN send broadcasts to every host.
func (b *Bed) floodToHosts() error {
	for _, h := range b.Hosts {
		out, err := exec.Command("ip", "netns", "exec", b.ClientNS, "bridge", "fdb", "append", "00:00:00:00:00:00",
			"dev", "fvx0", "dst", h.Addr).CombinedOutput()
		if err != nil {
			return fmt.Errorf("client flood entry for %s: %v: %s", h.Addr, err, out)
		}
	}
	return nil
}

// AgentArgs is the command line of host i's agent.
func (b *Bed) AgentArgs(i int) []string {
	h := b.Hosts[i]
	a := []string{"agent", "--advertise", h.Addr, "--data-dir", h.DataDir, "--run-dir", h.RunDir,
		"--storage-dir", b.StorageDir, "--image-dir", b.ImageDir, "--accel", b.Accel, "--node-name", h.Name,
		"--overlay-peer", b.ClientAddr, "--health-root", h.HealthRoot(),
		// Self-healing is off unless a test turns it on (--heal=true in
		// its HostArgs, which come later and win): the testbed's hosts
		// share two cores, and whenever the machine is busy their guests
		// wait for CPU, which healing would answer with moves the test
		// did not ask for.
		"--heal=false"}
	if b.Paths > 1 {
		a = append(a, b.pathArgs()...)
	}
	if b.APIVIP != "" {
		a = append(a, "--api-vip", b.APIVIP)
	}
	if b.HostCPUs > 0 {
		a = append(a, "--capacity-cpus", strconv.FormatFloat(b.HostCPUs, 'f', -1, 64), "--guest-cgroup", cgroupMount(b.Name, h.Name))
	}
	if i == 0 {
		return append(append(a, "--server"), h.ExtraArgs...)
	}
	a = append(a, "--join", b.Hosts[0].Addr+":7443")
	if i < Servers(len(b.Hosts)) {
		a = append(a, "--server") // an etcd member too
	}
	if h.token != "" {
		a = append(a, "--token", h.token)
	}
	return append(a, h.ExtraArgs...)
}

// Servers is how many of n hosts run an etcd member: three when there are
// three or more (so the store survives a host), else one.
func Servers(n int) int {
	if n >= 3 {
		return 3
	}
	return 1
}

// StartAgent starts host i's agent inside its namespace.
func (b *Bed) StartAgent(ctx context.Context, i int) error {
	h := b.Hosts[i]
	if err := os.MkdirAll(filepath.Join(h.DataDir, "pki"), 0o700); err != nil {
		return err
	}
	h.token = ""
	first := !exists(filepath.Join(h.DataDir, "pki", pki.ServerCert))
	if i == 0 {
		// The first server holds the CAs the testbed made (so that its
		// own admin credentials are valid); every other host joins.
		for _, f := range []string{pki.CACert, pki.CAKey, pki.MigrationCACert, pki.MigrationCAKey, pki.UserCACert, pki.UserCAKey} {
			data, err := os.ReadFile(filepath.Join(b.Dir, "pki", f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(h.DataDir, "pki", f), data, 0o600); err != nil {
				return err
			}
		}
	} else if first {
		// First start: a one-time token, a server token for an etcd server
		// (which is given the CA keys with it).
		cl, err := b.Client(0)
		if err != nil {
			return err
		}
		tok, err := cl.CreateToken(ctx, api.TokenCreateRequest{TTL: "10m", Server: i < Servers(len(b.Hosts))})
		if err != nil {
			return fmt.Errorf("testbed: join token for %s: %w", h.Name, err)
		}
		h.token = tok.Token
	}
	if b.HostCPUs > 0 {
		if err := mountCPUCap(b.Name, h.Name, b.HostCPUs); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(filepath.Join(h.DataDir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, b.Bin}, b.AgentArgs(i)...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	h.PID = cmd.Process.Pid
	go cmd.Wait() // reap it if it ends while we run; Down kills by pid otherwise
	return b.save()
}

// StopAgent signals host i's agent and waits until it has exited.
func (b *Bed) StopAgent(i int, sig syscall.Signal) error {
	h := b.Hosts[i]
	if h.PID == 0 {
		return nil
	}
	syscall.Kill(h.PID, sig)
	deadline := time.Now().Add(20 * time.Second)
	for qemu.Running(h.PID) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if qemu.Running(h.PID) {
		syscall.Kill(h.PID, syscall.SIGKILL)
	}
	h.PID = 0
	return b.save()
}

// KillHost crashes host i: every process in its namespace (agent, embedded
// etcd, watchdog, QEMUs) gets SIGKILL at once, as if the machine lost power.
// It returns once they are all gone.
func (b *Bed) KillHost(i int) error {
	h := b.Hosts[i]
	// Kill until the namespace stays empty: a QEMU daemonizing at this
	// moment forks a child that an earlier scan did not see (power loss
	// takes it too).
	deadline := time.Now().Add(10 * time.Second)
	for empty := 0; empty < 3; {
		pids := pidsInNetns(h.NS)
		if len(pids) == 0 {
			empty++
			time.Sleep(5 * time.Millisecond)
			continue
		}
		empty = 0
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for _, pid := range pids {
			for qemu.Running(pid) {
				if time.Now().After(deadline) {
					return fmt.Errorf("host %s: pid %d survived SIGKILL", h.Name, pid)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	h.PID = 0
	return b.save()
}

// WaitNodes waits until n hosts are registered and ready.
func (b *Bed) WaitNodes(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var last error
	for {
		cl, err := b.Client(0)
		if err == nil {
			nodes, err := cl.ListNodes(ctx)
			if err == nil {
				ready := 0
				for _, nd := range nodes {
					if nd.State == "ready" {
						ready++
					}
				}
				if ready >= n {
					return nil
				}
				err = fmt.Errorf("%d of %d hosts ready", ready, n)
			}
			last = err
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testbed: hosts not ready: %v\n%s", last, b.LogTail(0, 15))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Client is an API client that talks to host i's API from inside its namespace.
func (b *Bed) Client(i int) (*client.Client, error) {
	h := b.Hosts[i]
	cfg, err := pki.ClientTLS(filepath.Join(b.Dir, "pki"), pki.AdminCert, pki.AdminKey)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: cfg, DialContext: DialIn(h.NS), ForceAttemptHTTP2: true}
	return client.NewWithTransport("https://"+h.Addr+":7443", tr), nil
}

// HTTPClient returns an HTTP client whose connections start in namespace ns
// (e.g. the client namespace, to reach guests on the overlay).
func (b *Bed) HTTPClient(ns string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: DialIn(ns), DisableKeepAlives: true}}
}

// DialIn returns a dial function that opens sockets inside network namespace
// ns: a socket belongs to the namespace of the thread that created it.
func DialIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = linkemu.InNS(ns, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// LogTail returns the end of host i's agent log.
func (b *Bed) LogTail(i, n int) string {
	data, _ := os.ReadFile(filepath.Join(b.Hosts[i].DataDir, "agent.log"))
	l := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func (b *Bed) save() error {
	data, _ := json.MarshalIndent(b, "", "  ")
	tmp := filepath.Join(b.Dir, StateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(b.Dir, StateFile))
}

// Load reads a testbed's state.
func Load(name string) (*Bed, error) {
	data, err := os.ReadFile(filepath.Join(Dir(name), StateFile))
	if err != nil {
		return nil, fmt.Errorf("testbed %s: %w", name, err)
	}
	var b Bed
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// Down removes everything the testbed made: every process running in its
// namespaces (agents and their QEMUs), the namespaces with their devices,
// and its directory. It works from the names alone, so it also cleans up
// after a crash that left no state file.
func Down(name string) error {
	var errs []error
	nss := namespaces(name)
	for _, ns := range nss {
		for _, pid := range pidsInNetns(ns) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, ns := range nss {
		for len(pidsInNetns(ns)) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns delete %s: %v: %s", ns, err, bytes.TrimSpace(out)))
		}
	}
	// The cgroups' mounts first: removing the directory must never reach
	// into a cgroup.
	if err := unmountCPUCaps(name); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(Dir(name)); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(name); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Down removes this testbed (see the package function Down).
func (b *Bed) Down() error { return Down(b.Name) }

// namespaces lists the network namespaces of testbed name.
func namespaces(name string) []string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var nss []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && strings.HasPrefix(f[0], name+"-") {
			nss = append(nss, f[0])
		}
	}
	return nss
}

// pidsInNetns finds the processes whose network namespace is ns.
func pidsInNetns(ns string) []int {
	var want syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", ns), &want); err != nil {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) != nil {
			continue
		}
		if st.Ino == want.Ino && st.Dev == want.Dev && qemu.Running(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }
