package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/api"
)

// Hosts are scraped where they serve the API; one listening on every
// address at its cluster address; one that does not say is left out.
func TestScrapeTargets(t *testing.T) {
	got := scrapeTargets([]api.Node{
		{Name: "h2", API: "198.18.0.12:7443", Address: "198.18.0.12"},
		{Name: "h1", API: "0.0.0.0:7443", Address: "198.18.0.11"},
		{Name: "h3", API: ":7443", Address: "198.18.0.13"},
		{Name: "old", Address: "198.18.0.14"},
	})
	want := []string{"198.18.0.11:7443", "198.18.0.12:7443", "198.18.0.13:7443"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("targets %v, want %v", got, want)
	}
}

// The configuration names the credential's files and every target; a
// cluster with nothing to scrape, or a value YAML would misread, is refused.
func TestScrapeConfig(t *testing.T) {
	var b bytes.Buffer
	if err := writeScrapeConfig(&b, scrapeConfig{Job: "ferry", Interval: "15s", CredDir: "/etc/prometheus/ferry", Targets: []string{"198.18.0.11:7443", "198.18.0.12:7443"}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"scheme: https", "ca_file: /etc/prometheus/ferry/ca.crt", "cert_file: /etc/prometheus/ferry/client.crt",
		"key_file: /etc/prometheus/ferry/client.key", "- '198.18.0.11:7443'", "- '198.18.0.12:7443'", "scrape_interval: 15s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the configuration lacks %q:\n%s", want, b.String())
		}
	}
	if err := writeScrapeConfig(&b, scrapeConfig{Job: "ferry", Interval: "15s", CredDir: "/x"}); err == nil {
		t.Error("a configuration without targets was written")
	}
	if err := writeScrapeConfig(&b, scrapeConfig{Job: "a: b", Interval: "15s", CredDir: "/x", Targets: []string{"h:1"}}); err == nil {
		t.Error("a job name YAML would misread was written")
	}
}
