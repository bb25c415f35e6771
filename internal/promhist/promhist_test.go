package promhist

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCPUReadsBucketsFromARangeQuery: the history is one range query of
// the guest's summed CPU rate over bucket-long windows, stepped by the
// bucket; its points become buckets ending at their times, a missing
// point repeats the one before, and what the server refuses is an error.
func TestCPUReadsBucketsFromARangeQuery(t *testing.T) {
	step := 5 * time.Second
	to := time.Unix(1_800_000_012, 0) // the open bucket started at ...010
	var got map[string]string
	answer := ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = map[string]string{"path": r.URL.Path}
		for k := range r.URL.Query() {
			got[k] = r.URL.Query().Get(k)
		}
		fmt.Fprint(w, answer)
	}))
	defer srv.Close()
	src, err := Parse("prometheus://" + strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	answer = `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[` +
		`[1799999995,"0.1"],[1800000000,"0.2"],[1800000010,"0.4"]]}]}}`
	st, err := src.CPU(context.Background(), "web-1", step, to.Add(-20*time.Second), to)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"path": "/api/v1/query_range", "query": `sum(rate(ferry_guest_cpu_seconds_total{vm="web-1"}[5s]))`,
		"start": "1799999995", "end": "1800000010", "step": "5"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("asked %s=%q, want %q", k, got[k], v)
		}
	}
	if !slices.Equal(st.Values, []float64{0.1, 0.2, 0.2, 0.4}) || st.End != time.Unix(1_800_000_010, 0) || st.Step != step {
		t.Fatalf("buckets %v ending %d, want 0.1 0.2 0.2 0.4 ending at 1800000010", st.Values, st.End.Unix())
	}

	answer = `{"status":"success","data":{"resultType":"matrix","result":[]}}`
	if st, err := src.CPU(context.Background(), "new", step, to.Add(-time.Minute), to); err != nil || len(st.Values) != 0 {
		t.Fatalf("a guest Prometheus has not seen: %+v %v", st, err)
	}
	answer = `{"status":"error","errorType":"bad_data","error":"parse error"}`
	if _, err := src.CPU(context.Background(), "x", step, to.Add(-time.Minute), to); err == nil || !strings.Contains(err.Error(), "parse error") {
		t.Fatalf("a refused query: %v", err)
	}
	if _, err := src.CPU(context.Background(), "x", 2500*time.Millisecond, to.Add(-time.Minute), to); err == nil {
		t.Fatal("buckets of 2.5 s accepted")
	}
}

// TestParse: the two schemes, and clear errors for anything else.
func TestParse(t *testing.T) {
	for in, want := range map[string]string{"prometheus://10.0.0.5:9090": "http://10.0.0.5:9090",
		"prometheus+https://prom.example:443/prom/": "https://prom.example:443/prom"} {
		s, err := Parse(in)
		if err != nil || s.String() != want {
			t.Errorf("%s: %v %v, want %s", in, s, err, want)
		}
	}
	for _, bad := range []string{"http://10.0.0.5:9090", "prometheus://", "prometheus://h:1?x=1", "local"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
