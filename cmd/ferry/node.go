package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/spf13/cobra"
)

func nodeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "node", Short: "Inspect hosts"}
	c.AddCommand(&cobra.Command{
		Use: "list", Short: "List hosts with state, capacity and load", Args: cobra.NoArgs, Aliases: []string{"ls"},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			nodes, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(nodes)
			}
			var rows [][]string
			for _, n := range nodes {
				state := n.State
				if n.Maintenance {
					state += ",maintenance"
				}
				rows = append(rows, []string{n.Name, state, n.Address, n.Accel, fmt.Sprint(n.CPUs),
					api.FormatMiB(n.UsedMiB) + "/" + api.FormatMiB(n.MemoryMiB), fmt.Sprint(n.VMs),
					fmt.Sprintf("%.2f", n.Load1), qemuColumn(n), age(n.Heartbeat)})
			}
			table(os.Stdout, []string{"NAME", "STATE", "ADDRESS", "ACCEL", "CPUS", "MEMORY(USED/TOTAL)", "VMS", "LOAD", "QEMU", "HEARTBEAT"}, rows)
			return nil
		},
	})
	c.AddCommand(nodeShowCmd(g), nodeDrainCmd(g), nodeUndrainCmd(g), nodeRemoveCmd(g), nodeLinksCmd(g), nodeNetCmd(g), nodeRiskCmd(g))
	return c
}

// qemuColumn is the QEMU version, marked when the host cannot live-migrate.
func qemuColumn(n api.Node) string {
	if n.QEMU == nil {
		return n.QEMUVersion
	}
	if n.QEMU.NoLiveMigration != "" {
		return n.QEMU.Version + " (no live migration)"
	}
	return n.QEMU.Version
}

func nodeShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "show HOST", Short: "Show one host: state, capacity, and what its QEMU can do", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			nodes, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			for _, n := range nodes {
				if n.Name != args[0] {
					continue
				}
				if g.structured() {
					return g.emit(n)
				}
				state := n.State
				if n.Maintenance {
					state += ", maintenance"
				}
				fmt.Printf("name:        %s\nstate:       %s\naddress:     %s\naccel:       %s\n", n.Name, state, n.Address, n.Accel)
				fmt.Printf("cpus:        %d\nmemory:      %s used of %s\nvms:         %d\nload:        %.2f\nheartbeat:   %s ago\n",
					n.CPUs, api.FormatMiB(n.UsedMiB), api.FormatMiB(n.MemoryMiB), n.VMs, n.Load1, age(n.Heartbeat))
				if len(n.Degraded) > 0 {
					fmt.Printf("degraded:    %s\n", strings.Join(n.Degraded, "; "))
				}
				if l := n.Load; l != nil {
					fmt.Printf("guest cpu:   %.2f of %.2f CPUs; forecast (%s) peak %.2f in %.0f s (horizon %s)\n",
						l.CPU, l.Capacity, l.Method, l.Peak, l.PeakInS, l.Horizon)
					names := make([]string, 0, len(l.Guests))
					for g := range l.Guests {
						names = append(names, g)
					}
					sort.Strings(names)
					for _, g := range names {
						fmt.Printf("  %-16s %.2f now, peak %.2f\n", g, l.Guests[g].CPU, l.Guests[g].Peak)
					}
				}
				if r := n.Risk; r != nil {
					at := ""
					if r.AtRisk {
						at = ", AT RISK"
					}
					fmt.Printf("risk:        %.1f %% of failing within %s (threshold %.0f %%%s; %d signals)\n",
						100*r.Probability, r.Horizon, 100*r.Threshold, at, r.Signals)
					for _, x := range r.Reasons {
						fmt.Printf("  %s\n", x.Reason)
					}
				}
				if q := n.QEMU; q != nil {
					fmt.Printf("qemu:        %s (%s)\n", q.Version, q.Package)
					fmt.Printf("  pc machine:          %s (%d machine types)\n", q.Aliases["pc"], len(q.Machines))
					fmt.Printf("  migration caps:      %s\n", strings.Join(q.Capabilities, " "))
					fmt.Printf("  multifd compression: %s\n", dash(strings.Join(q.MultifdCompression, " ")))
					live := "yes"
					if q.NoLiveMigration != "" {
						live = "NO: " + q.NoLiveMigration
					}
					fmt.Printf("  live migration:      %s\n", live)
				}
				return nil
			}
			return exitError{code: 1, msg: fmt.Sprintf("host %q is not in the cluster", args[0])}
		},
	}
}

func nodeDrainCmd(g *globals) *cobra.Command {
	var noWait bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "drain HOST",
		Short: "Put a host in maintenance and live-migrate every guest off it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			host := args[0]
			if _, err := cl.DrainNode(ctx, host); err != nil {
				return err
			}
			fmt.Printf("host %s is in maintenance; moving its guests away\n", host)
			if noWait {
				return nil
			}
			wctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			last := -1
			for {
				vms, err := cl.ListVMs(wctx)
				if err != nil {
					return err
				}
				var left []string
				for _, vm := range vms {
					if vm.Node == host && !vm.Spec.Deleting {
						left = append(left, vm.Spec.Name)
					}
				}
				if len(left) != last {
					if len(left) > 0 {
						fmt.Printf("  %d guests left on %s: %s\n", len(left), host, strings.Join(left, " "))
					}
					last = len(left)
				}
				if len(left) == 0 {
					fmt.Printf("host %s is drained\n", host)
					return nil
				}
				select {
				case <-wctx.Done():
					return fmt.Errorf("host %s still holds %d guests: %w", host, len(left), wctx.Err())
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}
	c.Flags().BoolVar(&noWait, "no-wait", false, "return at once")
	c.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "give up waiting after this long (the drain goes on)")
	return c
}

func nodeUndrainCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "undrain HOST", Short: "Take a host out of maintenance", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if _, err := cl.UndrainNode(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Printf("host %s takes guests again\n", args[0])
			return nil
		},
	}
}
