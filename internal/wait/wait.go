// Package wait is the one way Ferry's code and tests wait for a condition:
// poll it at an interval until it holds, fails, or time runs out — never a
// fixed sleep that hopes the condition holds by then.
package wait

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// ErrTimeout is returned (wrapped) when a condition did not hold in time.
var ErrTimeout = errors.New("timed out")

// Until calls cond every interval until it reports done or ctx ends. An
// error cond returns says why it is not done yet; the last one is reported
// with the timeout.
func Until(ctx context.Context, interval time.Duration, cond func(ctx context.Context) (done bool, err error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := cond(ctx)
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%w: %w (last: %v)", ErrTimeout, ctx.Err(), err)
			}
			return fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
		case <-t.C:
		}
	}
}

// For waits up to timeout for cond to hold, polling every 20 ms, and fails
// the test with what it waited for if it does not. cond's error, if any,
// says why not yet.
func For(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	err := Until(ctx, 20*time.Millisecond, func(context.Context) (bool, error) {
		ok, err := cond()
		return ok, err
	})
	if err != nil {
		t.Fatalf("waited %s for %s: %v", time.Since(start).Round(time.Millisecond), what, err)
	}
}

// True adapts a condition without a reason to For.
func True(cond func() bool) func() (bool, error) {
	return func() (bool, error) { return cond(), nil }
}
