package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/wait"
	"github.com/spf13/cobra"
)

func nodeLinksCmd(g *globals) *cobra.Command {
	var probe bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "links",
		Short: "The paths between hosts as the hosts measured them: round trip and one stream's bandwidth",
		Long: `Every host measures the round trip to the others every 30 seconds (TCP
handshakes with their API port) and, every 10 minutes, one TLS stream's
bandwidth for a second; migration predictions use these figures. --probe
asks every host to measure all its links now and waits for the results.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if probe {
				asked := time.Now()
				nodes, err := cl.ListNodes(ctx)
				if err != nil {
					return err
				}
				if err := cl.ProbeLinks(ctx); err != nil {
					return err
				}
				want := len(nodes) * (len(nodes) - 1)
				wctx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				err = wait.Until(wctx, 200*time.Millisecond, func(context.Context) (bool, error) {
					ls, err := cl.ListLinks(ctx)
					fresh := 0
					for _, l := range ls {
						// A degraded link is probed, but not streamed over.
						if l.MeasuredAt.After(asked) || (l.Degraded && l.RTTAt.After(asked)) {
							fresh++
						}
					}
					return fresh >= want, fmt.Errorf("%d of %d links measured again (%v)", fresh, want, err)
				})
				if err != nil {
					return err
				}
			}
			ls, err := cl.ListLinks(ctx)
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(ls)
			}
			printLinkStats(ls)
			return nil
		},
	}
	c.Flags().BoolVar(&probe, "probe", false, "have every host measure its links now, and wait for it")
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "with --probe: how long to wait")
	return c
}

func printLinkStats(ls []api.LinkStat) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tRTT\tJITTER\tLOSS\tBANDWIDTH\tHEALTH\tRTT AGE\tBANDWIDTH AGE")
	for _, l := range ls {
		bw, bwAge := "-", "-"
		if l.Bandwidth > 0 {
			bw = fmt.Sprintf("%.0f Mbit/s", l.Bandwidth*8/1e6)
			bwAge = time.Since(l.MeasuredAt).Round(time.Second).String()
		}
		health := "ok"
		if l.Degraded {
			health = "degraded: " + l.Why
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2fms\t%.2fms\t%.1f%%\t%s\t%s\t%s\t%s\n", l.From, l.To, l.RTTMS, l.JitterMS, l.LossPct, bw, health,
			time.Since(l.RTTAt).Round(time.Second), bwAge)
	}
	tw.Flush()
}
