package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/internal/scale"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/spf13/cobra"
)

// Long on purpose: a declarative list, one entry per option, read top to bottom.
func benchScaleCmd() *cobra.Command {
	var (
		hosts, etcds        string
		guests, victim      int
		samples, candidates int
		idle, leaseTTL      time.Duration
		asJSON              bool
		dir, cpuProfile     string
	)
	c := &cobra.Command{
		Use:   "scale",
		Short: "Run N simulated hosts against a real etcd and measure the control plane",
		Long: `For each host count and each etcd (embedded: one member of Ferry's embedded
etcd; external: a cluster of three), starts the etcd in processes of its own and
N simulated hosts in this process — real agents, each with its own etcd client,
lease, heartbeats, watch and campaign for leadership, whose QEMU is simulated —
with GUESTS guests each and one host holding VICTIM HA guests. It reports the
start-up time, API latency (get, list, create, migrate, delete; one call at a
time), the leader's round time, etcd's write rate and database size, the
agents' idle CPU and memory, and the time from the victim's death to its lease
expiring, to every restart issued and to every guest running again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ns, err := intList(hosts)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			var results []*scale.Result
			for _, kind := range strings.Split(etcds, ",") {
				members := map[string]int{"embedded": 1, "external": 3}[kind]
				if members == 0 {
					return fmt.Errorf("--etcd %q: embedded or external", kind)
				}
				for _, n := range ns {
					r, err := runScale(ctx, self, dir, kind, members, scale.Config{Hosts: n, GuestsPerHost: guests,
						VictimGuests: victim, Candidates: candidates, LeaseTTL: leaseTTL, Samples: samples, Idle: idle})
					if err != nil {
						// The next sizes still run; the report says what failed.
						fmt.Fprintf(os.Stderr, "%d hosts, %s etcd: %v\n", n, kind, err)
						if r == nil {
							r = &scale.Result{Hosts: n, GuestsPerHost: guests, Etcd: kind}
						}
						r.Error = err.Error()
					}
					results = append(results, r)
					if !asJSON {
						printScale(r)
					}
				}
			}
			if asJSON {
				return printJSON(os.Stdout, results)
			}
			return nil
		},
	}
	c.Flags().StringVar(&hosts, "hosts", "100,300,1000", "host counts to run, comma-separated")
	c.Flags().StringVar(&etcds, "etcd", "embedded,external", "etcds to run against: embedded (1 member), external (3 members)")
	c.Flags().IntVar(&guests, "guests", 20, "guests per host")
	c.Flags().IntVar(&victim, "victim-guests", 50, "HA guests on the host that dies")
	c.Flags().IntVar(&candidates, "candidates", 3, "hosts that campaign for leadership (0: all, as a default `ferry agent`)")
	c.Flags().DurationVar(&leaseTTL, "lease-ttl", 2*time.Second, "every host's lease; the fencing timing scales with it")
	c.Flags().IntVar(&samples, "samples", 100, "API calls timed per kind")
	c.Flags().DurationVar(&idle, "idle", 20*time.Second, "idle window CPU and write rate are read over")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON array")
	c.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the agents' process here")
	c.Flags().StringVar(&dir, "dir", "", "scratch directory (default: a new one under /tmp)")
	return c
}

func runScale(ctx context.Context, self, dir, kind string, members int, cfg scale.Config) (res *scale.Result, err error) {
	d, err := os.MkdirTemp(dir, fmt.Sprintf("scale-%d-", cfg.Hosts))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			os.RemoveAll(d)
		} else {
			fmt.Fprintf(os.Stderr, "the run's logs are kept in %s\n", d)
		}
	}()
	fmt.Fprintf(os.Stderr, "== %d hosts, %s etcd (%d member(s))\n", cfg.Hosts, kind, members)
	e, err := scale.StartEtcd(ctx, []string{self, "bench", "etcd-member"}, filepath.Join(d, "etcd"), members)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	cfg.Endpoints, cfg.EtcdPIDs, cfg.Etcd = e.Endpoints(), e.PIDs(), fmt.Sprintf("%s (%d member(s))", kind, members)
	cfg.Dir = filepath.Join(d, "hosts")
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	cfg.Progress = func(s string) { fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), s) }
	return scale.Run(ctx, cfg)
}

func printScale(r *scale.Result) {
	fmt.Printf("%d hosts (%d campaign, %.0f s leases), %d guests, etcd %s: up in %.0f s\n", r.Hosts, r.Candidates, r.LeaseTTLS, r.VMs, r.Etcd, r.StartupS)
	if r.Error != "" {
		fmt.Printf("  ended early: %s\n", r.Error)
	}
	for _, k := range []string{"get", "list", "create", "migrate", "delete"} {
		l := r.API[k]
		fmt.Printf("  api %-8s p50 %7.1f ms  p99 %7.1f ms  (n=%d)\n", k, l.P50MS, l.P99MS, l.N)
	}
	fmt.Printf("  leader round p50 %.1f ms  p99 %.1f ms  max %.1f ms\n", r.LeaderRound.P50MS, r.LeaderRound.P99MS, r.LeaderRound.MaxMS)
	fmt.Printf("  etcd: %.0f writes/s idle, db %.1f MiB (%.1f MiB in use), CPU %.0f%% of a core\n", r.WritesPerSec,
		float64(r.DBSizeBytes)/(1<<20), float64(r.DBInUseBytes)/(1<<20), r.EtcdCPUPercent)
	fmt.Printf("  per agent: %.2f%% of a core idle (%d fit on 2 cores), %.0f KiB heap\n", r.AgentCPUPercent, r.AgentsPer2Cores, r.AgentHeapKiB)
	fmt.Printf("  host death (%d HA guests): lease expired %.0f ms after; restarts issued %.0f ms and all running %.0f ms after that\n",
		r.Death.Guests, r.Death.LeaseExpiredMS, r.Death.RestartsIssuedMS, r.Death.AllRunningMS)
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			return nil, fmt.Errorf("%q: want host counts of at least 2, comma-separated", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchEtcdMemberCmd runs one member of an etcd cluster for bench scale
// (hidden: the benchmark starts it).
func benchEtcdMemberCmd() *cobra.Command {
	var cfg store.EmbedConfig
	c := &cobra.Command{
		Use:    "etcd-member",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			e, err := store.StartEmbedded(ctx, cfg)
			if err != nil {
				return err
			}
			defer e.Close()
			<-ctx.Done()
			return nil
		},
	}
	c.Flags().StringVar(&cfg.Dir, "dir", "", "data directory")
	c.Flags().StringVar(&cfg.Name, "name", "", "member name")
	c.Flags().StringVar(&cfg.ClientURL, "client", "", "client URL")
	c.Flags().StringVar(&cfg.PeerURL, "peer", "", "peer URL")
	c.Flags().StringVar(&cfg.InitialCluster, "initial-cluster", "", "name=peerURL of every member")
	return c
}
