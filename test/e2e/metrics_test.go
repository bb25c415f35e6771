package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/metrics"
	"github.com/ferryvm/ferry/internal/testbed"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads one series' value from every host's /metrics (as a
// Prometheus server would, each host's own endpoint) and sums them: a
// counter's value, a gauge's, a histogram's count. Series whose labels
// include want's match; hosts that do not answer count nothing.
func scrape(t *testing.T, b *testbed.Bed, name string, want map[string]string) float64 {
	t.Helper()
	sum := 0.0
	for _, v := range scrapeEach(t, b, name, want) {
		sum += v
	}
	return sum
}

// growth is how much a series grew over the hosts that answered both
// times (a counter of a host that went down, or restarted, is left out,
// as Prometheus' increase() would).
func growth(before, after map[string]float64) float64 {
	g := 0.0
	for h, a := range after {
		if b, ok := before[h]; ok && a >= b {
			g += a - b
		}
	}
	return g
}

// scrapeEach is scrape per host that answered.
func scrapeEach(t *testing.T, b *testbed.Bed, name string, want map[string]string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for i := range b.Hosts {
		cl, err := b.Client(i)
		if err != nil {
			t.Fatal(err)
		}
		text, err := cl.Metrics(ctxT(t, 10*time.Second))
		if err != nil {
			continue // a host that is down
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(text))
		if err != nil {
			t.Fatalf("host %s's /metrics does not parse: %v", b.Hosts[i].Name, err)
		}
		out[b.Hosts[i].Name], _ = metrics.Sum(fams[name], want)
	}
	return out
}
