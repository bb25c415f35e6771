package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/ferryvm/ferry/internal/wait"
)

// A real Prometheus server (Debian's prometheus package, installed by make
// test), configured by `ferry metrics scrape-config` and holding a
// credential with the metrics role, scrapes every host of the testbed over
// mutual TLS, and sees a migration counted; the agents, started with
// --metrics-source pointing at it, read their guests' load histories from
// it, so that a guest's history on the host it moved to is the one it made
// before the move.
// (Long on purpose: a scenario read top to bottom; split, its story would scatter.)
func TestPrometheusScrapesTheCluster(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed (make test installs Debian's prometheus package)")
	}
	port := 19090
	source := fmt.Sprintf("prometheus://%s:%d", testbed.HostAddr(1), port)
	loadArgs := []string{"--load-every", "1s", "--load-period", "144s", "--metrics-source", source} // 3 s buckets
	b, cl := newBedWith(t, testbed.Options{Hosts: 2, HostArgs: map[int][]string{0: loadArgs, 1: loadArgs}})
	h := b.Hosts[0]
	ferry := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", h.NS, ferryBin, "--data-dir", h.DataDir}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ferry %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	ferry("user", "create", "prometheus", "--role", "metrics", "--out", creds)
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(ferry("metrics", "scrape-config", "--cred-dir", creds, "--interval", "1s")), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", h.NS, prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+h.Addr+":"+strconv.Itoa(port), "--log.level=warn")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus log:\n%s", log)
		}
	})
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: testbed.DialIn(h.NS), DisableKeepAlives: true}}
	ask := func(q string) ([]promSample, error) {
		resp, err := hc.Get(fmt.Sprintf("http://%s:%d/api/v1/query?query=%s", h.Addr, port, url.QueryEscape(q)))
		if err != nil {
			return nil, nil // not up yet
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []promSample `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, err
		}
		if r.Status != "success" {
			return nil, fmt.Errorf("%s: %s", r.Status, r.Error)
		}
		return r.Data.Result, nil
	}
	query := func(q string) []promSample {
		t.Helper()
		r, err := ask(q)
		if err != nil {
			t.Fatalf("prometheus query %s: %v", q, err)
		}
		return r
	}
	// Every host is scraped, through TLS with the metrics credential.
	waitProm(t, "every host's /metrics scraped", func() (bool, string) {
		up := query(`up{job="ferry"} == 1`)
		return len(up) == len(b.Hosts), fmt.Sprintf("up: %+v", up)
	})
	waitProm(t, "ferry_build_info of every host", func() (bool, string) {
		r := query(`ferry_build_info`)
		return len(r) == len(b.Hosts), fmt.Sprintf("%+v", r)
	})
	if _, err := cl.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "scraped"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, cl, "scraped", 90*time.Second, "running", healthyRunning)
	waitProm(t, "the guest running in ferry_guests", func() (bool, string) {
		r := query(fmt.Sprintf(`ferry_guests{host=%q,state="running"} >= 1`, vm.Node))
		return len(r) == 1, fmt.Sprintf("%+v", r)
	})
	// The source host's forecast is read from Prometheus: some buckets of
	// the guest's use, none of it in the store.
	before := waitHistory(t, cl, vm.Node, "scraped", source, 8)
	to := b.Hosts[0].Name
	if vm.Node == to {
		to = b.Hosts[1].Name
	}
	m, err := cl.MigrateVM(ctxT(t, 10*time.Second), "scraped", api.MigrateRequest{To: to})
	if err != nil {
		t.Fatal(err)
	}
	if m = waitMigEnd(t, cl, "scraped", m.ID); m.Phase != api.MigCompleted {
		t.Fatalf("migration %s: %s", m.Phase, m.Error)
	}
	waitProm(t, "the migration counted", func() (bool, string) {
		r := query(`sum(ferry_migrations_total{outcome="completed"}) >= 1`)
		return len(r) == 1, fmt.Sprintf("%+v", r)
	})
	waitProm(t, "the guest running on its new host", func() (bool, string) {
		r := query(fmt.Sprintf(`ferry_guests{host=%q,state="running"} >= 1`, to))
		return len(r) == 1, fmt.Sprintf("%+v", r)
	})
	// Its new host forecasts from the history it made on the old one.
	after := waitHistory(t, cl, to, "scraped", source, before)
	t.Logf("the guest's history: %d buckets on %s before the move, %d on %s after", before, vm.Node, after, to)
	checkBoard(t, ask)
}

// checkBoard has Prometheus evaluate every expression of the shipped
// Grafana board: each must be PromQL it accepts, and the panels about what
// the test did (a guest ran and moved; the hosts probed their links) must
// have data.
func checkBoard(t *testing.T, ask func(string) ([]promSample, error)) {
	t.Helper()
	var dash struct {
		Panels []grafanaPanel `json:"panels"`
	}
	raw, err := os.ReadFile("../../deploy/grafana/ferry-cluster.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	empty := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			r, err := ask(tg.Expr)
			if err != nil {
				t.Errorf("dashboard panel %q: Prometheus refuses %s: %v", p.Title, tg.Expr, err)
			} else if len(r) == 0 {
				empty++
				t.Logf("dashboard panel %q: no data yet for %s", p.Title, tg.Expr)
			}
		}
	}
	for _, p := range []string{"Guests by state", "Running guests per host", "Migrations ended (per 5 min)", "Link round trip"} {
		i := slices.IndexFunc(dash.Panels, func(d grafanaPanel) bool { return d.Title == p })
		if i < 0 {
			t.Errorf("the dashboard has no panel %q", p)
			continue
		}
		if r, err := ask(dash.Panels[i].Targets[0].Expr); err != nil || len(r) == 0 {
			t.Errorf("dashboard panel %q shows nothing after a guest ran and migrated: %v", p, err)
		}
	}
	t.Logf("%d dashboard expressions have no data in this short run (HA, escalations, ...)", empty)
}

// waitHistory waits until host reports a forecast for guest vm from a
// history of at least min buckets read from the Prometheus server at
// source, and returns its length.
func waitHistory(t *testing.T, cl *client.Client, host, vm, source string, min int) int {
	t.Helper()
	n := 0
	wsrc := "http" + strings.TrimPrefix(source, "prometheus")
	wait.For(t, 90*time.Second, fmt.Sprintf("%s to forecast %s from %d buckets of Prometheus' history", host, vm, min), func() (bool, error) {
		nodes, err := cl.ListNodes(ctxT(t, 5*time.Second))
		for _, node := range nodes {
			if node.Name == host && node.Load != nil {
				g, ok := node.Load.Guests[vm]
				n = g.History
				return ok && node.Load.HistorySource == wsrc && g.History >= min, fmt.Errorf("load %+v", node.Load)
			}
		}
		return false, err
	})
	return n
}

// grafanaPanel is what the test reads of a panel of the Grafana dashboard.
type grafanaPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// promSample is one series of a Prometheus instant query's answer.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
}

// waitProm polls cond (Prometheus scrapes every second) for up to a minute.
func waitProm(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	pollEvery(t, time.Minute, time.Second, "prometheus: "+what, cond)
}
