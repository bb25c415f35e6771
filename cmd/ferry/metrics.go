package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/spf13/cobra"
)

func metricsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "metrics", Short: "Prometheus: the scrape configuration for this cluster, or one host's metrics"}
	var credDir, interval, job string
	cfg := &cobra.Command{
		Use:   "scrape-config",
		Short: "Print a Prometheus scrape configuration for every host of the cluster",
		Long: `Prints a prometheus.yml (YAML) that scrapes every host's /metrics over
mutual TLS. Give the Prometheus server a credential of its own with the
metrics role, which reads /metrics and nothing else, and say where it will
keep it:

  ferry user create prometheus --role metrics --out /etc/prometheus/ferry
  ferry metrics scrape-config --cred-dir /etc/prometheus/ferry > /etc/prometheus/prometheus.yml

Run it again after hosts join or leave (it reads the list of hosts).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if credDir == "" {
				return fmt.Errorf("--cred-dir is required: where the Prometheus server keeps the metrics user's credentials (ferry user create NAME --role metrics --out DIR)")
			}
			if !filepath.IsAbs(credDir) {
				return fmt.Errorf("--cred-dir %q must be an absolute path (Prometheus reads it from its own working directory)", credDir)
			}
			d, err := time.ParseDuration(interval)
			if err != nil || d < time.Second {
				return fmt.Errorf("--interval %q must be a duration of at least 1s, such as 15s", interval)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			nodes, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			return writeScrapeConfig(os.Stdout, scrapeConfig{Job: job, Interval: interval, CredDir: credDir, Targets: scrapeTargets(nodes)})
		},
	}
	cfg.Flags().StringVar(&credDir, "cred-dir", "", "where the Prometheus server keeps the metrics user's credentials (absolute)")
	cfg.Flags().StringVar(&interval, "interval", "15s", "scrape interval")
	cfg.Flags().StringVar(&job, "job", "ferry", "Prometheus job name")
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the metrics of the host whose API the CLI talks to (Prometheus' text format)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			text, err := cl.Metrics(cmd.Context())
			if err != nil {
				return err
			}
			_, err = fmt.Print(text)
			return err
		},
	}
	c.AddCommand(cfg, show)
	return c
}

// scrapeTargets are the hosts' API addresses (host:port), sorted; a host
// that listens on every address is reached at its cluster address.
func scrapeTargets(nodes []api.Node) []string {
	var out []string
	for _, n := range nodes {
		host, port, err := net.SplitHostPort(n.API)
		if err != nil {
			continue // an agent too old to say where it serves
		}
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = n.Address
		}
		out = append(out, net.JoinHostPort(host, port))
	}
	sort.Strings(out)
	return out
}

type scrapeConfig struct {
	Job, Interval, CredDir string
	Targets                []string
}

var scrapeTemplate = template.Must(template.New("prometheus.yml").Funcs(template.FuncMap{
	"path": func(dir, name string) string { return filepath.Join(dir, name) },
}).Parse(`# Prometheus configuration for a Ferry cluster, written by
# ferry metrics scrape-config. Every host serves /metrics over mutual TLS;
# the credential in {{.CredDir}} has the metrics role.
global:
  scrape_interval: {{.Interval}}
  evaluation_interval: {{.Interval}}
scrape_configs:
  - job_name: {{.Job}}
    scheme: https
    metrics_path: /metrics
    tls_config:
      ca_file: {{path .CredDir "` + client.CredCA + `"}}
      cert_file: {{path .CredDir "` + client.CredCert + `"}}
      key_file: {{path .CredDir "` + client.CredKey + `"}}
    static_configs:
      - targets:
{{- range .Targets}}
          - '{{.}}'
{{- end}}
`))

// writeScrapeConfig writes the configuration; a cluster with no host that
// says where it serves is an error (the file would scrape nothing).
func writeScrapeConfig(w io.Writer, c scrapeConfig) error {
	if len(c.Targets) == 0 {
		return fmt.Errorf("no host reports its API address; nothing to scrape")
	}
	for _, s := range []string{c.Job, c.CredDir} {
		if strings.ContainsAny(s, "'\"\n:#{}[]") {
			return fmt.Errorf("%q cannot go into the YAML as it is", s)
		}
	}
	return scrapeTemplate.Execute(w, c)
}
