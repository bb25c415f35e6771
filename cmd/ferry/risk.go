package main

import (
	"fmt"
	"os"
	"sort"

	"github.com/ferryvm/ferry/api"
	"github.com/spf13/cobra"
)

// nodeRiskCmd lists hosts by their forecast risk of failing, with the
// signals behind each figure.
func nodeRiskCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "risk",
		Short: "List hosts by their risk of failing soon, with the health signals that drive it",
		Long: "Each host reads its health signals (memory and disk errors, SMART, NIC errors and link flaps,\n" +
			"temperatures, QEMU failures, lease renewal latency) and judges from their trends how likely it\n" +
			"is to fail within its horizon. A host at its threshold is AT RISK: its guests move away live.\n" +
			"See docs/PREDICTIVE.md for the model and how to tune or turn it off.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			nodes, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			sort.SliceStable(nodes, func(i, j int) bool { return riskOf(nodes[i]) > riskOf(nodes[j]) })
			if g.structured() {
				type row struct {
					Node        string        `json:"node"`
					Maintenance bool          `json:"maintenance,omitempty"`
					Risk        *api.HostRisk `json:"risk"`
				}
				out := []row{}
				for _, n := range nodes {
					out = append(out, row{n.Name, n.Maintenance, n.Risk})
				}
				return g.emit(out)
			}
			var rows [][]string
			for _, n := range nodes {
				r := n.Risk
				if r == nil {
					rows = append(rows, []string{n.Name, "-", "-", "-", "-", "not assessed (health signals off, or a Ferry before them)"})
					continue
				}
				state := "ok"
				if r.AtRisk {
					state = "AT RISK"
				}
				if n.Maintenance {
					state += ",maintenance"
				}
				why := "no signal trending towards failure"
				if len(r.Reasons) > 0 {
					why = r.Reasons[0].Reason
					if len(r.Reasons) > 1 {
						why += fmt.Sprintf(" (+%d more)", len(r.Reasons)-1)
					}
				}
				rows = append(rows, []string{n.Name, fmt.Sprintf("%.1f %%", 100*r.Probability), r.Horizon, state,
					fmt.Sprint(r.Signals), why})
			}
			table(os.Stdout, []string{"NAME", "RISK", "HORIZON", "STATE", "SIGNALS", "WHY"}, rows)
			return nil
		},
	}
}

func riskOf(n api.Node) float64 {
	if n.Risk == nil {
		return -1
	}
	return n.Risk.Probability
}
