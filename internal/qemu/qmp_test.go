package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeQMP plays QEMU's side of a QMP connection. handle answers each command
// (by writing raw lines to w); a nil handle answers {"return":{}}.
func fakeQMP(t *testing.T, handle func(w *bufio.Writer, cmd string, id json.RawMessage)) (*Client, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		w := bufio.NewWriter(b)
		fmt.Fprintln(w, `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`)
		w.Flush()
		dec := json.NewDecoder(b)
		for {
			var m struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if dec.Decode(&m) != nil {
				return
			}
			if m.Execute == "qmp_capabilities" || handle == nil {
				fmt.Fprintf(w, `{"return": {}, "id": %s}`+"\n", m.ID)
			} else {
				handle(w, m.Execute, m.ID)
			}
			w.Flush()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewClient(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); b.Close() })
	return c, b
}

func TestQMPHandshakeAndVersion(t *testing.T) {
	c, _ := fakeQMP(t, nil)
	if got := c.Version().String(); got != "7.2.22" {
		t.Fatalf("version %s", got)
	}
}

func TestQMPHugeReply(t *testing.T) {
	// QEMU 7.2's query-qmp-schema reply is ~207 KB; go-qemu's scanner breaks on it.
	big := strings.Repeat("x", 300<<10)
	c, _ := fakeQMP(t, func(w *bufio.Writer, cmd string, id json.RawMessage) {
		fmt.Fprintf(w, `{"return": {"blob": %q}, "id": %s}`+"\n", big, id)
	})
	var out struct{ Blob string }
	if err := c.Execute(context.Background(), "query-qmp-schema", nil, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Blob) != len(big) {
		t.Fatalf("got %d bytes", len(out.Blob))
	}
}

func TestQMPEventsInterleavedAndErrors(t *testing.T) {
	c, _ := fakeQMP(t, func(w *bufio.Writer, cmd string, id json.RawMessage) {
		// An event arrives before the reply; the reply must still match its id.
		fmt.Fprintln(w, `{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}`)
		if cmd == "bad" {
			fmt.Fprintf(w, `{"error": {"class": "GenericError", "desc": "nope"}, "id": %s}`+"\n", id)
			return
		}
		fmt.Fprintf(w, `{"return": {"running": true, "status": "running"}, "id": %s}`+"\n", id)
	})
	st, err := QMP{Monitor: c}.QueryStatus(context.Background())
	if err != nil || !st.Running {
		t.Fatalf("status %+v err %v", st, err)
	}
	err = c.Execute(context.Background(), "bad", nil, nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Desc != "nope" {
		t.Fatalf("want QMPError, got %v", err)
	}
	select {
	case ev := <-c.Events():
		if ev.Name != "STOP" || ev.Timestamp.Unix() != 1 {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no event")
	}
}

func TestQMPStaleReplyIgnored(t *testing.T) {
	// A reply carrying an id nobody waits for (e.g. a call that timed out)
	// must not be taken as the answer to the next command.
	c, _ := fakeQMP(t, func(w *bufio.Writer, cmd string, id json.RawMessage) {
		fmt.Fprintln(w, `{"return": {"status": "stale"}, "id": "ferry-999"}`)
		fmt.Fprintf(w, `{"return": {"status": "fresh"}, "id": %s}`+"\n", id)
	})
	st, err := QMP{Monitor: c}.QueryStatus(context.Background())
	if err != nil || st.Status != "fresh" {
		t.Fatalf("got %+v, %v", st, err)
	}
}

func TestQMPDeadline(t *testing.T) {
	c, _ := fakeQMP(t, func(w *bufio.Writer, cmd string, id json.RawMessage) {}) // never answers
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.Execute(ctx, "query-status", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline exceeded, got %v", err)
	}
}

func TestQMPConnectionLossFailsPending(t *testing.T) {
	c, peer := fakeQMP(t, func(w *bufio.Writer, cmd string, id json.RawMessage) {})
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "query-status", nil, nil) }()
	time.Sleep(50 * time.Millisecond)
	peer.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("want ErrClosed, got %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("pending call not failed on connection loss")
	}
	<-c.Done()
	if _, ok := <-c.Events(); ok {
		t.Fatal("events channel not closed")
	}
}

func TestQMPMalformedReplyEndsConnection(t *testing.T) {
	c, _ := fakeQMP(t, func(w *bufio.Writer, cmd string, id json.RawMessage) {
		fmt.Fprintln(w, `{"return": [unterminated`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("want ErrClosed after garbage, got %v", err)
	}
}

func TestGreetingRequired(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() { fmt.Fprintln(b, `{"return": {}}`); b.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := NewClient(ctx, a); err == nil {
		t.Fatal("accepted a peer without a QMP greeting")
	}
}
