package testbed

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/ferryvm/ferry/internal/paths"
)

// With Options.Paths = N (2 or more), the underlay is N fabrics: a bridge
// per fabric in the fabric namespace, and each host (and the client) has
// one port on each, ethK with 198.18.K.(10+n)/24. A host's own address,
// which the others and the client reach it at, is 198.18.4.(10+n)/32 on
// its loopback device, over a multipath route with one next hop per
// fabric; its agent runs with --path eth0 --path eth1 ... and keeps those
// routes to the paths that answer (package paths). The client has no
// agent: `ferry testbed paths` runs the same monitor in its namespace.
// CutPath black-holes one host's port on one fabric (the bridge forwards
// nothing from or to it, the link stays up: the silent failure a monitor
// is for).

// MaxPaths is the most fabrics a testbed has.
const MaxPaths = 4

const servicePrefix = "198.18.4."

// pathAddr is member octet's address on fabric k.
func pathAddr(k, octet int) string { return "198.18." + strconv.Itoa(k) + "." + strconv.Itoa(octet) }

// pathPort is the fabric namespace's port of a member on fabric k.
func pathPort(member string, k int) string {
	if k == 0 {
		return member
	}
	return member + "p" + strconv.Itoa(k)
}

func octetOf(addr string) int {
	i := strings.LastIndexByte(addr, '.')
	n, _ := strconv.Atoi(addr[i+1:])
	return n
}

// buildPaths builds the fabrics, the ports and the first routes.
func (b *Bed) buildPaths() error {
	run := func(args ...string) error {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := run("ip", "netns", "add", b.FabricNS); err != nil {
		return err
	}
	steps := [][]string{{"ip", "-n", b.FabricNS, "link", "set", "lo", "up"}}
	for k := range b.Paths {
		br := "br" + strconv.Itoa(k)
		steps = append(steps, []string{"ip", "-n", b.FabricNS, "link", "add", br, "type", "bridge"},
			[]string{"ip", "-n", b.FabricNS, "link", "set", br, "up"})
	}
	type member struct {
		ns, port, svc string
	}
	var members []member
	for _, h := range b.Hosts {
		members = append(members, member{h.NS, h.Name, h.Addr})
	}
	members = append(members, member{b.ClientNS, "cl", b.ClientAddr})
	for _, m := range members {
		if err := run("ip", "netns", "add", m.ns); err != nil {
			return err
		}
		steps = append(steps,
			[]string{"ip", "-n", m.ns, "link", "set", "lo", "up"},
			[]string{"ip", "-n", m.ns, "addr", "add", m.svc + "/32", "dev", "lo"},
			[]string{"ip", "netns", "exec", m.ns, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"})
		for k := range b.Paths {
			dev, port := "eth"+strconv.Itoa(k), pathPort(m.port, k)
			steps = append(steps,
				[]string{"ip", "-n", b.FabricNS, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", m.ns},
				[]string{"ip", "-n", b.FabricNS, "link", "set", "dev", port, "master", "br" + strconv.Itoa(k), "up"},
				[]string{"ip", "-n", m.ns, "addr", "add", pathAddr(k, octetOf(m.svc)) + "/24", "dev", dev},
				[]string{"ip", "-n", m.ns, "link", "set", dev, "up"})
		}
	}
	// Every member reaches every other's own address over all fabrics
	// until the monitors take over.
	for _, m := range members {
		for _, o := range members {
			if o.svc == m.svc {
				continue
			}
			r := []string{"ip", "-n", m.ns, "route", "add", o.svc + "/32", "src", m.svc}
			for k := range b.Paths {
				r = append(r, "nexthop", "via", pathAddr(k, octetOf(o.svc)), "dev", "eth"+strconv.Itoa(k))
			}
			steps = append(steps, r)
		}
	}
	steps = append(steps, b.clientOverlay()...)
	for _, s := range steps {
		if err := run(s...); err != nil {
			return err
		}
	}
	return b.floodToHosts()
}

// pathArgs are a host's agent arguments for its paths.
func (b *Bed) pathArgs() []string {
	var a []string
	for k := range b.Paths {
		a = append(a, "--path", "eth"+strconv.Itoa(k))
	}
	peer := "client=" + b.ClientAddr
	for k := range b.Paths {
		peer += "/" + pathAddr(k, octetOf(b.ClientAddr))
	}
	return append(a, "--path-peer", peer)
}

// startPathKeeper runs `ferry testbed paths` in the client's namespace.
func (b *Bed) startPathKeeper(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(b.Dir, "paths.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", b.ClientNS, b.Bin, "testbed", "paths", "--name", b.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	b.PathKeeperPID = cmd.Process.Pid
	go cmd.Wait()
	return b.save()
}

// KeepClientPaths runs the client's path monitor of testbed name until ctx
// ends (the body of `ferry testbed paths`, in the client's namespace).
func KeepClientPaths(ctx context.Context, name string, log *slog.Logger) error {
	b, err := Load(name)
	if err != nil {
		return err
	}
	if b.Paths < 2 {
		return fmt.Errorf("testbed %s has one path", name)
	}
	var local []paths.Local
	for k := range b.Paths {
		local = append(local, paths.Local{Dev: "eth" + strconv.Itoa(k), Addr: netip.MustParsePrefix(pathAddr(k, octetOf(b.ClientAddr)) + "/24")})
	}
	m, err := paths.New(paths.Config{Local: local, Service: netip.MustParseAddr(b.ClientAddr), Router: paths.NetlinkRouter{}, Log: log})
	if err != nil {
		return err
	}
	var peers []paths.Peer
	for _, h := range b.Hosts {
		p := paths.Peer{Name: h.Name, Service: netip.MustParseAddr(h.Addr)}
		for k := range b.Paths {
			p.Paths = append(p.Paths, netip.MustParseAddr(pathAddr(k, octetOf(h.Addr))))
		}
		peers = append(peers, p)
	}
	m.SetPeers(peers)
	return m.Run(ctx)
}

// CutPath black-holes host's port on fabric k (the fabric's bridge
// forwards no frame from or to it, the link stays up), or restores it.
func (b *Bed) CutPath(host string, k int, cut bool) error {
	if cut {
		return b.LosePath(host, k, 100)
	}
	return b.LosePath(host, k, 0)
}

// LosePath makes the fabric's bridge drop pct percent of the frames from
// and to host's port on fabric k, at random (100: all; 0: none).
func (b *Bed) LosePath(host string, k int, pct int) error {
	if pct < 0 || pct > 100 {
		return fmt.Errorf("testbed: a loss is 0..100 %%, not %d", pct)
	}
	if b.Paths < 2 {
		return fmt.Errorf("testbed %s has one path (ferry testbed up --paths 2)", b.Name)
	}
	h := b.host(host)
	if h == nil || k < 0 || k >= b.Paths {
		return fmt.Errorf("testbed %s has no path %d of host %q (hosts h1..h%d, paths 0..%d)", b.Name, k, host, len(b.Hosts), b.Paths-1)
	}
	port := pathPort(h.Name, k)
	// A table of the fabric namespace's bridge family per cut port: the
	// bridge forwards nothing from or to it.
	table := "cut_" + port
	exec.Command("ip", "netns", "exec", b.FabricNS, "nft", "delete", "table", "bridge", table).Run()
	if pct == 0 {
		return nil
	}
	match := ""
	if pct < 100 {
		match = fmt.Sprintf(" numgen random mod 100 < %d", pct)
	}
	rules := fmt.Sprintf(`table bridge %s {
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname %q%s drop
		oifname %q%s drop
	}
}
`, table, port, match, port, match)
	cmd := exec.Command("ip", "netns", "exec", b.FabricNS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dropping %d %% on path %d of %s (nft): %v: %s", pct, k, host, err, strings.TrimSpace(string(out)))
	}
	return nil
}
