package main

import (
	"fmt"
	"os"

	"github.com/ferryvm/ferry/api"
	"github.com/spf13/cobra"
)

func nodeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "node", Short: "Inspect hosts"}
	c.AddCommand(&cobra.Command{
		Use: "list", Short: "List hosts with state, capacity and load", Args: cobra.NoArgs, Aliases: []string{"ls"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g); err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			nodes, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(os.Stdout, nodes)
			}
			var rows [][]string
			for _, n := range nodes {
				rows = append(rows, []string{n.Name, n.State, n.Address, n.Accel, fmt.Sprint(n.CPUs),
					api.FormatMiB(n.UsedMiB) + "/" + api.FormatMiB(n.MemoryMiB), fmt.Sprint(n.VMs),
					fmt.Sprintf("%.2f", n.Load1), n.QEMUVersion, age(n.Heartbeat)})
			}
			table(os.Stdout, []string{"NAME", "STATE", "ADDRESS", "ACCEL", "CPUS", "MEMORY(USED/TOTAL)", "VMS", "LOAD", "QEMU", "HEARTBEAT"}, rows)
			return nil
		},
	})
	return c
}
