package apiserver

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/ferryvm/ferry/internal/errdefs"
)

// consoleVM returns the guest's serial console output: the last `lines`
// lines, and with follow=true keeps streaming new output until the client
// goes away.
func (s *Server) consoleVM(w http.ResponseWriter, r *http.Request) {
	name, ok := s.vmName(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	lines := 100
	if v := q.Get("lines"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100000 {
			writeError(w, errdefs.Invalid("lines must be a number from 0 to 100000"))
			return
		}
		lines = n
	}
	follow := false
	if v := q.Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, errdefs.Invalid("follow must be true or false"))
			return
		}
		follow = b
	}
	vm, err := s.st.GetVM(r.Context(), name)
	if err != nil {
		writeError(w, err)
		return
	}
	if s.console == nil {
		writeError(w, errdefs.New(errdefs.ErrUnavailable, "console access is not available on this server"))
		return
	}
	path, err := s.console(vm)
	if err != nil {
		writeError(w, err)
		return
	}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		writeError(w, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("vm %q has no console output yet", name)))
		return
	} else if err != nil {
		writeError(w, fmt.Errorf("%w: %v", errdefs.ErrInternal, err))
		return
	}
	defer f.Close()
	off := tailOffset(f, lines)
	f.Seek(off, io.SeekStart)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(200)
	io.Copy(w, f)
	if !follow {
		return
	}
	fl, _ := w.(http.Flusher)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
			if _, err := io.Copy(w, f); err != nil {
				return
			}
		}
	}
}

// tailOffset finds where the last n lines of f begin.
func tailOffset(f *os.File, n int) int64 {
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	size := st.Size()
	if n == 0 {
		return size
	}
	start := max(size-(1<<20), 0)
	f.Seek(start, io.SeekStart)
	var offs []int64
	pos := start
	sc := bufio.NewReader(f)
	for {
		l, err := sc.ReadBytes('\n')
		if len(l) > 0 {
			offs = append(offs, pos)
			pos += int64(len(l))
		}
		if err != nil {
			break
		}
	}
	if len(offs) <= n {
		if len(offs) == 0 {
			return size
		}
		return offs[0]
	}
	return offs[len(offs)-n]
}
