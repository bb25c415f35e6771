package history

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
)

func TestHistoryKeepsTheLastSamples(t *testing.T) {
	r := New(time.Second, 3)
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	traffic := func(at time.Time, mig float64) *api.NodeTraffic {
		return &api.NodeTraffic{Sent: api.TrafficClasses{Migration: mig, Control: 10, Total: mig + 10}, Measured: at}
	}
	link := api.LinkStat{From: "h1", To: "h2", RTTMS: 0.5, RTTAt: t0}
	for i := range 4 {
		at := t0.Add(time.Duration(i) * time.Second)
		nodes := []api.Node{{Name: "h1", State: "ready", Load1: float64(i), Traffic: traffic(at, float64(100*i))}}
		if i < 2 {
			// h2 reports twice, then goes down; its traffic figure is old.
			nodes = append(nodes, api.Node{Name: "h2", State: "ready", Load1: 9, Traffic: traffic(at.Add(-time.Minute), 1)})
		} else {
			nodes = append(nodes, api.Node{Name: "h2", State: "not-ready", Load1: 9})
		}
		r.Sample(at, nodes, []api.LinkStat{link})
	}
	h := r.History(time.Time{}, "")
	if want := []int64{t0.Add(time.Second).UnixMilli(), t0.Add(2 * time.Second).UnixMilli(), t0.Add(3 * time.Second).UnixMilli()}; fmt.Sprint(h.Times) != fmt.Sprint(want) {
		t.Fatalf("times %v, want the last three %v", h.Times, want)
	}
	got := map[string]string{}
	for _, s := range h.Series {
		var vs []string
		for _, v := range s.Values {
			if v == nil {
				vs = append(vs, "-")
			} else {
				vs = append(vs, fmt.Sprint(*v))
			}
		}
		got[s.Metric+" "+s.Subject] = fmt.Sprint(vs)
	}
	want := map[string]string{
		"load1 h1":              "[1 2 3]",
		"load1 h2":              "[9 - -]", // not ready: no load sampled
		"sent_migration h1":     "[100 200 300]",
		"sent_control h1":       "[10 10 10]",
		"sent_guest h1":         "[0 0 0]",
		"received_control h1":   "[0 0 0]",
		"received_guest h1":     "[0 0 0]",
		"received_migration h1": "[0 0 0]",
		"link_rtt_ms h1/h2":     "[0.5 0.5 0.5]",
		"link_loss_pct h1/h2":   "[0 0 0]",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("series:\n got %v\nwant %v", got, want)
	}

	// Since the second sample; one metric family.
	h = r.History(t0.Add(2*time.Second), "sent_")
	if len(h.Times) != 1 || len(h.Series) != 3 {
		t.Errorf("since the third sample, sent_*: %d times, %d series, want 1 and 3 (%+v)", len(h.Times), len(h.Series), h)
	}

	// A subject absent for the whole history is forgotten.
	for i := range 3 {
		r.Sample(t0.Add(time.Duration(10+i)*time.Second), []api.Node{{Name: "h1", State: "ready"}}, nil)
	}
	for _, s := range r.History(time.Time{}, "").Series {
		if s.Subject != "h1" || s.Metric != "load1" {
			t.Errorf("series %s %s kept after it reported nothing for the whole history", s.Metric, s.Subject)
		}
	}
}

func TestHistoryIsBounded(t *testing.T) {
	r := New(time.Second, 2)
	var nodes []api.Node
	for i := range MaxSeries + 5 {
		nodes = append(nodes, api.Node{Name: fmt.Sprintf("h%d", i), State: "ready"})
	}
	r.Sample(time.Now(), nodes, nil)
	h := r.History(time.Time{}, "")
	if len(h.Series) != MaxSeries || h.Dropped != 5 {
		t.Errorf("%d series kept, %d dropped; want %d and 5", len(h.Series), h.Dropped, MaxSeries)
	}
}
