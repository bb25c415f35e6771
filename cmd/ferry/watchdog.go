package main

import (
	"log/slog"
	"os"

	"github.com/ferryvm/ferry/internal/ha"
	"github.com/spf13/cobra"
)

func watchdogCmd() *cobra.Command {
	var socket string
	c := &cobra.Command{
		Use:   "watchdog",
		Short: "Run this host's fencing watchdog (the agent starts it)",
		Long: `Run the per-host watchdog. The agent starts it and feeds it after every
lease renewal with a deadline and the HA guests it must kill if the agent
stops feeding it (the agent hangs, is frozen or dies). It runs in its own
session, outlives agent restarts, and exits when nothing is armed and no agent
is connected. See docs/HA.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "watchdog", "pid", os.Getpid())
			return ha.NewWatchdog(log).Serve(cmd.Context(), socket)
		},
	}
	c.Flags().StringVar(&socket, "socket", "/run/ferry/watchdog.sock", "unix socket the agent feeds")
	return c
}
