package apiserver

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/ferryvm/ferry/internal/errdefs"
)

// MaxProbeBytes bounds one bandwidth probe's body.
const MaxProbeBytes = 1 << 30

// ProbeResult is what the receiving end of a bandwidth probe counted.
type ProbeResult struct {
	Bytes int64 `json:"bytes"`
	// Rate is bytes per second over the second half of the transfer (after
	// TCP's slow start), Seconds the whole transfer's length.
	Rate    float64 `json:"rate"`
	Seconds float64 `json:"seconds"`
}

// linkProbe serves the other hosts' link probes: GET answers at once (a
// round trip), POST reads and discards the body and says how fast it came.
// Only hosts may probe (a user's certificate is refused).
func (s *Server) linkProbe(w http.ResponseWriter, r *http.Request) {
	if s.fromUserCA(r) {
		writeError(w, errdefs.New(errdefs.ErrPermissionDenied, "only the cluster's hosts probe links"))
		return
	}
	if r.Method == http.MethodGet {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	type mark struct {
		at    time.Time
		bytes int64
	}
	var marks []mark
	buf := make([]byte, 256<<10)
	body := http.MaxBytesReader(w, r.Body, MaxProbeBytes)
	var total int64
	for {
		n, err := body.Read(buf)
		if n > 0 {
			total += int64(n)
			marks = append(marks, mark{time.Now(), total})
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			writeError(w, err)
			return
		}
	}
	res := ProbeResult{Bytes: total}
	if len(marks) >= 2 {
		first, last := marks[0], marks[len(marks)-1]
		res.Seconds = last.at.Sub(first.at).Seconds()
		mid := first.at.Add(last.at.Sub(first.at) / 2)
		for _, m := range marks {
			if !m.at.Before(mid) {
				if d := last.at.Sub(m.at).Seconds(); d > 0 {
					res.Rate = float64(last.bytes-m.bytes) / d
				}
				break
			}
		}
	}
	writeJSON(w, http.StatusOK, res)
}
