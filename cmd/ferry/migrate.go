package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/spf13/cobra"
)

// Long on purpose: a declarative list, one entry per option, read top to bottom.
func vmMigrateCmd(g *globals) *cobra.Command {
	var req api.MigrateRequest
	var cancelIt, noWait bool
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
			m, err := cl.MigrateVM(ctx, name, req)
			if err != nil {
				return err
			}
			if m.Options.Plaintext {
				fmt.Fprintln(os.Stderr, "WARNING: this migration is PLAINTEXT: the guest's memory crosses the network unencrypted")
			}
			if noWait {
				if g.output == "json" {
					return printJSON(os.Stdout, m)
				}
				fmt.Printf("migrating %s from %s to %s (%s)\n", name, m.Source, m.Target, m.Options.Strategy)
				return nil
			}
			tty := g.output == "table" && isTerminal(os.Stderr)
			if g.output == "table" {
				fmt.Fprintf(os.Stderr, "migrating %s from %s to %s (%s, max downtime %dms)\n", name, m.Source, m.Target, m.Options.Strategy, m.Options.MaxDowntimeMS)
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
			if g.output == "json" {
				return printJSON(os.Stdout, m)
			}
			if m.Phase != api.MigCompleted {
				return exitError{code: 1, msg: fmt.Sprintf("migration %s: %s", m.Phase, m.Error)}
			}
			fmt.Printf("%s now runs on %s: total %s, downtime %dms, %s sent\n", name, m.Target,
				time.Duration(m.TotalTimeMS)*time.Millisecond, m.DowntimeMS, humanBytes(m.Progress.TransferredBytes))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&req.To, "to", "", "target host, or auto to let Ferry choose")
	f.StringVar(&req.MaxBandwidth, "max-bandwidth", "", "bytes per second, e.g. 100M (default unlimited)")
	f.StringVar(&req.MaxDowntime, "max-downtime", "", "longest pause the guest may see, e.g. 300ms (default 300ms)")
	f.StringVar(&req.Strategy, "strategy", "", "precopy (default), postcopy, auto-converge or multifd")
	f.BoolVar(&req.Compress, "compress", false, "compress pages: multifd with zstd (or zlib) compression; costs CPU")
	f.StringVar(&req.Transport, "transport", "", "how the encrypted stream is carried: agent-tls or qemu-tls (default: the cluster's)")
	f.BoolVar(&req.Plaintext, "plaintext", false, "send the guest's memory unencrypted (refused unless an admin allowed it: ferry cluster security)")
	f.BoolVar(&cancelIt, "cancel", false, "cancel the VM's migration in flight; the guest stays on the source")
	f.BoolVar(&noWait, "no-wait", false, "return once the migration is accepted")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "give up waiting after this long (the migration goes on)")
	return c
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
	return fmt.Sprintf("[%s] %3.0f%% %-11s sent %s  %.0f Mbit/s  remaining %s  dirty %s/s  round %d  eta %s",
		bar, frac*100, m.Phase, humanBytes(p.TransferredBytes), p.RateMbps, humanBytes(p.RemainingBytes),
		humanBytes(p.DirtyPagesRate*4096), p.Round, eta)
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
