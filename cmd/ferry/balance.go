package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
)

func balanceCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "balance", Short: "See what the balancer does about overloaded hosts"}
	c.AddCommand(&cobra.Command{
		Use:   "plan",
		Short: "Show the balancer's plan: each host's CPU use and forecast, the moves now and to come, and why",
		Long: "The leader's balancer judges each host by what its guests use of its CPUs: in predictive mode by\n" +
			"the forecast peak within the horizon (Holt-Winters over a daily season), in reactive mode by the use\n" +
			"now once it has lasted. A host over the threshold sheds the guest whose move is cheapest among those\n" +
			"that relieve it, started early enough to finish before the peak. See docs/PREDICTIVE.md.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			p, err := cl.BalancePlan(cmd.Context())
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(p)
			}
			fmt.Printf("mode %s: a host is overloaded over %.0f %% of its CPUs; moves fill targets to at most %.0f %% (plan of %s ago)\n\n",
				p.Mode, 100*p.Threshold, 100*p.Target, age(p.Made))
			var rows [][]string
			for _, h := range p.Hosts {
				over := ""
				if h.Over {
					over = "OVER"
				}
				in := "-"
				if h.PeakInS > 0 {
					in = (time.Duration(h.PeakInS) * time.Second).String()
				}
				rows = append(rows, []string{h.Name, fmt.Sprintf("%.2f/%.2f", h.CPU, h.Capacity), fmt.Sprintf("%.2f", h.Waiting),
					fmt.Sprintf("%.2f", h.Peak), in, h.Method, over})
			}
			table(os.Stdout, []string{"HOST", "CPU(NOW/CAPACITY)", "WAITING", "PEAK", "PEAK IN", "FORECAST", ""}, rows)
			if len(p.Moves) == 0 {
				fmt.Println("\nno moves planned")
			}
			for _, m := range p.Moves {
				when := "now"
				if d := time.Until(m.StartAt); d > time.Second {
					when = "in " + d.Round(time.Second).String()
				}
				verb := "move"
				if m.Heal {
					verb = "heal"
				}
				fmt.Printf("\n%s %s %s -> %s %s: %s\n", verb, m.VM, m.From, m.To, when, m.Why)
			}
			for _, s := range p.Stuck {
				fmt.Printf("\n%s cannot be relieved: %s\n", s.Host, s.Why)
			}
			return nil
		},
	})
	return c
}
