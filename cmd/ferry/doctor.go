package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/doctor"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/spf13/cobra"
)

func doctorCmd(g *globals) *cobra.Command {
	var imageDir, accel string
	var ports []int
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host's prerequisites for a Ferry agent and say what to fix",
		Long: `Checks what an agent needs on this host: QEMU ` + doctor.MinQEMU + ` or newer, an
accelerator (KVM proven by booting a probe guest, else TCG), bridge, VXLAN and
TAP devices (tried in a scratch network namespace), a synchronised clock,
the API's and etcd's ports, free memory and disk, and the built-in image.
Exits 1 when a check fails (warnings do not). Run it as root, as the agent runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g); err != nil {
				return err
			}
			rs := doctor.Run(cmd.Context(), doctor.Options{DataDir: g.dataDir, ImageDir: imageDir, Ports: ports, Running: agentAnswers(g.dataDir), Accel: accel})
			if g.structured() {
				if err := g.emit(rs); err != nil {
					return err
				}
			} else {
				var rows [][]string
				for _, r := range rs {
					rows = append(rows, []string{string(r.Status), r.Check, r.Found, r.Fix})
				}
				table(os.Stdout, []string{"", "CHECK", "FOUND", "FIX"}, rows)
			}
			if doctor.Failed(rs) {
				return exitError{code: 1, msg: "this host is not ready for a Ferry agent (see FAIL above)"}
			}
			return nil
		},
	}
	c.Flags().StringVar(&imageDir, "image-dir", image.DefaultDir, "where the built-in image is kept")
	c.Flags().StringVar(&accel, "accel", "auto", "the accelerator the agent will run with: auto (boots a probe guest under KVM), kvm or tcg")
	c.Flags().IntSliceVar(&ports, "ports", []int{7443, 2379, 2380}, "the ports the agent serves (API, etcd client, etcd peer)")
	return c
}

// agentAnswers reports whether an agent of this data directory answers on
// the address it recorded.
func agentAnswers(dataDir string) bool {
	b, err := os.ReadFile(filepath.Join(dataDir, client.EndpointFile))
	if err != nil {
		return false
	}
	addr := strings.TrimPrefix(strings.TrimSpace(string(b)), "https://")
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
