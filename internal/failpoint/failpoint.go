// Package failpoint lets the fault-injection suite stop an agent at a named
// point of a protocol, so that a fault can be injected inside a window that
// is otherwise a few milliseconds wide (the switchover of a live migration).
//
// A point is armed by a line "NAME DURATION" in a file the agent is told
// about (DATA-DIR/failpoints); the agent then sleeps that long when it
// reaches the point and logs that it did. Without the file every point is
// one failed stat. This is the idea of etcd's gofail, without code
// generation: Ferry has only a handful of points.
package failpoint

import (
	"bufio"
	"context"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Points known to the agent.
const (
	// AfterTakeover is on the target of a migration, after the takeover
	// transaction moved ownership to it and before the guest's CPUs run.
	AfterTakeover = "after-takeover"
	// TargetListening is on the target of a migration, once its QEMU
	// listens for the stream and before the source is told where.
	TargetListening = "target-listening"
	// PreSwitchover is on the source of a migration, once its QEMU stopped
	// the guest at pre-switchover (pause-before-switchover) and before the
	// source decides whether to go on or cancel.
	PreSwitchover = "pre-switchover"
)

// Delay returns how long point is armed to sleep in file, or 0.
func Delay(file, point string) time.Duration {
	if file == "" {
		return 0
	}
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 2 && fs[0] == point {
			if d, err := time.ParseDuration(fs[1]); err == nil && d > 0 {
				return d
			}
		}
	}
	return 0
}

// Sleep waits at point as long as file arms it (or until ctx ends) and
// reports whether it waited.
func Sleep(ctx context.Context, log *slog.Logger, file, point string) bool {
	d := Delay(file, point)
	if d == 0 {
		return false
	}
	log.Warn("failpoint: pausing", "point", point, "for", d)
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	return true
}
