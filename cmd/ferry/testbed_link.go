package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/spf13/cobra"
)

func testbedLinkCmd() *cobra.Command {
	var (
		name, rate, loss     string
		delay, jitter, queue time.Duration
		oneWay, clear        bool
	)
	c := &cobra.Command{
		Use:   "link [A B]",
		Short: "Shape the underlay between two testbed hosts (rate, delay, jitter, loss), or list the shaped links",
		Long: `Shapes the link between testbed hosts A and B in both directions (--one-way:
from A to B only): --rate caps it (bits per second: 200M, 1.5G), --delay adds
that much to every frame one way (a 20ms delay both ways is a 40 ms round
trip), --jitter varies the delay within ± that (frames keep their order),
--loss drops that share of frames at random (1%), --queue bounds how long a
frame waits for the rate (default 100ms). Unset figures leave that part
unshaped; --clear unshapes the link. Everything between the two hosts goes
through it: etcd, the API, migration streams and the guests' overlay.

The testbed must have been built with --emulate-links: the kernels here have
no netem, so a forwarder in user space carries the hosts' frames (package
linkemu). Without A and B, lists the shaped links and what they dropped.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 0 && len(args) != 2 {
				return fmt.Errorf("give two hosts (A B), or none to list")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := testbed.Load(name)
			if err != nil {
				return err
			}
			if len(args) == 0 {
				return printLinks(b)
			}
			var p linkemu.Profile
			if !clear {
				if rate != "" {
					if p.RateBits, err = linkemu.ParseRate(rate); err != nil {
						return fmt.Errorf("--rate: %w", err)
					}
				}
				if loss != "" {
					if p.Loss, err = linkemu.ParseLoss(loss); err != nil {
						return fmt.Errorf("--loss: %w", err)
					}
				}
				p.Delay, p.Jitter, p.Queue = delay, jitter, queue
				if p.Zero() {
					return fmt.Errorf("say what to do to the link (--rate, --delay, --jitter, --loss), or --clear")
				}
			}
			if err := b.SetLink(cmd.Context(), args[0], args[1], p, oneWay); err != nil {
				return err
			}
			dir := "<->"
			if oneWay {
				dir = "->"
			}
			fmt.Printf("%s %s %s: %s\n", args[0], dir, args[1], p)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&name, "name", "fbed", "testbed name")
	f.StringVar(&rate, "rate", "", "cap in bits per second (200M, 1.5G, 800k)")
	f.DurationVar(&delay, "delay", 0, "one-way delay added to every frame")
	f.DurationVar(&jitter, "jitter", 0, "the delay varies within ± this")
	f.StringVar(&loss, "loss", "", "share of frames dropped at random (1% or 0.01)")
	f.DurationVar(&queue, "queue", 0, "longest wait for the rate before a frame is dropped (default 100ms)")
	f.BoolVar(&oneWay, "one-way", false, "shape only from A to B")
	f.BoolVar(&clear, "clear", false, "unshape the link")
	return c
}

func printLinks(b *testbed.Bed) error {
	if !b.EmulatedLinks {
		return fmt.Errorf("testbed %s was built without emulated links (ferry testbed up --emulate-links)", b.Name)
	}
	st, err := b.Links()
	if err != nil {
		return err
	}
	if len(st) == 0 {
		fmt.Println("no link is shaped")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tPROFILE\tFRAMES\tLOST\tQUEUE FULL")
	for _, s := range st {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\n", s.From, s.To, s.Profile, s.Counters.Frames, s.Counters.Lost, s.Counters.Overflown)
	}
	return tw.Flush()
}

// testbedForwardCmd is the link forwarder's process (started by testbed up).
func testbedForwardCmd() *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:    "forward",
		Short:  "Run a testbed's link forwarder (started by testbed up --emulate-links)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return testbed.Forward(cmd.Context(), name)
		},
	}
	c.Flags().StringVar(&name, "name", "fbed", "testbed name")
	return c
}
