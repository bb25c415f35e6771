package apiserver

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/history"
)

func TestHistoryEndpoint(t *testing.T) {
	s := &Server{}
	get := func(q string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		s.getHistory(w, httptest.NewRequest("GET", "/v1/history"+q, nil))
		return w
	}
	if w := get(""); w.Code != http.StatusServiceUnavailable {
		t.Errorf("without a history: %d %s, want 503", w.Code, w.Body)
	}
	s.History = history.New(time.Second, 10)
	t0 := time.Now().Add(-time.Minute)
	for i := range 3 {
		s.History.Sample(t0.Add(time.Duration(i)*time.Second), []api.Node{{Name: "h1", State: "ready", Load1: float64(i)}}, nil)
	}
	for _, bad := range []string{"?since=yesterday", "?since=-5", "?since=1.5"} {
		if w := get(bad); w.Code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", bad, w.Code, w.Body)
		}
	}
	w := get("?since=" + strconv.FormatInt(t0.UnixMilli(), 10) + "&metric=load")
	var h api.History
	if err := json.Unmarshal(w.Body.Bytes(), &h); err != nil || w.Code != http.StatusOK {
		t.Fatalf("%d %s: %v", w.Code, w.Body, err)
	}
	if len(h.Times) != 2 || len(h.Series) != 1 || *h.Series[0].Values[1] != 2 {
		t.Errorf("since the first sample: %+v, want two times of h1's load (1, 2)", h)
	}
}
