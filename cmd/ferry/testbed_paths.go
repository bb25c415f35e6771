package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/spf13/cobra"
)

func testbedPathCmd() *cobra.Command {
	var name string
	var loss int
	c := &cobra.Command{
		Use:   "path cut|restore HOST PATH",
		Short: "Black-hole one host's port on one fabric of a testbed built with --paths (every frame dropped both ways, the link left up; with --loss N only N % of them, at random), or restore it",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			pct := 0
			switch args[0] {
			case "cut":
				pct = loss
			case "restore":
			default:
				return fmt.Errorf("testbed path: %q is neither cut nor restore", args[0])
			}
			k, err := strconv.Atoi(args[2])
			if err != nil {
				return fmt.Errorf("testbed path: PATH is a fabric's number (0, 1, ...), not %q", args[2])
			}
			b, err := testbed.Load(name)
			if err != nil {
				return err
			}
			if err := b.LosePath(args[1], k, pct); err != nil {
				return err
			}
			fmt.Printf("path %d of %s %sd\n", k, args[1], args[0])
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "fbed", "testbed name")
	c.Flags().IntVar(&loss, "loss", 100, "with cut: the percentage of frames dropped (1..100)")
	return c
}

func testbedPathKeeperCmd() *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:    "paths",
		Short:  "Run the path monitor of a testbed's client (started by testbed up --paths)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return testbed.KeepClientPaths(cmd.Context(), name, slog.New(slog.NewTextHandler(os.Stderr, nil)))
		},
	}
	c.Flags().StringVar(&name, "name", "fbed", "testbed name")
	return c
}
