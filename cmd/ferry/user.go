package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/spf13/cobra"
)

// certState says how long a certificate has left, and that it should be
// renewed once in the last third of its lifetime.
func certState(issued, expires, now time.Time) string {
	left := expires.Sub(now)
	days := int(left.Hours()/24) + 1
	switch {
	case left <= 0:
		return "expired"
	case left < expires.Sub(issued)/3:
		return fmt.Sprintf("%dd left: renew (ferry user renew)", days)
	}
	return fmt.Sprintf("%dd left", days)
}

// Long on purpose: a declarative list, one entry per option, read top to bottom.
func userCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "user", Short: "People and tools that call the API, each with a role (admin, operator, viewer)"}
	var role, out string
	create := &cobra.Command{
		Use:   "create NAME --role ROLE",
		Short: "Issue a client certificate with a role; the key is made here and never sent",
		Long: `Makes a key on this machine, asks the cluster (admin only) to certify it for NAME
with ROLE, and writes the credentials to --out (default ./NAME): client.crt,
client.key, ca.crt and the API address. Use them with --credentials DIR or
FERRY_CREDENTIALS=DIR.

Roles: metrics (reads /metrics only: a Prometheus server's credential),
viewer (read only), operator (VM lifecycle, migration, drain), admin
(everything, including users, hosts and cluster settings).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := api.ValidateName("user", name); err != nil {
				return err
			}
			if _, err := pki.ParseRole(role); err != nil {
				return err
			}
			if out == "" {
				out = name
			}
			if _, err := os.Stat(out); err == nil {
				return fmt.Errorf("%s exists; pass --out to write somewhere else", out)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			key, csr, err := pki.NewKeyAndCSR(name)
			if err != nil {
				return err
			}
			u, err := cl.CreateUser(cmd.Context(), api.UserCreateRequest{Name: name, Role: role, CSR: string(csr)})
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			for _, f := range []struct {
				name string
				data []byte
				mode os.FileMode
			}{{client.CredKey, key, 0o600}, {client.CredCert, []byte(u.Certificate), 0o644},
				{client.CredCA, []byte(u.CA), 0o644}, {client.CredServer, []byte(cl.Server() + "\n"), 0o644}} {
				if err := os.WriteFile(filepath.Join(out, f.name), f.data, f.mode); err != nil {
					return err
				}
			}
			fmt.Printf("user %s (%s) created, certificate valid until %s\ncredentials in %s: use --credentials %s\n",
				u.Name, u.Role, u.Expires.Local().Format("2006-01-02"), out, out)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "admin, operator, viewer or metrics (required)")
	create.Flags().StringVar(&out, "out", "", "directory for the credentials (default ./NAME)")
	create.MarkFlagRequired("role")
	renew := &cobra.Command{
		Use:   "renew --credentials DIR",
		Short: "Exchange the certificate in --credentials DIR for a new one (new key, same name and role)",
		Long: `Makes a new key on this machine and exchanges the certificate in the
--credentials directory for a new one valid for another year, with the same name
and role; the old certificate is revoked. Any user may renew its own certificate
while it is valid and not yet replaced.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.credentials == "" {
				return fmt.Errorf("pass --credentials DIR (or set FERRY_CREDENTIALS): the directory ferry user create wrote")
			}
			cur, err := pki.LoadCert(filepath.Join(g.credentials, client.CredCert))
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			key, csr, err := pki.NewKeyAndCSR(cur.Subject.CommonName)
			if err != nil {
				return err
			}
			u, err := cl.RenewUser(cmd.Context(), csr)
			if err != nil {
				return err
			}
			if err := pki.ReplacePair(filepath.Join(g.credentials, client.CredCert), filepath.Join(g.credentials, client.CredKey), []byte(u.Certificate), key); err != nil {
				return fmt.Errorf("the cluster renewed the certificate (serial %s) but writing it failed: %w; ask an admin for a new one", u.Serial, err)
			}
			fmt.Printf("user %s (%s): new certificate valid until %s in %s; the old one is revoked\n",
				u.Name, u.Role, u.Expires.Local().Format("2006-01-02"), g.credentials)
			return nil
		},
	}
	list := &cobra.Command{
		Use: "list", Short: "List users", Args: cobra.NoArgs, Aliases: []string{"ls"},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			us, err := cl.ListUsers(cmd.Context())
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(us)
			}
			var rows [][]string
			now := time.Now()
			for _, u := range us {
				rows = append(rows, []string{u.Name, u.Role, u.Expires.Local().Format("2006-01-02"), certState(u.Created, u.Expires, now), u.Serial})
			}
			table(os.Stdout, []string{"NAME", "ROLE", "EXPIRES", "CERTIFICATE", "SERIAL"}, rows)
			return nil
		},
	}
	remove := &cobra.Command{
		Use: "remove NAME", Short: "Revoke a user's certificate", Args: cobra.ExactArgs(1), Aliases: []string{"rm"},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteUser(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Printf("user %s removed; its certificate is refused from now on\n", args[0])
			return nil
		},
	}
	c.AddCommand(create, renew, list, remove)
	return c
}

func nodeRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove HOST",
		Short: "Take a drained host out of the cluster for good and revoke its certificates",
		Long: `Revokes the host's certificates (the API, etcd and migration streams refuse them
from now on), deletes its record and removes its etcd member. Its guests must
have left (ferry node drain HOST) first. An agent still running there stops.
To bring the machine back, give it a new identity.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if err := cl.RemoveNode(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Printf("host %s removed; its certificates are revoked\n", args[0])
			return nil
		},
	}
}
