package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Why our own QMP client: the common Go library (digitalocean/go-qemu) reads
// replies with a 64 KiB bufio.Scanner and breaks on QEMU 7.2's ~207 KB
// query-qmp-schema reply, has no command ids (so a late reply can be taken for
// the answer to the next command) and no per-call deadline. This client reads
// with a json.Decoder (no size limit), tags every command with an id, honours
// a context on every call and delivers asynchronous events as a stream.

// Event is an asynchronous QMP event such as SHUTDOWN, STOP or MIGRATION.
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp time.Time       `json:"-"`
}

// QMPError is an error QEMU returned for a command.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

// ErrClosed is returned by calls on a client whose connection has ended.
var ErrClosed = errors.New("qmp: connection closed")

type reply struct {
	ret json.RawMessage
	err error
}

// Version is QEMU's version from the QMP greeting.
type Version struct {
	Major, Minor, Micro int
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// Client is a QMP connection. It is safe for concurrent use.
type Client struct {
	conn    net.Conn
	version Version

	wmu     sync.Mutex // serialises writes
	mu      sync.Mutex
	pending map[string]chan reply
	err     error

	nextID atomic.Uint64
	events chan Event
	done   chan struct{}
	// DroppedEvents counts events discarded because nobody read Events in time.
	DroppedEvents atomic.Uint64
}

// wire is one message from QEMU: a greeting, a reply or an event.
type wire struct {
	QMP *struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
		} `json:"version"`
	} `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *QMPError       `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	ID        json.RawMessage `json:"id"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Dial connects to a QMP unix socket, reads the greeting and negotiates
// capabilities. The context bounds the whole handshake.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient runs the QMP handshake on an established connection.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		pending: make(map[string]chan reply),
		events:  make(chan Event, 256),
		done:    make(chan struct{}),
	}
	dec := json.NewDecoder(conn)
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	var g wire
	if err := dec.Decode(&g); err != nil {
		return nil, fmt.Errorf("qmp: reading greeting: %w", err)
	}
	if g.QMP == nil {
		return nil, errors.New("qmp: peer did not send a QMP greeting")
	}
	conn.SetReadDeadline(time.Time{})
	v := g.QMP.Version.QEMU
	c.version = Version{v.Major, v.Minor, v.Micro}
	go c.readLoop(dec)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Version returns the QEMU version announced in the greeting.
func (c *Client) Version() Version { return c.version }

// Events returns the stream of asynchronous events. It is closed when the
// connection ends. Events are dropped (and counted) if the stream is not read.
func (c *Client) Events() <-chan Event { return c.events }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close ends the connection.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) readLoop(dec *json.Decoder) {
	var loopErr error
	for {
		var m wire
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				loopErr = ErrClosed
			} else {
				loopErr = fmt.Errorf("%w: %v", ErrClosed, err)
			}
			break
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			select {
			case c.events <- ev:
			default:
				c.DroppedEvents.Add(1)
			}
		case m.ID != nil:
			var id string
			if json.Unmarshal(m.ID, &id) != nil {
				continue // not one of ours
			}
			c.mu.Lock()
			ch := c.pending[id]
			delete(c.pending, id)
			c.mu.Unlock()
			if ch == nil {
				continue // a reply to a call that already gave up
			}
			if m.Error != nil {
				ch <- reply{err: m.Error}
			} else {
				ch <- reply{ret: m.Return}
			}
		}
	}
	c.mu.Lock()
	c.err = loopErr
	for id, ch := range c.pending {
		ch <- reply{err: loopErr}
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.events)
	close(c.done)
	c.conn.Close()
}

// Execute runs a QMP command with optional arguments and decodes its return
// value into out (if non-nil). It gives up when ctx ends; a late reply is discarded.
func (c *Client) Execute(ctx context.Context, cmd string, args any, out any) error {
	id := "ferry-" + strconv.FormatUint(c.nextID.Add(1), 10)
	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("qmp: encoding %s: %w", cmd, err)
	}
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.pending[id] = ch
	c.mu.Unlock()

	c.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	} else {
		c.conn.SetWriteDeadline(time.Time{})
	}
	_, err = c.conn.Write(b)
	c.wmu.Unlock()
	if err != nil {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return fmt.Errorf("qmp: sending %s: %w", cmd, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return fmt.Errorf("%s: %w", cmd, r.err)
		}
		if out != nil && len(r.ret) > 0 {
			if err := json.Unmarshal(r.ret, out); err != nil {
				return fmt.Errorf("qmp: decoding %s reply: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return fmt.Errorf("qmp: %s: %w", cmd, ctx.Err())
	}
}
