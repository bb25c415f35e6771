package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/testbed"
)

// The web dashboard in a real browser (Debian's headless Chromium, which
// make test installs, driven over the DevTools protocol): an operator logs
// in through the one-time link of `ferry dashboard`, starts a migration
// with the page's button and watches it copy and complete, drains a host
// by clicking, and sees the guest move off it. Screenshots go to
// $FERRY_SCREENSHOTS (the README's pictures) or the test's directory.
// (Long on purpose: a scenario read top to bottom; split, its story would scatter.)
func TestDashboardInABrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed (make test installs Debian's chromium package)")
	}
	b, admin := newBedWith(t, testbed.Options{Hosts: 2, EmulatedLinks: true})
	ctx := ctxT(t, 6*time.Minute)
	// A slow link, so that the move takes long enough to watch.
	if err := b.SetLink(ctx, "h1", "h2", linkemu.Profile{RateBits: 40e6, Delay: time.Millisecond}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateVM(ctx, api.VMCreateRequest{Name: "web", Memory: "256M"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, admin, "web", 90*time.Second, "running", healthyRunning)
	home, other := vm.Node, "h1"
	if home == "h1" {
		other = "h2"
	}
	// The guest fills 96 MiB with data, so that there is something to copy.
	hc := b.HTTPClient(b.ClientNS, 30*time.Second)
	ip, _, _ := strings.Cut(vm.Spec.IP, "/")
	resp, err := hc.Post("http://"+ip+"/memory?size=96", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("filling the guest's memory: %s", resp.Status)
	}

	// The operator's one-time link; the browser reaches host 0's API
	// through a forwarder (the testbed's hosts live in namespaces).
	op := userClient(t, b, admin, "olga", pki.RoleOperator)
	login, err := op.DashboardLogin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if login.User != "olga" || login.Role != "operator" {
		t.Fatalf("log-in link for %+v", login)
	}
	fwd := forward(t, b.Hosts[0])
	u, err := url.Parse(login.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = fwd

	shots := os.Getenv("FERRY_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.IgnoreCertErrors,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000), chromedp.Flag("disable-sync", true))...)
	defer cancelAlloc()
	page, cancelPage := chromedp.NewContext(actx)
	defer cancelPage()
	// text is what the page shows in the element of that id now ("" when
	// there is none yet).
	text := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(page, chromedp.Evaluate[string](`(document.getElementById(`+strconv.Quote(id)+`) || {}).innerText || ""`))
		if err != nil {
			t.Fatalf("reading #%s: %v", id, err)
		}
		return s
	}
	click := func(id string) {
		t.Helper()
		// The page redraws its hosts every 2 s: a button found just
		// before a redraw is gone when the click lands. Click again.
		var err error
		for try := 0; try < 5; try++ {
			if err = chromedp.Do(page, chromedp.Click(chromedp.ID(id))); err == nil || !strings.Contains(err.Error(), "Could not find node") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("clicking #%s: %v", id, err)
		}
	}
	shot := func(name string) {
		png, err := chromedp.Run(page, chromedp.FullScreenshot(100))
		if err != nil {
			t.Errorf("screenshot: %v", err)
			return
		}
		if err := os.WriteFile(filepath.Join(shots, name), png, 0o644); err != nil {
			t.Error(err)
		}
	}
	until := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(d); !cond(); time.Sleep(250 * time.Millisecond) {
			if time.Now().After(end) {
				shot("failed.png")
				t.Fatalf("the dashboard did not show %s within %s", what, d)
			}
		}
	}

	navigated := time.Now()
	if err := chromedp.Do(page, chromedp.Navigate(u.String()), chromedp.WaitVisible(chromedp.ID("host-"+home))); err != nil {
		t.Fatalf("logging in with the link: %v", err)
	}
	until("both hosts ready", 20*time.Second, func() bool { return strings.Contains(text("summary"), "2 of 2 hosts ready") })
	if who := text("who"); who != "olga (operator)" {
		t.Errorf("the page says it is %q, want olga (operator)", who)
	}
	until("the guest running on its host", 20*time.Second, func() bool { return strings.Contains(text("host-"+home), "web") })
	until("the link matrix", 60*time.Second, func() bool { return strings.Contains(text("link-h1-h2"), "ms") })
	// The charts draw the history the API server kept before the page
	// was opened, not only what the page saw.
	until("the host's load chart", 20*time.Second, func() bool { return text("chart-load-"+home) != "" })
	first, err := chromedp.Run(page, chromedp.Evaluate[float64](`hist.times.length ? hist.times[0] : 0`))
	if err != nil {
		t.Fatal(err)
	}
	if before := navigated.Sub(time.UnixMilli(int64(first))); first == 0 || before < time.Second {
		t.Errorf("the charts start %v before the page was opened (first sample %v): the history from before it is missing", before, first)
	} else {
		t.Logf("the charts start %v before the page was opened", before.Round(time.Second))
	}
	until("the traffic by class", 20*time.Second, func() bool { return strings.Contains(text("traffic-"+home), "/") && text("chart-traffic-"+home) != "" })
	// The link worked once; a second use is refused.
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if resp, err := plain.Get(u.String()); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a second use of the log-in link: %v %v, want 401", resp, err)
	} else {
		resp.Body.Close()
	}
	shot("dashboard.png")

	// Migrate with the page's button, and watch it.
	if err := chromedp.Do(page, chromedp.SetValue(chromedp.ID("migrate-target-web"), other)); err != nil {
		t.Fatal(err)
	}
	click("migrate-web")
	seen := map[string]bool{}
	var progress, trafficRow string
	var migSent, migRecv float64 // the most the hosts reported, bytes per second
	var polled time.Time
	until("the migration completed", 3*time.Minute, func() bool {
		if time.Since(polled) > time.Second {
			polled = time.Now()
			if nodes, err := admin.ListNodes(ctx); err == nil {
				for _, n := range nodes {
					if n.Traffic != nil && n.Name == home && n.Traffic.Sent.Migration > migSent {
						migSent = n.Traffic.Sent.Migration
					}
					if n.Traffic != nil && n.Name == other && n.Traffic.Received.Migration > migRecv {
						migRecv = n.Traffic.Received.Migration
					}
				}
			}
			if row := text("traffic-" + home); migSent > 0 && trafficRow == "" {
				trafficRow = row
			}
		}
		ph := text("mig-phase-web")
		if ph != "" && !seen[ph] {
			seen[ph] = true
			t.Logf("the dashboard shows the migration %s", ph)
		}
		if ph == "copying" && progress == "" {
			if row := text("mig-web"); strings.Contains(row, "MiB of") && !strings.Contains(row, "0 MiB of") {
				progress = row
				shot("dashboard-migration.png")
			}
		}
		return ph == "completed"
	})
	if !seen["copying"] || progress == "" {
		t.Errorf("the dashboard never showed the move copying with its progress (phases seen: %v)", seen)
	}
	t.Logf("while copying the page showed: %s; its traffic row: %s", progress, trafficRow)
	// Over a 40 Mbit/s link (5 MB/s) the move's bytes are counted as
	// migration traffic at both ends.
	t.Logf("migration traffic reported: %.2f MB/s sent by %s, %.2f MB/s received by %s", migSent/1e6, home, migRecv/1e6, other)
	if migSent < 1e6 || migRecv < 1e6 {
		t.Errorf("the hosts reported at most %.0f B/s of migration sent (%s) and %.0f B/s received (%s) during a move over a 5 MB/s link", migSent, home, migRecv, other)
	}
	if actual := text("mig-actual-web"); !strings.HasSuffix(actual, " s") {
		t.Errorf("a completed migration shows its time as %q", actual)
	}
	until("the guest on its new host", 20*time.Second, func() bool { return strings.Contains(text("host-"+other), "web") })

	// Drain the guest's new host by clicking (twice: the page asks again).
	click("drain-" + other)
	time.Sleep(300 * time.Millisecond)
	click("drain-" + other)
	until("the host in maintenance", 20*time.Second, func() bool { return text("host-state-"+other) == "maintenance" })
	until("the drain moving the guest back", 3*time.Minute, func() bool {
		return strings.Contains(text("host-"+home), "web") && !strings.Contains(text("host-"+other), "web")
	})
	shot("dashboard-drain.png")
	if vm, err := admin.GetVM(ctx, "web"); err != nil || vm.Node != home {
		t.Errorf("after the drain by the page, web is on %v (%v), want %s", vm.Node, err, home)
	}
	if tl := text("timeline"); !strings.Contains(tl, "host-drained") && !strings.Contains(tl, "drain") {
		t.Logf("the HA timeline: %s", tl)
	}
	click("undrain-" + other)
	until("the host ready again", 20*time.Second, func() bool { return text("host-state-"+other) == "ready" })
}

// forward listens on a loopback port of this namespace and carries each
// connection to host h's API inside its namespace; it returns host:port.
func forward(t *testing.T, h *testbed.Host) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dial := testbed.DialIn(h.NS)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := dial(context.Background(), "tcp", h.Addr+":7443")
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}
