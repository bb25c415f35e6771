package main

import (
	"fmt"
	"os"
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
			if b.Paths > 1 {
				fmt.Printf("  %d paths per host (fabrics 198.18.0-%d.0/24, own addresses on lo): %s testbed path cut h1 1\n", b.Paths, b.Paths-1, self)
			}
			if b.EmulatedLinks {
				fmt.Printf("  links between hosts through the emulator (pid %d): %s testbed link h1 h2 --rate 200M --delay 20ms\n", b.ForwarderPID, self)
			}
			fmt.Printf("\nuse it:  ip netns exec %s %s --data-dir %s vm create web\n", b.Hosts[0].NS, self, b.Hosts[0].DataDir)
			fmt.Printf("remove:  %s testbed down --name %s\n", self, b.Name)
			return nil
		},
	}
	up.Flags().IntVar(&o.Hosts, "hosts", 3, "number of hosts")
	up.Flags().StringVar(&o.Name, "name", "fbed", "testbed name (at most 8 characters; prefixes its namespaces)")
	up.Flags().StringVar(&o.ImageDir, "image-dir", image.DefaultDir, "where the tiny image is built")
	up.Flags().StringVar(&o.Accel, "accel", "tcg", "accelerator for the hosts' guests")
	up.Flags().BoolVar(&o.APIVIP, "api-vip", false, "give the API the virtual address "+testbed.VIPAddr+", which every host bids for with VRRP")
	up.Flags().IntVar(&o.Paths, "paths", 1, "underlay paths per host, one per fabric (2 or more: each host's address is reached over all healthy ones; `ferry testbed path cut` fails one)")
	up.Flags().BoolVar(&o.EmulatedLinks, "emulate-links", false, "carry the hosts' underlay through the link emulator, so that `ferry testbed link` can shape it")
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
	c.AddCommand(up, down, testbedStreamCmd(), testbedCrashCmd(), testbedLinkCmd(), testbedForwardCmd(), testbedPathCmd(), testbedPathKeeperCmd())
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
		Long: `Holds one TCP connection to the guest's /stream (a numbered line every 10 ms)
for --for, and reports the lines received, the longest time without a line
(the silence at the end included) and whether the connection is intact: it
held to the end, lines kept coming until then (the last within 1 s), in
sequence and from one boot of the guest. Exits 1 when it is not.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := testbed.Load(name)
			if err != nil {
				return err
			}
			w, err := testbed.WatchStream(cmd.Context(), b.HTTPClient(b.ClientNS, 0), ip, 10*time.Millisecond)
			if err != nil {
				return err
			}
			select {
			case <-cmd.Context().Done():
			case <-time.After(dur):
			}
			r := w.Stop()
			fmt.Printf("client stream: %d lines over %s, longest gap %dms (%s-%s), connection intact: %v, guest boots seen: %d\n",
				r.Lines, dur, r.LongestGap.Milliseconds(), r.GapFrom.Format("15:04:05.000"), r.GapTo.Format("15:04:05.000"), r.Intact, len(r.Boots))
			if !r.Intact {
				return exitError{code: 1, msg: "the stream is not intact: " + r.Problem}
			}
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "fbed", "testbed name")
	c.Flags().StringVar(&ip, "to", "", "guest address")
	c.Flags().DurationVar(&dur, "for", 10*time.Second, "how long to stream")
	return c
}
