package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
)

// EventFilter selects the events a follower sees (empty fields: any).
type EventFilter struct {
	VM, Host string
	// Kind is a prefix of the kind, such as "migration-".
	Kind string
	// Backlog is how many recent events come first (0: none).
	Backlog int
}

// EventsMatching returns the newest limit events that pass f, oldest
// first (f.Backlog is not used).
func (c *Client) EventsMatching(ctx context.Context, f EventFilter, limit int) ([]api.Event, error) {
	q := url.Values{"limit": {fmt.Sprint(limit)}}
	for k, v := range map[string]string{"vm": f.VM, "host": f.Host, "kind": f.Kind} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var evs []api.Event
	return evs, c.do(ctx, "GET", "/v1/events?"+q.Encode(), nil, &evs)
}

// FollowEvents calls fn with each cluster event that passes f: first the
// backlog, then each new one as it happens, until ctx ends (nil) or fn
// returns an error (that error). A broken stream is opened again, from the
// last event seen, so that none is missed; it gives up (an error) only when
// the server cannot be reached for a minute or refuses the request.
func (c *Client) FollowEvents(ctx context.Context, f EventFilter, fn func(api.Event) error) error {
	var last string
	var down time.Time
	for {
		err := c.followOnce(ctx, f, &last, fn, &down)
		if ctx.Err() != nil {
			return nil
		}
		var fnErr fnError
		var apiErr *APIError
		if errors.As(err, &fnErr) {
			return fnErr.err
		}
		if errors.As(err, &apiErr) {
			return err
		}
		// Again from the last event seen; with none seen yet, the
		// backlog is not sent twice.
		f.Backlog = 0
		if down.IsZero() {
			down = time.Now()
		} else if time.Since(down) > time.Minute {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// fnError carries the error of FollowEvents' fn out of one stream.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// followOnce reads one event stream until it ends; last is the ID of the
// last event seen (sent as Last-Event-ID), down is cleared once the
// server answered.
func (c *Client) followOnce(ctx context.Context, f EventFilter, last *string, fn func(api.Event) error, down *time.Time) error {
	q := url.Values{"limit": {fmt.Sprint(f.Backlog)}}
	for k, v := range map[string]string{"vm": f.VM, "host": f.Host, "kind": f.Kind} {
		if v != "" {
			q.Set(k, v)
		}
	}
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/events/stream?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if *last != "" {
		req.Header.Set("Last-Event-ID", *last)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", errdefs.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	*down = time.Time{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var id, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != "" {
				var ev api.Event
				if err := json.Unmarshal([]byte(data), &ev); err != nil {
					return fmt.Errorf("%w: an event the server sent is not JSON: %v", errdefs.ErrInternal, err)
				}
				if id != "" {
					*last = id
				}
				if err := fn(ev); err != nil {
					return fnError{err}
				}
			}
			id, data = "", ""
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data += strings.TrimPrefix(line, "data: ")
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: event stream: %v", errdefs.ErrUnavailable, err)
	}
	return fmt.Errorf("%w: the event stream ended", errdefs.ErrUnavailable)
}
