package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/spf13/cobra"
)

func eventsCmd(g *globals) *cobra.Command {
	var limit int
	var follow bool
	var f client.EventFilter
	c := &cobra.Command{
		Use:   "events",
		Short: "Show cluster events (guests, migrations, hosts lost, HA restarts, fencing, drains); --follow streams them",
		Long: `Shows the newest cluster events, oldest first. With --follow it keeps
printing each new one as it happens (a server-sent event stream that resumes
where it broke off) until interrupted. --vm, --host and --kind (a prefix, such
as migration- or vm-) select events. With -o json, each event is one line of
JSON (with -o yaml, one YAML document).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			if follow {
				f.Backlog = limit
				if !g.structured() {
					fmt.Printf("%-12s  %-24s  %-8s  %-16s  %s\n", "TIME", "KIND", "HOST", "VM", "MESSAGE")
				}
				return cl.FollowEvents(cmd.Context(), f, func(e api.Event) error {
					switch g.output {
					case "json":
						return json.NewEncoder(os.Stdout).Encode(e)
					case "yaml":
						fmt.Println("---")
						return g.emit(e)
					}
					_, err := fmt.Printf("%-12s  %-24s  %-8s  %-16s  %s\n", e.Time.Local().Format("15:04:05.000"), e.Kind, dash(e.Node), dash(e.VM), strings.TrimSpace(e.Message))
					return err
				})
			}
			picked, err := cl.EventsMatching(cmd.Context(), f, limit)
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(picked)
			}
			var rows [][]string
			for _, e := range picked {
				rows = append(rows, []string{e.Time.Local().Format("15:04:05.000"), e.Kind, dash(e.Node), dash(e.VM), strings.TrimSpace(e.Message)})
			}
			table(os.Stdout, []string{"TIME", "KIND", "HOST", "VM", "MESSAGE"}, rows)
			return nil
		},
	}
	c.Flags().IntVarP(&limit, "limit", "n", 50, "how many of the newest events (with --follow: shown before the new ones)")
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events as they happen")
	c.Flags().StringVar(&f.VM, "vm", "", "only events of this guest")
	c.Flags().StringVar(&f.Host, "host", "", "only events of this host")
	c.Flags().StringVar(&f.Kind, "kind", "", "only events whose kind starts with this (migration-, vm-, host-, ha-, ...)")
	return c
}
