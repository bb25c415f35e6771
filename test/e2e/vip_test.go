package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/testbed"
)

// holders are the testbed namespaces (hosts and the client) that hold the
// API's virtual address now, but the dead.
func holders(b *testbed.Bed, dead ...string) []string {
	var out []string
	nss := []string{b.ClientNS}
	for _, h := range b.Hosts {
		if !slices.Contains(dead, h.NS) {
			nss = append(nss, h.NS)
		}
	}
	for _, ns := range nss {
		o, _ := exec.Command("ip", "-n", ns, "-4", "addr", "show", "dev", "eth0").Output()
		if strings.Contains(string(o), " "+b.APIVIP+"/") {
			out = append(out, ns)
		}
	}
	return out
}

// vipClient is the admin's client, in the client's namespace, pointed at
// the virtual address.
func vipClient(t *testing.T, b *testbed.Bed) *client.Client {
	cfg, err := pki.ClientTLS(filepath.Join(b.Dir, "pki"), pki.AdminCert, pki.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: cfg, DialContext: testbed.DialIn(b.ClientNS), DisableKeepAlives: true}
	return client.NewWithTransport("https://"+b.APIVIP+":7443", tr)
}

// The API's virtual address is held by exactly one host; when that host
// dies another takes it over and the CLI, pointed at the address, works
// again after a pause. keepalived (Debian's) in the same VRRP group with a
// lower priority stays backup; with a higher one it takes the address and
// Ferry's holder lets go; when it stops, a Ferry host takes it back. Never
// two holders.
func TestAPIVirtualAddressFollowsAHealthyHost(t *testing.T) {
	keepalived, err := exec.LookPath("keepalived")
	if err != nil {
		t.Fatal("keepalived is not installed (make test installs Debian's keepalived package)")
	}
	b, _ := newBedWith(t, testbed.Options{Hosts: 3, APIVIP: true})
	ctx := ctxT(t, 5*time.Minute)
	var last, dead []string
	one := func(what string, d time.Duration, want func(string) bool) string {
		t.Helper()
		for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
			last = holders(b, dead...)
			if len(last) > 1 {
				t.Fatalf("%s: the address is held by %v at once", what, last)
			}
			if len(last) == 1 && want(last[0]) {
				return last[0]
			}
			if time.Now().After(end) {
				t.Fatalf("%s: not within %s (holders %v)", what, d, last)
			}
		}
	}
	isHost := func(ns string) bool { return ns != b.ClientNS }
	holder := one("a host holding the address", 10*time.Second, isHost)
	t.Logf("%s holds %s", holder, b.APIVIP)
	cl := vipClient(t, b)
	if _, err := cl.ListNodes(ctx); err != nil {
		t.Fatalf("the API at the virtual address: %v", err)
	}

	// The holder dies.
	idx := -1
	for i, h := range b.Hosts {
		if h.NS == holder {
			idx = i
		}
	}
	killed := time.Now()
	if err := b.KillHost(idx); err != nil {
		t.Fatal(err)
	}
	// A dead machine's network card is silent too (the testbed's hosts
	// are namespaces, whose kernel would otherwise go on answering ARP for
	// the address its dead agent held).
	if out, err := exec.Command("ip", "-n", holder, "link", "set", "eth0", "down").CombinedOutput(); err != nil {
		t.Fatalf("silencing the dead host: %v %s", err, out)
	}
	dead = append(dead, holder)
	var answered time.Time
	for end := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if hs := holders(b, dead...); len(hs) > 1 {
			t.Fatalf("after the holder died the address is held by %v at once", hs)
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cl.ListNodes(cctx)
		cancel()
		if err == nil {
			answered = time.Now()
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the API at the virtual address did not answer within a minute of its holder's death: %v", err)
		}
	}
	next := one("another host holding the address", 5*time.Second, func(ns string) bool { return isHost(ns) && ns != holder })
	t.Logf("%s died; %s holds the address; the API answered there %s after the death", holder, next, answered.Sub(killed).Round(time.Millisecond))
	// The CLI itself, pointed at the address.
	alive := b.Hosts[(idx+1)%len(b.Hosts)]
	out, err := exec.Command("ip", "netns", "exec", b.ClientNS, ferryBin, "--data-dir", alive.DataDir,
		"--server", "https://"+b.APIVIP+":7443", "node", "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), alive.Name) {
		t.Fatalf("ferry node list at the virtual address: %v\n%s", err, out)
	}

	// keepalived joins the group from the client's namespace.
	dir := t.TempDir()
	run := func(priority int) (stop func()) {
		conf := filepath.Join(dir, fmt.Sprintf("keepalived-%d.conf", priority))
		os.WriteFile(conf, []byte(fmt.Sprintf(`global_defs {
  vrrp_version 3
  script_user root
  enable_script_security
}
vrrp_instance api {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority %d
  advert_int 0.1
  virtual_ipaddress {
    %s/32 dev eth0
  }
}
`, priority, b.APIVIP)), 0o644)
		logf, _ := os.Create(filepath.Join(dir, fmt.Sprintf("keepalived-%d.log", priority)))
		cmd := exec.Command("ip", "netns", "exec", b.ClientNS, keepalived, "--dont-fork", "--log-console", "--vrrp",
			"-f", conf, "-p", filepath.Join(dir, "k.pid"), "-r", filepath.Join(dir, "v.pid"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stopped := false
		stop = func() {
			if stopped {
				return
			}
			stopped = true
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			logf.Close()
		}
		t.Cleanup(stop)
		return stop
	}
	stop := run(50)
	// Lower priority: it hears Ferry's holder and stays backup.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if hs := holders(b, dead...); len(hs) != 1 || hs[0] != next {
			log, _ := os.ReadFile(filepath.Join(dir, "keepalived-50.log"))
			t.Fatalf("with keepalived at priority 50 beside Ferry's holder at 100 the holders are %v\n%s", hs, log)
		}
	}
	stop()
	// Higher priority: it takes the address, Ferry's holder lets go.
	stop = run(200)
	took := time.Now()
	one("keepalived taking the address", 10*time.Second, func(ns string) bool { return ns == b.ClientNS })
	t.Logf("keepalived at priority 200 holds the address %s after it started", time.Since(took).Round(time.Millisecond))
	time.Sleep(time.Second)
	if hs := holders(b, dead...); len(hs) != 1 || hs[0] != b.ClientNS {
		t.Fatalf("a second after keepalived took over the holders are %v", hs)
	}
	// keepalived leaves (priority 0): a Ferry host takes it back quickly.
	left := time.Now()
	stop()
	back := one("a Ferry host taking the address back", 5*time.Second, isHost)
	t.Logf("keepalived left; %s took the address back %s later", back, time.Since(left).Round(time.Millisecond))
	if _, err := cl.ListNodes(ctx); err != nil {
		t.Errorf("the API at the virtual address after keepalived left: %v", err)
	}
}
