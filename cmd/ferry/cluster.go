package main

import (
	"fmt"
	"os"

	"github.com/ferryvm/ferry/api"
	"github.com/spf13/cobra"
)

func clusterCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "cluster", Short: "Cluster-wide switches"}
	ha := &cobra.Command{Use: "ha", Short: "Pause, resume or show HA restarts (fencing always stays on)"}
	show := func(st *api.HAState) error {
		if g.structured() {
			return g.emit(st)
		}
		if st.Paused {
			fmt.Printf("HA restarts: PAUSED since %s", st.Since.Local().Format("2006-01-02 15:04:05"))
			if st.Reason != "" {
				fmt.Printf(" (%s)", st.Reason)
			}
			fmt.Println()
		} else {
			fmt.Println("HA restarts: active")
		}
		return nil
	}
	var reason string
	pause := &cobra.Command{
		Use: "pause", Short: "Stop restarting guests of dead hosts (for planned network or storage work)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			st, err := cl.SetHAPaused(cmd.Context(), true, reason)
			if err != nil {
				return err
			}
			return show(st)
		},
	}
	pause.Flags().StringVar(&reason, "reason", "", "why, recorded in the event")
	resume := &cobra.Command{
		Use: "resume", Short: "Restart guests of dead hosts again", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			st, err := cl.SetHAPaused(cmd.Context(), false, "")
			if err != nil {
				return err
			}
			return show(st)
		},
	}
	status := &cobra.Command{
		Use: "status", Short: "Show whether HA restarts are paused", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			st, err := cl.HAState(cmd.Context())
			if err != nil {
				return err
			}
			return show(st)
		},
	}
	ha.AddCommand(pause, resume, status)
	c.AddCommand(ha, securityCmd(g), tokenCmd(g))
	return c
}

func securityCmd(g *globals) *cobra.Command {
	var allow, refuse bool
	var reason string
	c := &cobra.Command{
		Use:   "security",
		Short: "Show or change the cluster's security settings (plaintext migration)",
		Long: `Without flags, shows the settings. Every migration is TLS with source
authorization. --allow-plaintext-migration (admin, with --reason) lets a
migration that asks for it (ferry vm migrate --plaintext) send the guest's
memory unencrypted; --refuse-plaintext-migration takes that back.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			var sec *api.Security
			switch {
			case allow && refuse:
				return fmt.Errorf("say --allow-plaintext-migration or --refuse-plaintext-migration, not both")
			case allow || refuse:
				sec, err = cl.SetSecurity(cmd.Context(), api.SecurityRequest{PlaintextMigration: allow, Reason: reason})
			default:
				sec, err = cl.Security(cmd.Context())
			}
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(sec)
			}
			if sec.PlaintextMigration {
				fmt.Fprintf(os.Stderr, "WARNING: %s\n", sec.Warning)
				fmt.Printf("plaintext migration: ALLOWED since %s (%s)\n", sec.Since.Local().Format("2006-01-02 15:04:05"), sec.Reason)
			} else {
				fmt.Println("plaintext migration: refused (every migration is TLS with source authorization)")
			}
			return nil
		},
	}
	c.Flags().BoolVar(&allow, "allow-plaintext-migration", false, "let migrations that ask for it run unencrypted (needs --reason)")
	c.Flags().BoolVar(&refuse, "refuse-plaintext-migration", false, "refuse plaintext migration again")
	c.Flags().StringVar(&reason, "reason", "", "why, recorded in the event")
	return c
}

func tokenCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "One-time tokens for hosts to join"}
	var ttl string
	var server bool
	create := &cobra.Command{
		Use:   "create",
		Short: "Make a one-time join token (admin); shown once",
		Long: `Prints a token for one host to join:

    ferry agent --join API-ADDR --token TOKEN --advertise HOST-ADDR

The joining host makes its own keys, checks the cluster's CA against the
fingerprint inside the token before it sends anything, and is certified by the
cluster. The token works once, until it expires (--ttl, default 1h).

With --server the token is for another etcd server:

    ferry agent --server --join API-ADDR --token TOKEN --advertise HOST-ADDR

It joins the same way, becomes a member of the cluster's etcd, and is also given
the cluster's CA keys, so that joins, users and renewals keep working when
another server is down. Only a server token gives the keys; a host token is
refused for --server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			tok, err := cl.CreateToken(cmd.Context(), api.TokenCreateRequest{TTL: ttl, Server: server})
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(tok)
			}
			fmt.Println(tok.Token)
			what := "a host"
			if tok.Server {
				what = "an etcd server (it receives the CA keys)"
			}
			fmt.Fprintf(os.Stderr, "admits %s, once, until %s\n", what, tok.Expires.Local().Format("2006-01-02 15:04:05"))
			return nil
		},
	}
	create.Flags().StringVar(&ttl, "ttl", "1h", "how long the token is valid (1m to 24h)")
	create.Flags().BoolVar(&server, "server", false, "a token for another etcd server (ferry agent --server --join): it is given the CA keys")
	c.AddCommand(create)
	return c
}
