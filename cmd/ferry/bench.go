package main

import "github.com/spf13/cobra"

func benchCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "bench", Short: "Measure Ferry on this machine"}
	c.AddCommand(benchStartupCmd(g), benchMigrateCmd(), benchFailoverCmd(), benchPredictCmd(), benchLinkCmd(), benchMonitorCmd(), benchScaleCmd(), benchEtcdMemberCmd(), benchPredictiveCmd())
	return c
}
