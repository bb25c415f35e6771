// Command ferry is Ferry's one binary: the host agent, the CLI, the image
// builder and the benchmarks.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/spf13/cobra"
)

// globals are the flags every client command shares.
type globals struct {
	dataDir     string
	server      string
	output      string
	credentials string
}

// client uses --credentials (a user's certificate) when given, else the
// admin credentials an agent keeps in --data-dir.
func (g *globals) client() (*client.Client, error) {
	if g.credentials != "" {
		warnExpiry(os.Stderr, filepath.Join(g.credentials, client.CredCert), g.credentials, time.Now())
		return client.FromCredentials(g.credentials, g.server)
	}
	return client.FromDataDir(g.dataDir, g.server)
}

// outputClient checks --output and returns a client: what every command
// that prints a table or JSON does first.
func (g *globals) outputClient() (*client.Client, error) {
	if err := checkOutput(g); err != nil {
		return nil, err
	}
	return g.client()
}

// warnExpiry tells the user, once their certificate is in the last third
// of its lifetime (or past it), when it expires and how to renew it.
func warnExpiry(w io.Writer, certFile, dir string, now time.Time) {
	c, err := pki.LoadCert(certFile)
	if err != nil || !pki.NeedsRenewal(c, now, 0) {
		return
	}
	left := c.NotAfter.Sub(now)
	if left <= 0 {
		fmt.Fprintf(w, "warning: your certificate (%s) expired on %s: ask an admin for a new one (ferry user create)\n",
			c.Subject.CommonName, c.NotAfter.Local().Format("2006-01-02"))
		return
	}
	fmt.Fprintf(w, "warning: your certificate (%s) expires on %s, in %d days: renew it with `ferry --credentials %s user renew`\n",
		c.Subject.CommonName, c.NotAfter.Local().Format("2006-01-02"), int(left.Hours()/24)+1, dir)
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

func main() {
	g := &globals{}
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "Ferry keeps QEMU/KVM guests running while their hosts are maintained, overloaded or fail",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", envOr("FERRY_DATA_DIR", "/var/lib/ferry"), "agent state directory; the CLI finds its credentials and the API address there ($FERRY_DATA_DIR)")
	root.PersistentFlags().StringVar(&g.credentials, "credentials", os.Getenv("FERRY_CREDENTIALS"), "directory written by `ferry user create` (certificate with a role); default: the admin credentials in --data-dir ($FERRY_CREDENTIALS)")
	root.PersistentFlags().StringVar(&g.server, "server", os.Getenv("FERRY_SERVER"), "API address, e.g. https://127.0.0.1:7443 (default: the one recorded in --data-dir) ($FERRY_SERVER)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	root.AddCommand(agentCmd(g), vmCmd(g), nodeCmd(g), imageCmd(), benchCmd(g), testbedCmd(), watchdogCmd(), clusterCmd(g), eventsCmd(g), userCmd(g), policyCmd(g), balanceCmd(g), metricsCmd(g), doctorCmd(g), dashboardCmd(g), versionCmd())
	addCompletions(g, root)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			fmt.Fprintln(os.Stderr, "error:", ee.msg)
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// Version is set at build time.
var Version = "dev"

func versionCmd() *cobra.Command {
	return &cobra.Command{Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) { fmt.Println("ferry", Version) }}
}
