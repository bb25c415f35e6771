package testbed

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakeStream serves numbered lines every 10 ms; after stopAfter lines it
// either goes silent holding the connection (as a dead guest does) or,
// with jump, skips a line number.
func fakeStream(stopAfter int, jump bool) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fl := w.(http.Flusher)
		for i := 0; ; i++ {
			n := i
			if jump && i >= stopAfter {
				n = i + 5
			} else if i >= stopAfter {
				<-r.Context().Done() // silent, connection open
				return
			}
			if _, err := fmt.Fprintf(w, "%d boot-1\n", n); err != nil {
				return
			}
			fl.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}))
}

func TestStreamReportTellsTheTruth(t *testing.T) {
	for _, c := range []struct {
		name      string
		stopAfter int
		jump      bool
		intact    bool
		problem   string
	}{
		{"live", 1 << 30, false, true, ""},
		{"goes silent", 20, false, false, "no line for the last"},
		{"jumps", 20, true, false, "jumped"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := fakeStream(c.stopAfter, c.jump)
			defer srv.Close()
			w, err := WatchStream(context.Background(), srv.Client(), strings.TrimPrefix(srv.URL, "http://"), 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(MaxSilence + 800*time.Millisecond)
			r := w.Stop()
			t.Logf("%+v", r)
			if r.Intact != c.intact || !strings.Contains(r.Problem, c.problem) {
				t.Fatalf("intact %v (%q), want %v (%q)", r.Intact, r.Problem, c.intact, c.problem)
			}
			if c.name == "goes silent" && r.LongestGap < MaxSilence {
				t.Errorf("longest gap %v leaves out the silence at the end", r.LongestGap)
			}
			if c.intact && r.LongestGap > 500*time.Millisecond {
				t.Errorf("longest gap %v on a live stream", r.LongestGap)
			}
		})
	}
}
