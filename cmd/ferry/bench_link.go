package main

import (
	"fmt"
	"os"
	"time"

	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/spf13/cobra"
)

// linkRow is one profile of the link emulator, set and measured.
type linkRow struct {
	Set        string  `json:"set"`
	RTTMinMS   float64 `json:"rtt_min_ms"`
	RTTMedMS   float64 `json:"rtt_median_ms"`
	RTTP99MS   float64 `json:"rtt_p99_ms"`
	Loss       float64 `json:"probe_loss"` // of probes, both ways
	Throughput float64 `json:"tcp_mbit_s"` // one TCP stream
}

func benchLinkCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "link",
		Short: "Does the testbed's link emulator deliver what it is set to? Round trips, loss and one TCP stream per profile",
		Long: `Builds two network namespaces joined through the user-space link emulator (as
ferry testbed up --emulate-links does), and for each profile measures 1,000 UDP
round trips (every 2 ms; the loss of the probes counts both ways) and one TCP
stream for 4 s (its rate over the last three seconds), set against what the
profile says. Delay applies each way: a 20 ms delay is a 40 ms round trip.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			say := sayer(!asJSON)
			p, err := linkemu.NewPair(fmt.Sprintf("fbl%d", os.Getpid()%1000))
			if err != nil {
				return err
			}
			defer p.Close()
			profiles := []linkemu.Profile{{}, {Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond}, {RateBits: 100e6}, {RateBits: 500e6},
				{RateBits: 1e9}, {Loss: 0.01}, {Loss: 0.05}, {RateBits: 200e6, Delay: 10 * time.Millisecond}}
			var rows []linkRow
			for _, pr := range profiles {
				if err := p.Both(pr); err != nil {
					return err
				}
				m, err := linkemu.Probe(cmd.Context(), p.A, p.B, p.AddrB, 1000, 2*time.Millisecond)
				if err != nil {
					return err
				}
				bits, err := linkemu.Throughput(cmd.Context(), p.A, p.B, p.AddrB, 4*time.Second)
				if err != nil {
					return err
				}
				ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
				r := linkRow{Set: pr.String() + " (each way)", RTTMinMS: ms(m.RTTMin), RTTMedMS: ms(m.RTTMedian), RTTP99MS: ms(m.RTTP99),
					Loss: m.Loss, Throughput: bits / 1e6}
				say("%-48s rtt min %7.2fms median %7.2fms p99 %7.2fms  probes lost %5.2f%%  tcp %7.1f Mbit/s",
					r.Set, r.RTTMinMS, r.RTTMedMS, r.RTTP99MS, r.Loss*100, r.Throughput)
				rows = append(rows, r)
			}
			if asJSON {
				return printJSON(os.Stdout, map[string]any{"benchmark": "link", "date": time.Now().UTC().Format(time.RFC3339), "profiles": rows})
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return c
}
