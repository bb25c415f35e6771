package apiserver

import (
	"net/http"
	"strconv"
	"time"

	"github.com/ferryvm/ferry/internal/metrics"
)

// streams are the routes that answer for as long as the client listens:
// their time to answer says nothing, so only their count is recorded.
var streams = map[string]bool{"GET /v1/events/stream": true, "GET /v1/vms/{name}/console": true}

// instrument counts a route's requests by status code and times them
// (ferry_api_requests_total, ferry_api_request_duration_seconds); the
// route's pattern is the label, so that its values stay few.
//
// A route's series appear with its first request: created for every
// route up front they made each scrape about 60 KB heavier
// (ferry bench monitor).
func instrument(pattern string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h(sw, r)
		metrics.APIRequests.WithLabelValues(pattern, strconv.Itoa(sw.code)).Inc()
		if !streams[pattern] {
			metrics.APIDuration.WithLabelValues(pattern).Observe(time.Since(start).Seconds())
		}
	}
}

// statusWriter remembers the status code written; it flushes (streams)
// and unwraps (http.ResponseController) to the writer it wraps.
type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
