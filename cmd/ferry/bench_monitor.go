package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/scale"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// monitorRun is one mode of the monitoring benchmark.
type monitorRun struct {
	Mode string `json:"mode"` // off: no link probes, no scrapes; on: the defaults and a scrape per interval
	// AgentCPUPercent is each agent's CPU over the window, % of one core
	// (mean over the hosts).
	AgentCPUPercent float64 `json:"agent_cpu_percent"`
	// WireBytesPerPairPerSec is what the hosts sent on their underlay over
	// the window, per host pair and second (everything: etcd, heartbeats,
	// and in mode on the probes).
	WireBytesPerPairPerSec float64 `json:"wire_bytes_per_pair_per_s"`
	// ScrapeBytesPerHostPerSec is what one host's /metrics answers weigh,
	// per scrape interval (mode on).
	ScrapeBytesPerHostPerSec float64 `json:"scrape_bytes_per_host_per_s,omitempty"`
	ScrapeBytes              int     `json:"scrape_bytes,omitempty"`
	// BandwidthProbeBytesPerPairPerSec is the bandwidth probe's share: one
	// second of one stream at the link's measured rate, every 10 minutes
	// (amortised; mode on).
	BandwidthProbeBytesPerPairPerSec float64 `json:"bandwidth_probe_bytes_per_pair_per_s,omitempty"`
}

func benchMonitorCmd() *cobra.Command {
	var asJSON bool
	var hosts int
	var window, scrapeEvery time.Duration
	var imageDir string
	c := &cobra.Command{
		Use:   "monitor",
		Short: "What watching the cluster costs: agent CPU and bytes on the wire per host pair, with and without link probes and scrapes",
		Long: `Builds a testbed twice and measures each for --window after it settled: once
with the link probes off and nothing scraping (mode off), once with the link
probes at their default (five TCP handshakes per peer every 30 s) and every
host's /metrics scraped every --scrape-every (mode on). It reports each agent's
CPU, the bytes the hosts sent on their underlay per host pair and second,
what the scrapes weigh, and the bandwidth probe's amortised share (one second
of one stream every 10 minutes). The difference between the modes is the
monitoring's cost.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			say := sayer(!asJSON)
			self, err := os.Executable()
			if err != nil {
				return err
			}
			var runs []monitorRun
			for _, mode := range []string{"off", "on"} {
				r, err := monitorOnce(cmd.Context(), mode, hosts, window, scrapeEvery, self, imageDir, say)
				if err != nil {
					return fmt.Errorf("mode %s: %w", mode, err)
				}
				say("%-3s agent CPU %.3f %% of a core, %.0f B/s per host pair on the wire, scrapes %.0f B/s per host, bandwidth probe %.0f B/s per pair",
					mode, r.AgentCPUPercent, r.WireBytesPerPairPerSec, r.ScrapeBytesPerHostPerSec, r.BandwidthProbeBytesPerPairPerSec)
				runs = append(runs, r)
			}
			if asJSON {
				return printJSON(os.Stdout, map[string]any{"benchmark": "monitor", "date": time.Now().UTC().Format(time.RFC3339),
					"hosts": hosts, "window_s": window.Seconds(), "scrape_every_s": scrapeEvery.Seconds(), "runs": runs})
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	c.Flags().IntVar(&hosts, "hosts", 3, "testbed hosts")
	c.Flags().DurationVar(&window, "window", 3*time.Minute, "how long each mode is measured")
	c.Flags().DurationVar(&scrapeEvery, "scrape-every", 15*time.Second, "scrape interval in mode on")
	c.Flags().StringVar(&imageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	return c
}

// monitorOnce builds a testbed in one mode and measures it.
func monitorOnce(ctx context.Context, mode string, n int, window, scrapeEvery time.Duration, self, imageDir string, say func(string, ...any)) (monitorRun, error) {
	r := monitorRun{Mode: mode}
	o := testbed.Options{Name: fmt.Sprintf("fbm%d", os.Getpid()%1000), Hosts: n, Bin: self, ImageDir: imageDir, HostArgs: map[int][]string{}}
	if mode == "off" {
		for i := 0; i < n; i++ {
			o.HostArgs[i] = []string{"--link-probe-every", "0"}
		}
	}
	b, _, err := benchBedWith(ctx, o, say)
	if err != nil {
		return r, err
	}
	defer b.Down()
	say("%s: settling for 40 s", mode)
	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-time.After(40 * time.Second):
	}
	var pids []int
	for _, h := range b.Hosts {
		pids = append(pids, h.PID)
	}
	cpu0, wire0 := scale.PIDsCPU(pids), sentOnUnderlay(b)
	start := time.Now()
	scrapes, scraped := 0, 0
	tick := time.NewTicker(scrapeEvery)
	defer tick.Stop()
	deadline := time.After(window)
wait:
	for {
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-deadline:
			break wait
		case <-tick.C:
			if mode != "on" {
				continue
			}
			for i := range b.Hosts {
				cl, err := b.Client(i)
				if err != nil {
					return r, err
				}
				text, err := cl.Metrics(ctx)
				if err != nil {
					return r, err
				}
				scrapes++
				scraped += len(text)
			}
		}
	}
	took := time.Since(start).Seconds()
	r.AgentCPUPercent = (scale.PIDsCPU(pids) - cpu0).Seconds() / took / float64(n) * 100
	pairs := float64(n * (n - 1) / 2)
	r.WireBytesPerPairPerSec = float64(sentOnUnderlay(b)-wire0) / took / pairs
	if scrapes > 0 {
		r.ScrapeBytes = scraped / scrapes
		r.ScrapeBytesPerHostPerSec = float64(r.ScrapeBytes) / scrapeEvery.Seconds()
		cl, err := b.Client(0)
		if err != nil {
			return r, err
		}
		ls, err := cl.ListLinks(ctx)
		if err != nil {
			return r, err
		}
		var bw float64
		for _, l := range ls {
			bw += l.Bandwidth
		}
		if len(ls) > 0 {
			// Each host measures each of its links: both directions of a pair.
			r.BandwidthProbeBytesPerPairPerSec = bw / float64(len(ls)) * 2 / (10 * 60)
		}
	}
	return r, nil
}

// sentOnUnderlay is what every host has sent on its links to the fabric
// (not its guests' bridge or overlay device), in bytes.
func sentOnUnderlay(b *testbed.Bed) int64 {
	var total int64
	for _, h := range b.Hosts {
		ns, err := netns.GetFromName(h.NS)
		if err != nil {
			continue
		}
		nh, err := netlink.NewHandleAt(ns)
		ns.Close()
		if err != nil {
			continue
		}
		links, _ := nh.LinkList()
		for _, l := range links {
			switch l.Type() {
			case "bridge", "vxlan":
				continue
			}
			if a := l.Attrs(); a.Name != "lo" && a.Statistics != nil {
				total += int64(a.Statistics.TxBytes)
			}
		}
		nh.Close()
	}
	return total
}
