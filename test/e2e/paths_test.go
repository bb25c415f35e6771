package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/testbed"
)

// Three hosts on two fabrics. One path of the guest's host is cut (every
// frame dropped both ways, the link left up) while the guest migrates
// away and a client holds a TCP stream to it; then again while it
// migrates back. Each flow is hashed onto one path: the first cut is of
// the path the migration's stream leaves by, the second of the path the
// client's stream leaves the guest's host by, so both certainly lose the
// path they were on. The migrations complete, the stream stays intact, no
// host is judged unreachable, and each cut path is withdrawn from the
// routes (an event) and restored once it answers again.
func TestPathCutKeepsEverythingRunning(t *testing.T) {
	b, cl := newBedWith(t, testbed.Options{Hosts: 3, Paths: 2})
	ctx := ctxT(t, 8*time.Minute)
	started := time.Now()
	routes := func(host *testbed.Host, to string) string {
		out, _ := exec.Command("ip", "-n", host.NS, "route", "show", to).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	if r := routes(b.Hosts[0], b.Hosts[1].Addr); strings.Count(r, "nexthop") != 2 {
		t.Fatalf("h1's route to h2 (%s) is not over both paths:\n%s", b.Hosts[1].Addr, r)
	}
	nodes, err := cl.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if len(n.Paths) != 2 {
			t.Errorf("host %s reports paths %v, want its two", n.Name, n.Paths)
		}
	}

	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "pv", Memory: "256M"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "pv", 2*time.Minute, "running", healthyRunning)
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")
	hc := b.HTTPClient(b.ClientNS, 30*time.Second)
	resp, err := hc.Post("http://"+ip+"/memory?size=64", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("filling the guest's memory: %s", resp.Status)
	}
	downs := followKind(t, cl, "path-")
	w, err := testbed.WatchStream(context.Background(), b.HTTPClient(b.ClientNS, 0), ip, 10*time.Millisecond)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	defer w.Stop()

	// moveWithCut migrates the guest from its host to another at a
	// bandwidth that makes the move last several seconds, cuts path k of
	// the source once a quarter is copied, and checks the move completes
	// and the cut path is withdrawn and reported.
	moveWithCut := func(cutStream bool) {
		cur, err := cl.GetVM(ctx, "pv")
		if err != nil {
			t.Fatal(err)
		}
		src := cur.Node
		dst := b.Hosts[0].Name
		if dst == src {
			dst = b.Hosts[1].Name
		}
		srcHost := b.Hosts[hostIndex(b, src)]
		var k int
		if cutStream {
			k = busiestPath(t, srcHost.NS, "udp dport 4789") // the guest's stream is all its overlay carries now
		}
		m, err := cl.MigrateVM(ctx, "pv", api.MigrateRequest{To: dst, MaxBandwidth: "8M", Strategy: "precopy"})
		if err != nil {
			t.Fatal(err)
		}
		waitMigPhase(t, cl, "pv", m.ID, api.MigCopying)
		waitCopied(t, cl, "pv", m.ID, 16<<20)
		if !cutStream {
			k = busiestPath(t, srcHost.NS, "meta l4proto tcp") // the migration's stream
		}
		cutAt := time.Now()
		if err := b.CutPath(src, k, true); err != nil {
			t.Fatal(err)
		}
		t.Logf("cut path %d of %s (the one the %s leaves by) during the move to %s", k, src, map[bool]string{true: "client's stream", false: "migration"}[cutStream], dst)
		// The others withdraw the path from their routes to src.
		var peer *testbed.Host
		for _, h := range b.Hosts {
			if h.Name != src {
				peer = h
				break
			}
		}
		srcAddr := b.Hosts[hostIndex(b, src)].Addr
		pollEvery(t, 10*time.Second, 50*time.Millisecond, "the cut path withdrawn", func() (bool, string) {
			r := routes(peer, srcAddr)
			return !strings.Contains(r, "nexthop") && strings.Contains(r, "eth"), peer.Name + "'s route: " + r
		})
		t.Logf("%s's route to %s over one path %s after the cut: %s", peer.Name, src, time.Since(cutAt).Round(time.Millisecond), routes(peer, srcAddr))
		end := waitMigEnd(t, cl, "pv", m.ID)
		if end.Phase != api.MigCompleted {
			t.Fatalf("the move with path %d of %s cut ended %s: %s", k, src, end.Phase, end.Error)
		}
		t.Logf("the move completed in %s (%d bytes)", end.Finished.Sub(end.Started).Round(time.Millisecond), end.BytesSent)
		ev := downs.wait(t, "path-down", 10*time.Second)
		if !strings.Contains(ev.Message, src) {
			t.Errorf("the path-down event %q does not name %s", ev.Message, src)
		}
		waitUntil(t, 10*time.Second, "the source reporting its path down", func() (bool, string) {
			n, err := cl.ListNodes(ctx)
			for _, x := range n {
				if x.Name == src && len(x.PathsDown) > 0 {
					return true, ""
				}
			}
			return false, "no paths_down yet (" + errString(err) + ")"
		})
		// Restore: the path comes back into the routes.
		if err := b.CutPath(src, k, false); err != nil {
			t.Fatal(err)
		}
		restored := time.Now()
		pollEvery(t, 20*time.Second, 100*time.Millisecond, "the path restored", func() (bool, string) {
			r := routes(peer, srcAddr)
			return strings.Count(r, "nexthop") == 2, peer.Name + "'s route: " + r
		})
		t.Logf("restored into %s's route %s after the path came back", peer.Name, time.Since(restored).Round(time.Millisecond))
		downs.mu.Lock()
		downs.seen = slices.DeleteFunc(downs.seen, func(e api.Event) bool { return true })
		downs.mu.Unlock()
	}
	moveWithCut(false)
	moveWithCut(true)

	// A lossy path (a tenth of its frames dropped, the rest carried) is
	// withdrawn too, and comes back when the loss ends.
	h := b.Hosts[0]
	peer := b.Hosts[1]
	if err := b.LosePath(h.Name, 1, 10); err != nil {
		t.Fatal(err)
	}
	lossyAt := time.Now()
	pollEvery(t, 30*time.Second, 100*time.Millisecond, "the lossy path withdrawn", func() (bool, string) {
		r := routes(peer, h.Addr)
		return !strings.Contains(r, "nexthop") && strings.Contains(r, "eth0"), peer.Name + "'s route: " + r
	})
	t.Logf("%s withdrew %s's lossy path %s after the loss began", peer.Name, h.Name, time.Since(lossyAt).Round(time.Millisecond))
	if ev := downs.wait(t, "path-down", 10*time.Second); !strings.Contains(ev.Message, "lossy") {
		t.Logf("the first path-down event after the loss: %s", ev.Message)
	}
	if err := b.LosePath(h.Name, 1, 0); err != nil {
		t.Fatal(err)
	}
	pollEvery(t, 30*time.Second, 100*time.Millisecond, "the path restored after the loss", func() (bool, string) {
		r := routes(peer, h.Addr)
		return strings.Count(r, "nexthop") == 2, peer.Name + "'s route: " + r
	})

	r := w.Stop()
	t.Logf("the stream: %d lines over %s, longest gap %s, intact %v %s", r.Lines, r.Duration.Round(time.Millisecond), r.LongestGap.Round(time.Millisecond), r.Intact, r.Problem)
	if !r.Intact {
		t.Errorf("the client's stream broke: %s", r.Problem)
	}
	// No host was judged unreachable or lost, and none fenced itself.
	evs, err := cl.Events(ctx, 2000)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Time.Before(started) {
			continue
		}
		switch e.Kind {
		case "host-unreachable", "host-lost", "self-fenced", "ha-restart":
			t.Errorf("event %s at %s: %s", e.Kind, e.Time.Format("15:04:05.000"), e.Message)
		}
	}
}

// busiestPath is the path device (eth0, eth1: its number) over which a
// host's namespace sent the most packets that match (an nft expression:
// the guests' overlay is "udp dport 4789", a migration "meta l4proto
// tcp") over the next second.
func busiestPath(t *testing.T, ns, match string) int {
	t.Helper()
	nft := func(stdin string, args ...string) string {
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v in %s: %v: %s", args, ns, err, out)
		}
		return string(out)
	}
	nft(fmt.Sprintf(`table inet pathcount {
	chain out {
		type filter hook postrouting priority 0; policy accept;
		oifname "eth0" %[1]s counter
		oifname "eth1" %[1]s counter
	}
}
`, match), "-f", "-")
	time.Sleep(time.Second)
	out := nft("", "list", "table", "inet", "pathcount")
	nft("", "delete", "table", "inet", "pathcount")
	var bytes [2]int64
	for _, l := range strings.Split(out, "\n") {
		var dev string
		var n int64
		if i := strings.Index(l, "oifname \"eth"); i >= 0 {
			dev = l[i+len("oifname \"eth") : i+len("oifname \"eth")+1]
		}
		if i := strings.Index(l, " bytes "); i >= 0 && dev != "" {
			fmt.Sscan(l[i+len(" bytes "):], &n)
			k, _ := strconv.Atoi(dev)
			bytes[k] = n
		}
	}
	t.Logf("%s sent %d bytes of %q on eth0 and %d on eth1 in a second", ns, bytes[0], match, bytes[1])
	if bytes[0] == 0 && bytes[1] == 0 {
		t.Fatalf("%s sent nothing of %q in a second:\n%s", ns, match, out)
	}
	if bytes[1] > bytes[0] {
		return 1
	}
	return 0
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
