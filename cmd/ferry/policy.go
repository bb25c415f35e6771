package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/spf13/cobra"
)

// Long on purpose: a declarative list, one entry per option, read top to bottom.
func policyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Migration policies: how the guests whose labels match move (bandwidth, downtime, strategies, escalations)"}
	var req api.MigrationPolicyRequest
	var noEscalation bool
	create := &cobra.Command{
		Use:   "create NAME [--selector KEY=VALUE ...]",
		Short: "Create a migration policy (admin)",
		Long: `A migration policy applies to the guests that carry every label of its
selector (ferry vm create --label KEY=VALUE); among several, the one with the
most selector labels wins. Guests no policy selects get the default: Ferry
chooses the strategy, aims for 300ms of downtime, may raise it to 1s, and may
take every escalation.

Escalations are what a migration that does not converge does, in this order:
downtime (raise the downtime limit up to --allowed-downtime), throttle (slow the
guest's CPUs: auto-converge), postcopy (let the guest run on the target while
its remaining pages follow).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			req.Name = args[0]
			if noEscalation {
				req.Escalations = []string{}
			}
			p, err := cl.CreatePolicy(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(p)
			}
			fmt.Printf("policy %s created\n", p.Name)
			return nil
		},
	}
	f := create.Flags()
	f.StringToStringVar(&req.Selector, "selector", nil, "a label KEY=VALUE the guests must carry (repeatable)")
	f.StringVar(&req.MaxBandwidth, "max-bandwidth", "", "cap the stream, bytes per second (100M)")
	f.StringVar(&req.MaxDowntime, "max-downtime", "", "the pause to aim for (default 300ms)")
	f.StringVar(&req.AllowedDowntime, "allowed-downtime", "", "the most the downtime escalation may raise it to (default 1s, never below --max-downtime)")
	f.StringSliceVar(&req.Strategies, "strategies", nil, "strategies Ferry may choose: precopy, multifd, compress, auto-converge, postcopy (default all)")
	f.StringSliceVar(&req.Escalations, "escalations", nil, "escalations allowed: downtime, throttle, postcopy (default all)")
	f.BoolVar(&noEscalation, "no-escalation", false, "allow no escalation: a migration that does not converge runs until its timeout")
	f.StringVar(&req.Timeout, "timeout", "", "cancel a migration not done after this long (default none)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the migration policies",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			ps, err := cl.ListPolicies(cmd.Context())
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(ps)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSELECTOR\tDOWNTIME\tALLOWED\tBANDWIDTH\tSTRATEGIES\tESCALATIONS\tTIMEOUT")
			for _, p := range ps {
				bw := "-"
				if p.MaxBandwidth > 0 {
					bw = humanBytes(p.MaxBandwidth) + "/s"
				}
				strats := "all"
				if len(p.Strategies) > 0 {
					strats = strings.Join(p.Strategies, ",")
				}
				esc := strings.Join(p.Escalations, ",")
				if esc == "" {
					esc = "none"
				}
				to := "-"
				if p.TimeoutS > 0 {
					to = (time.Duration(p.TimeoutS) * time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%dms\t%dms\t%s\t%s\t%s\t%s\n", p.Name, selectorString(p.Selector), p.MaxDowntimeMS, p.AllowedDowntimeMS, bw, strats, esc, to)
			}
			return tw.Flush()
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a migration policy (admin); its guests fall back to another or the default",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			if err := cl.DeletePolicy(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Printf("policy %s deleted\n", args[0])
			return nil
		},
	}
	c.AddCommand(create, list, del)
	return c
}

func selectorString(sel map[string]string) string {
	if len(sel) == 0 {
		return "(every guest)"
	}
	var kv []string
	for k, v := range sel {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}
