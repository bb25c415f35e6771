package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/history"
)

// getHistory answers GET /v1/history: what this server sampled of each
// host's load and traffic and each link's round trip and loss, after since
// (Unix milliseconds; all it keeps when absent), of the metrics whose name
// starts with metric.
func (s *Server) getHistory(w http.ResponseWriter, r *http.Request) {
	if s.History == nil {
		writeError(w, errdefs.New(errdefs.ErrUnavailable, "this API server keeps no history"))
		return
	}
	var since time.Time
	if q := r.URL.Query().Get("since"); q != "" {
		ms, err := strconv.ParseInt(q, 10, 64)
		if err != nil || ms < 0 {
			writeError(w, errdefs.Invalid(fmt.Sprintf("since must be a time in Unix milliseconds, not %q", q)))
			return
		}
		since = time.UnixMilli(ms)
	}
	writeJSON(w, http.StatusOK, s.History.History(since, r.URL.Query().Get("metric")))
}

// historySource reads the figures the history samples: hosts from the
// mirror this server follows (no read from etcd), links from the store.
type historySource struct{ s *Server }

func (h historySource) Nodes(ctx context.Context) ([]api.Node, error) {
	if m := h.s.Mirror; m != nil {
		if nodes, ok := m.Nodes(); ok {
			return nodes, nil
		}
	}
	return h.s.st.ListNodes(ctx)
}

func (h historySource) Links(ctx context.Context) ([]api.LinkStat, error) {
	return h.s.st.ListLinkStats(ctx)
}

// KeepHistory starts sampling the cluster's figures for GET /v1/history
// until ctx ends.
func (s *Server) KeepHistory(ctx context.Context) {
	s.History = history.New(history.DefaultStep, history.DefaultKeep)
	go s.History.Run(ctx, historySource{s}, history.DefaultLinkEvery, s.log)
}
