package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// Every series the shipped Grafana dashboard asks Prometheus for is one
// Ferry serves (or the process's own, from the client library), so that no
// panel stays empty for a misspelt name. (That each expression is valid
// PromQL is checked by the end-to-end test against a real Prometheus.)
func TestDashboardUsesServedMetrics(t *testing.T) {
	b, err := os.ReadFile("../../deploy/grafana/ferry-cluster.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	served := Names()
	series := regexp.MustCompile(`\b(ferry|process|go)_[a-z0-9_]+`)
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q asks for nothing", p.Title)
		}
		for _, tg := range p.Targets {
			for _, name := range series.FindAllString(tg.Expr, -1) {
				if !strings.HasPrefix(name, "ferry_") {
					continue // the client library's process and Go collectors
				}
				base := name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(served, trimmed) {
						base = trimmed
					}
				}
				if !slices.Contains(served, base) {
					t.Errorf("panel %q asks for %s, which Ferry does not serve", p.Title, name)
				}
			}
		}
	}
}
