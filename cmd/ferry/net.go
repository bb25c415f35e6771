package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/wait"
	"github.com/spf13/cobra"
)

func nodeNetCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "net",
		Short: "The network between every pair of hosts: round trip, loss and health, as a matrix",
		Long: `Each host probes the others continuously (five TCP handshakes with each
one's API port every 30 seconds): the matrix shows, from each host (row) to
each other (column), the recent round trip and the packet loss the probes
suggest. A link marked "!" is degraded — it lost packets or its round trip
grew well beyond its own — and no guest is moved over it while another host
can take it; an event says when a link becomes degraded and healthy again.
Below the matrix, each host's underlay traffic by class over its last
heartbeat (2 s), sent/received: the control plane (etcd, heartbeats, the
API, probes), its guests' overlay, and live migrations.
-o json lists every link with its jitter, bandwidth and why it is degraded
(the traffic is in each host's record: ferry node list -o json).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			ls, err := cl.ListLinks(cmd.Context())
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(ls)
			}
			printMatrix(os.Stdout, ls)
			nodes, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Println()
			printTraffic(os.Stdout, nodes)
			return nil
		},
	}
	var timeout time.Duration
	test := &cobra.Command{
		Use:   "test FROM TO",
		Short: "Measure the link from one host to another now: round trip, loss, jitter and one TLS stream's throughput",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			asked := time.Now()
			if err := cl.TestLink(ctx, args[0], args[1]); err != nil {
				return err
			}
			var got api.LinkStat
			wctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			err = wait.Until(wctx, 200*time.Millisecond, func(context.Context) (bool, error) {
				ls, err := cl.ListLinks(ctx)
				for _, l := range ls {
					if l.From == args[0] && l.To == args[1] && l.RTTAt.After(asked) && (l.MeasuredAt.After(asked) || l.Degraded) {
						got = l
						return true, nil
					}
				}
				return false, fmt.Errorf("%s has not measured its link to %s yet (%v)", args[0], args[1], err)
			})
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(got)
			}
			printLinkStats([]api.LinkStat{got})
			if got.Degraded {
				fmt.Printf("degraded: %s (no throughput test over a degraded link)\n", got.Why)
			}
			return nil
		},
	}
	test.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the result")
	c.AddCommand(test)
	return c
}

// printMatrix writes links as a from × to matrix of round trip and loss.
func printMatrix(w io.Writer, ls []api.LinkStat) {
	hosts := map[string]bool{}
	by := map[[2]string]api.LinkStat{}
	for _, l := range ls {
		hosts[l.From], hosts[l.To] = true, true
		by[[2]string{l.From, l.To}] = l
	}
	var names []string
	for h := range hosts {
		names = append(names, h)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "FROM \\ TO")
	for _, to := range names {
		fmt.Fprint(tw, "\t", to)
	}
	fmt.Fprintln(tw)
	for _, from := range names {
		fmt.Fprint(tw, from)
		for _, to := range names {
			fmt.Fprint(tw, "\t", matrixCell(from, to, by))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintln(w, "cells: round trip / packet loss; ! degraded; - not measured yet")
}

func matrixCell(from, to string, by map[[2]string]api.LinkStat) string {
	if from == to {
		return "·"
	}
	l, ok := by[[2]string{from, to}]
	if !ok || l.RTTAt.IsZero() {
		return "-"
	}
	cell := fmt.Sprintf("%.1fms/%.1f%%", l.RTTMS, l.LossPct)
	if l.Degraded {
		cell += " !"
	}
	return cell
}

// printTraffic writes each host's underlay traffic by class, sent/received.
func printTraffic(w io.Writer, nodes []api.Node) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tCONTROL\tGUESTS\tMIGRATION\tTOTAL\tMEASURED\tPATHS")
	for _, n := range nodes {
		paths := "1"
		if len(n.Paths) > 0 {
			paths = fmt.Sprint(len(n.Paths))
		}
		if len(n.PathsDown) > 0 {
			paths += ", down to " + strings.Join(n.PathsDown, " ")
		}
		t := n.Traffic
		if t == nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%s\n", n.Name, paths)
			continue
		}
		pair := func(s, r float64) string { return mbits(s) + "/" + mbits(r) }
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s ago\t%s\n", n.Name, pair(t.Sent.Control, t.Received.Control),
			pair(t.Sent.Guest, t.Received.Guest), pair(t.Sent.Migration, t.Received.Migration),
			pair(t.Sent.Total, t.Received.Total), time.Since(t.Measured).Round(time.Second), paths)
	}
	tw.Flush()
	fmt.Fprintln(w, "traffic: Mbit/s sent/received on the underlay over the host's last heartbeat; - not reported")
	fmt.Fprintln(w, "paths: the host's underlay paths, and those to other hosts (HOST/DEVICE) that do not answer now")
}

// mbits formats bytes per second as Mbit/s.
func mbits(bps float64) string {
	m := bps * 8 / 1e6
	if m < 10 {
		return fmt.Sprintf("%.2f", m)
	}
	return fmt.Sprintf("%.0f", m)
}
