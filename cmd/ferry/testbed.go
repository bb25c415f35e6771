package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/spf13/cobra"
)

func testbedCmd() *cobra.Command {
	c := &cobra.Command{Use: "testbed", Short: "A cluster of hosts in network namespaces on this machine (root)"}
	var o testbed.Options
	up := &cobra.Command{
		Use:   "up",
		Short: "Build N hosts as network namespaces on an underlay, a client namespace and shared storage, and start a joined agent on each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			o.Bin = self
			b, err := testbed.Up(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Printf("testbed %s is up: %d hosts\n", b.Name, len(b.Hosts))
			for _, h := range b.Hosts {
				fmt.Printf("  %-4s namespace %-10s underlay %-14s agent pid %d\n", h.Name, h.NS, h.Addr, h.PID)
			}
			fmt.Printf("  client namespace %s: underlay %s, overlay %s\n", b.ClientNS, b.ClientAddr, b.ClientIP)
			fmt.Printf("\nuse it:  ip netns exec %s %s --data-dir %s vm create web\n", b.Hosts[0].NS, self, b.Hosts[0].DataDir)
			fmt.Printf("remove:  %s testbed down --name %s\n", self, b.Name)
			return nil
		},
	}
	up.Flags().IntVar(&o.Hosts, "hosts", 3, "number of hosts")
	up.Flags().StringVar(&o.Name, "name", "fbed", "testbed name (at most 8 characters; prefixes its namespaces)")
	up.Flags().StringVar(&o.ImageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	up.Flags().StringVar(&o.Accel, "accel", "tcg", "accelerator for the hosts' guests")
	var name string
	down := &cobra.Command{
		Use:   "down",
		Short: "Remove every namespace, device, process and file of a testbed, also after a crash",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := testbed.Down(name); err != nil {
				return err
			}
			fmt.Printf("testbed %s removed\n", name)
			return nil
		},
	}
	down.Flags().StringVar(&name, "name", "fbed", "testbed name")
	c.AddCommand(up, down, testbedStreamCmd(), testbedCrashCmd())
	return c
}

func testbedCrashCmd() *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "crash HOST",
		Short: "Crash a testbed host: SIGKILL every process in its namespace at once (agent, etcd, watchdog, guests)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := testbed.Load(name)
			if err != nil {
				return err
			}
			for i, h := range b.Hosts {
				if h.Name == args[0] {
					if err := b.KillHost(i); err != nil {
						return err
					}
					fmt.Printf("host %s crashed at %s\n", h.Name, time.Now().Format("15:04:05.000"))
					return nil
				}
			}
			return fmt.Errorf("testbed %s has no host %q", name, args[0])
		},
	}
	c.Flags().StringVar(&name, "name", "fbed", "testbed name")
	return c
}

func testbedStreamCmd() *cobra.Command {
	var name, ip string
	var dur time.Duration
	c := &cobra.Command{
		Use:   "stream",
		Short: "From the testbed's client namespace, hold one TCP stream to a guest and report its longest gap",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := testbed.Load(name)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), dur)
			defer cancel()
			hc := b.HTTPClient(b.ClientNS, 0)
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ip+"/stream?interval=10ms", nil)
			resp, err := hc.Do(req)
			if err != nil {
				return fmt.Errorf("connecting to the guest: %w", err)
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			var lines int
			var last time.Time
			var gap time.Duration
			boots := map[string]bool{}
			for sc.Scan() {
				now := time.Now()
				if !last.IsZero() && now.Sub(last) > gap {
					gap = now.Sub(last)
				}
				last = now
				lines++
				if f := strings.Fields(sc.Text()); len(f) == 2 {
					boots[f[1]] = true
				}
			}
			intact := ctx.Err() != nil // the stream ran until we ended it
			fmt.Printf("client stream: %d lines over %s, longest gap %dms, connection intact: %v, guest boots seen: %d\n",
				lines, dur, gap.Milliseconds(), intact, len(boots))
			if !intact {
				return exitError{code: 1, msg: fmt.Sprintf("the connection ended early: %v", sc.Err())}
			}
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "fbed", "testbed name")
	c.Flags().StringVar(&ip, "to", "", "guest address")
	c.Flags().DurationVar(&dur, "for", 10*time.Second, "how long to stream")
	return c
}
