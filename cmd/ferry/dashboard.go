package main

import (
	"fmt"
	"path/filepath"

	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/spf13/cobra"
)

func dashboardCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "dashboard",
		Short: "Print a one-time link that logs your browser in to the web dashboard",
		Long: `Asks the API, with your certificate, for a link that logs a browser in to the
dashboard as you, with your role, for 8 hours. Open it within two minutes; it
works once. The dashboard is served by every host's API (https://HOST:7443/ui/);
its certificate is signed by the cluster's CA, so a browser asks whether to
trust it unless that CA (ca.crt in your credentials) is imported.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			l, err := cl.DashboardLogin(cmd.Context())
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(l)
			}
			ca := filepath.Join(g.dataDir, "pki", pki.CACert)
			if g.credentials != "" {
				ca = filepath.Join(g.credentials, client.CredCA)
			}
			fmt.Printf("Open this within two minutes (it works once), as %s (%s):\n\n  %s\n\nThe cluster's CA, for the browser to trust: %s\n", l.User, l.Role, l.URL, ca)
			return nil
		},
	}
}
