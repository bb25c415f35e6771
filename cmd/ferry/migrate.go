package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/spf13/cobra"
)

// Long on purpose: a declarative list, one entry per option, read top to bottom.
func vmMigrateCmd(g *globals) *cobra.Command {
	var req api.MigrateRequest
	var cancelIt, noWait, dryRun bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "migrate NAME --to HOST|auto",
		Short: "Live-migrate a running VM to another host, with a progress bar",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			name := args[0]
			if cancelIt {
				m, err := cl.CancelMigration(ctx, name)
				if err != nil {
					return err
				}
				fmt.Printf("cancelling the migration of %s to %s\n", name, m.Target)
				m, err = cl.WaitMigration(ctx, name, m.ID, nil)
				if err != nil {
					return err
				}
				fmt.Printf("migration %s: %s\n", m.Phase, m.Error)
				return nil
			}
			if dryRun {
				p, err := cl.PredictMigration(ctx, name, req)
				if err != nil {
					return err
				}
				if g.structured() {
					return g.emit(p)
				}
				printPrediction(os.Stdout, name, p)
				return nil
			}
			m, err := cl.MigrateVM(ctx, name, req)
			if err != nil {
				return err
			}
			if m.Options.Plaintext {
				fmt.Fprintln(os.Stderr, "WARNING: this migration is PLAINTEXT: the guest's memory crosses the network unencrypted")
			}
			if noWait {
				if g.structured() {
					return g.emit(m)
				}
				fmt.Printf("migrating %s from %s to %s (%s)\n", name, m.Source, m.Target, m.Options.Strategy)
				return nil
			}
			tty := g.output == "table" && isTerminal(os.Stderr)
			if g.output == "table" {
				fmt.Fprintf(os.Stderr, "migrating %s from %s to %s (%s, max downtime %dms)\n", name, m.Source, m.Target, strategyName(m.Options), m.Options.MaxDowntimeMS)
				if p := m.Prediction; p != nil {
					fmt.Fprintf(os.Stderr, "  %s\n", p.Why)
				}
			}
			wctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			m, err = cl.WaitMigration(wctx, name, m.ID, func(m *api.Migration) {
				if tty {
					fmt.Fprintf(os.Stderr, "\r\033[K%s", progressLine(m))
				}
			})
			if tty {
				fmt.Fprintln(os.Stderr)
			}
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(m)
			}
			if m.Phase != api.MigCompleted {
				return exitError{code: 1, msg: fmt.Sprintf("migration %s: %s", m.Phase, m.Error)}
			}
			fmt.Printf("%s now runs on %s: total %s, downtime %dms, %s sent\n", name, m.Target,
				m.Finished.Sub(m.Started).Round(time.Millisecond), m.DowntimeMS, humanBytes(max(m.BytesSent, m.Progress.TransferredBytes)))
			if p := m.Prediction; p != nil {
				if sp := p.ChosenPrediction(); sp != nil {
					fmt.Printf("  predicted %s, downtime %.0fms, %s sent\n", (time.Duration(sp.TotalMS) * time.Millisecond).Round(time.Millisecond),
						sp.DowntimeMS, humanBytes(sp.Bytes))
				}
			}
			for _, e := range m.Escalations {
				fmt.Printf("  escalated (round %d): %s: %s\n", e.Round, e.Kind, e.Detail)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&req.To, "to", "", "target host, or auto to let Ferry choose")
	f.StringVar(&req.MaxBandwidth, "max-bandwidth", "", "bytes per second, e.g. 100M (default unlimited)")
	f.StringVar(&req.MaxDowntime, "max-downtime", "", "longest pause the guest may see, e.g. 300ms (default 300ms)")
	f.StringVar(&req.Strategy, "strategy", "", "auto (default: Ferry predicts each and picks), precopy, postcopy, auto-converge or multifd")
	f.BoolVar(&dryRun, "dry-run", false, "predict every strategy (time, downtime, bytes) and say which Ferry would pick and why; move nothing")
	f.BoolVar(&req.Compress, "compress", false, "compress pages: multifd with zstd (or zlib) compression; costs CPU")
	f.StringVar(&req.Transport, "transport", "", "how the encrypted stream is carried: agent-tls or qemu-tls (default: the cluster's)")
	f.BoolVar(&req.Plaintext, "plaintext", false, "send the guest's memory unencrypted (refused unless an admin allowed it: ferry cluster security)")
	f.BoolVar(&cancelIt, "cancel", false, "cancel the VM's migration in flight; the guest stays on the source")
	f.BoolVar(&noWait, "no-wait", false, "return once the migration is accepted")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "give up waiting after this long (the migration goes on)")
	return c
}

// strategyName is a migration's strategy as the prediction names it, and
// whether Ferry chose it.
func strategyName(o api.MigrationOptions) string {
	s := o.Strategy
	if o.Compress {
		s = api.StrategyCompress
	}
	if o.Auto {
		s += ", chosen by Ferry"
	}
	return s
}

// printPrediction shows a dry run: what it was made from, every strategy,
// the choice and why.
func printPrediction(w io.Writer, name string, p *api.MigrationPrediction) {
	fmt.Fprintf(w, "%s from %s to %s: %s of memory", name, p.Source, p.Target, humanBytes(p.MemoryBytes))
	if !p.Memory.MeasuredAt.IsZero() {
		fmt.Fprintf(w, ", dirtying %s/s", humanBytes(int64(p.Memory.DirtyRate)))
		if p.Memory.WorkingSet > 0 {
			fmt.Fprintf(w, " within %s", humanBytes(p.Memory.WorkingSet))
		}
		fmt.Fprintf(w, ", %.0f%% zero pages, the rest compressing to %.0f%% (measured %s ago)", p.Memory.ZeroShare*100, p.Memory.CompressRatio*100,
			time.Since(p.Memory.MeasuredAt).Round(time.Second))
	} else {
		fmt.Fprint(w, " (not measured yet: taken as idle)")
	}
	fmt.Fprintln(w)
	if p.Link.Bandwidth > 0 {
		fmt.Fprintf(w, "link %s -> %s: %.0f Mbit/s, round trip %.2fms (measured %s ago)\n", p.Source, p.Target, p.Link.Bandwidth*8/1e6, p.Link.RTTMS,
			time.Since(p.Link.MeasuredAt).Round(time.Second))
	}
	fmt.Fprintf(w, "policy %s, max downtime %.0fms\n\n", p.Policy, p.MaxDowntime)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STRATEGY\tFITS\tTOTAL\tDOWNTIME\tSENT\tROUNDS\tCALIBRATED ON\tWHY")
	for _, s := range p.Strategies {
		mark := ""
		if s.Strategy == p.Chosen {
			mark = " *"
		}
		if s.TotalMS == 0 && !s.Converges {
			fmt.Fprintf(tw, "%s%s\t-\t-\t-\t-\t-\t-\t%s\n", s.Strategy, mark, s.Why)
			continue
		}
		fits := "no"
		if s.Converges && s.DowntimeMS <= p.MaxDowntime {
			fits = "yes"
		}
		cal := "defaults"
		if s.Calibrated > 0 {
			cal = fmt.Sprintf("%d moves", s.Calibrated)
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%.0fms\t%s\t%d\t%s\t%s\n", s.Strategy, mark, fits,
			(time.Duration(s.TotalMS) * time.Millisecond).Round(10*time.Millisecond), s.DowntimeMS, humanBytes(s.Bytes), s.Rounds, cal, s.Why)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nFerry would pick %s: %s\n", dash(p.Chosen), p.Why)
}

// progressLine renders one line of migration progress.
func progressLine(m *api.Migration) string {
	p := m.Progress
	const width = 24
	frac := 0.0
	if p.TotalBytes > 0 {
		frac = float64(p.TotalBytes-p.RemainingBytes) / float64(p.TotalBytes)
	}
	if m.Phase == api.MigCompleted || m.Phase == api.MigSwitchover {
		frac = 1
	}
	filled := int(frac * width)
	bar := strings.Repeat("#", filled) + strings.Repeat("-", width-filled)
	eta := "-"
	if p.ETASeconds > 0 {
		eta = fmt.Sprintf("%.1fs", p.ETASeconds)
	}
	pred := ""
	if sp := predicted(m); sp != nil {
		pred = fmt.Sprintf("  predicted %s", (time.Duration(sp.TotalMS) * time.Millisecond).Round(100*time.Millisecond))
		if el := time.Since(m.Started); el > 0 {
			pred += fmt.Sprintf(" (%s so far)", el.Round(100*time.Millisecond))
		}
	}
	throttle := ""
	if p.CPUThrottle > 0 {
		throttle = fmt.Sprintf("  throttle %d%%", p.CPUThrottle)
	}
	return fmt.Sprintf("[%s] %3.0f%% %-11s sent %s  %.0f Mbit/s  remaining %s  dirty %s/s  round %d%s  eta %s%s",
		bar, frac*100, m.Phase, humanBytes(p.TransferredBytes), p.RateMbps, humanBytes(p.RemainingBytes),
		humanBytes(p.DirtyPagesRate*4096), p.Round, throttle, eta, pred)
}

// predicted is the prediction for the strategy a migration runs.
func predicted(m *api.Migration) *api.StrategyPrediction {
	if m.Prediction == nil {
		return nil
	}
	return m.Prediction.ChosenPrediction()
}

func humanBytes(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.0fK", float64(b)/(1<<10))
	default:
		return fmt.Sprintf("%dB", b)
	}
}
