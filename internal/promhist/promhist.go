// Package promhist reads guests' CPU histories from a Prometheus server,
// for agents started with --metrics-source prometheus://HOST:PORT: the
// server that scrapes every host's ferry_guest_cpu_seconds_total already
// holds each guest's use wherever it ran, so the agents forecast from it
// instead of keeping histories of their own.
//
// The client is written here rather than taken from client_golang's api
// package: that package pulls in json-iterator and reflect2 for what is one
// GET of /api/v1/query_range and a documented JSON answer.
package promhist

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/telemetry"
)

// Source is a Prometheus server's HTTP API.
type Source struct {
	base string // http(s)://host:port[/prefix]
	hc   *http.Client
}

// Parse reads a --metrics-source: prometheus://HOST:PORT[/PREFIX] (plain
// HTTP) or prometheus+https://HOST:PORT[/PREFIX].
func Parse(source string) (*Source, error) {
	u, err := url.Parse(source)
	if err != nil {
		return nil, fmt.Errorf("metrics source %q: %w", source, err)
	}
	switch u.Scheme {
	case "prometheus":
		u.Scheme = "http"
	case "prometheus+https":
		u.Scheme = "https"
	default:
		return nil, fmt.Errorf("metrics source %q: want prometheus://HOST:PORT or prometheus+https://HOST:PORT", source)
	}
	if u.Host == "" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("metrics source %q: want prometheus://HOST:PORT[/PREFIX], nothing else", source)
	}
	return &Source{base: strings.TrimSuffix(u.String(), "/"), hc: &http.Client{Timeout: 10 * time.Second}}, nil
}

// String is the server's address.
func (s *Source) String() string { return s.base }

// CPU returns the CPU use of guest vm, in CPUs, over the buckets of step
// whose ends lie in (from, to], wherever it ran: the rate of its QEMU's CPU
// time over each bucket, summed over the hosts that reported it. A bucket
// Prometheus has no value for repeats the one before it (as a gap does in
// an agent's own history); the buckets before the first with a value are
// left out. Buckets should span a few scrape intervals, for a rate needs
// two samples in each.
func (s *Source) CPU(ctx context.Context, vm string, step time.Duration, from, to time.Time) (telemetry.BucketsState, error) {
	st := telemetry.BucketsState{Step: step}
	if step < time.Second || step%time.Second != 0 {
		return st, fmt.Errorf("buckets of %s: Prometheus ranges are in whole seconds", step)
	}
	end := to.Truncate(step)
	start := from.Truncate(step).Add(step)
	if !end.After(start) {
		return st, nil
	}
	q := fmt.Sprintf("sum(rate(ferry_guest_cpu_seconds_total{vm=%s}[%ds]))", strconv.Quote(vm), int(step.Seconds()))
	v := url.Values{"query": {q}, "start": {unix(start)}, "end": {unix(end)}, "step": {strconv.Itoa(int(step.Seconds()))}}
	req, err := http.NewRequestWithContext(ctx, "GET", s.base+"/api/v1/query_range?"+v.Encode(), nil)
	if err != nil {
		return st, err
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return st, fmt.Errorf("prometheus at %s: %w", s.base, err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Values [][2]any `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return st, fmt.Errorf("prometheus at %s answered %s: %w", s.base, resp.Status, err)
	}
	if r.Status != "success" {
		return st, fmt.Errorf("prometheus at %s: %s: %s", s.base, r.Status, r.Error)
	}
	if len(r.Data.Result) == 0 {
		return st, nil // no such guest in it (yet)
	}
	if r.Data.ResultType != "matrix" || len(r.Data.Result) != 1 {
		return st, fmt.Errorf("prometheus at %s: a %s of %d series for a sum", s.base, r.Data.ResultType, len(r.Data.Result))
	}
	byEnd := map[int64]float64{}
	for _, p := range r.Data.Result[0].Values {
		ts, ok1 := p[0].(float64)
		vs, ok2 := p[1].(string)
		val, err := strconv.ParseFloat(vs, 64)
		if !ok1 || !ok2 || err != nil || math.IsNaN(val) {
			continue
		}
		byEnd[int64(math.Round(ts))] = val
	}
	for t := start; !t.After(end); t = t.Add(step) {
		val, ok := byEnd[t.Unix()]
		switch {
		case ok:
		case len(st.Values) > 0:
			val = st.Values[len(st.Values)-1]
		default:
			continue
		}
		st.Values = append(st.Values, val)
		st.End = t
	}
	return st, nil
}

// unix formats a time as the API's seconds.
func unix(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }
