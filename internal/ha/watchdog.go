package ha

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/internal/qemu"
	"golang.org/x/sys/unix"
)

// WatchGuest is a QEMU process the watchdog kills when it fires. The UUID is
// checked against the process's command line so a recycled PID is never hit.
type WatchGuest struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	UUID string `json:"uuid"`
}

// Feed is one message from the agent to its watchdog: kill these guests at
// Deadline (CLOCK_MONOTONIC, nanoseconds) unless a later feed moves it.
type Feed struct {
	Deadline int64        `json:"deadline_mono_ns"`
	Guests   []WatchGuest `json:"guests"`
}

// MonoNow is CLOCK_MONOTONIC in nanoseconds: the clock the agent and the
// watchdog share (unlike wall time, no one can set it back).
func MonoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot happen on Linux
	}
	return ts.Nano()
}

// Watchdog is the per-host process that stops HA guests when the agent stops
// feeding it: it is the fencing layer that still works when the agent hangs
// (SIGSTOP, deadlock, a stuck disk) or dies. It runs apart from the agent
// (its own session, started by `ferry watchdog`) and outlives agent restarts;
// a new agent reconnects and feeds it.
type Watchdog struct {
	log  *slog.Logger
	kill func(WatchGuest) error

	mu    sync.Mutex
	feed  Feed
	armed bool
	conns int
	idle  time.Time // since when no agent is connected and nothing is armed
}

// NewWatchdog returns a watchdog that kills guests with SIGKILL.
func NewWatchdog(log *slog.Logger) *Watchdog {
	return &Watchdog{log: log, kill: killGuest, idle: time.Now()}
}

func killGuest(g WatchGuest) error {
	if !qemu.IsGuest(g.PID, g.UUID) {
		return nil
	}
	if err := syscall.Kill(g.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// IdleExit is how long a watchdog with nothing to guard and no agent
// connected stays before it exits.
const IdleExit = 3 * time.Second

// Serve listens on socket until ctx ends or the watchdog has been idle for
// IdleExit. It refuses to start if another watchdog answers on socket.
func (w *Watchdog) Serve(ctx context.Context, socket string) error {
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("watchdog: another watchdog already serves %s", socket)
	}
	os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	defer os.Remove(socket)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go w.serveConn(c)
		}
	}()
	w.log.Info("watchdog running", "socket", socket)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if w.check() {
			w.log.Info("watchdog idle; exiting")
			return nil
		}
	}
}

// check fires if the deadline has passed; it reports whether the watchdog
// has been idle long enough to exit.
func (w *Watchdog) check() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.armed && MonoNow() > w.feed.Deadline {
		late := time.Duration(MonoNow() - w.feed.Deadline)
		for _, g := range w.feed.Guests {
			if err := w.kill(g); err != nil {
				w.log.Error("watchdog: kill failed", "vm", g.Name, "pid", g.PID, "err", err)
			} else {
				w.log.Warn("watchdog fired: guest killed", "vm", g.Name, "pid", g.PID, "late", late)
			}
		}
		w.armed = false
		w.feed.Guests = nil
		w.idle = time.Now()
	}
	if w.conns > 0 || (w.armed && len(w.feed.Guests) > 0) {
		w.idle = time.Now()
		return false
	}
	return time.Since(w.idle) > IdleExit
}

func (w *Watchdog) serveConn(c net.Conn) {
	defer c.Close()
	w.mu.Lock()
	w.conns++
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.conns--
		w.mu.Unlock()
	}()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var f Feed
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			w.log.Warn("watchdog: bad feed; closing", "err", err)
			return
		}
		w.mu.Lock()
		w.feed = f
		w.armed = len(f.Guests) > 0
		w.mu.Unlock()
	}
}

// WatchdogClient is the agent's end: it feeds the watchdog, starting the
// watchdog process first if none answers.
type WatchdogClient struct {
	Socket string   // unix socket of the watchdog
	Start  []string // command that starts a watchdog serving Socket
	LogTo  string   // the started watchdog's log file
	log    *slog.Logger

	mu   sync.Mutex
	conn net.Conn
}

// NewWatchdogClient returns a client; it connects on first Feed.
func NewWatchdogClient(socket, logTo string, start []string, log *slog.Logger) *WatchdogClient {
	return &WatchdogClient{Socket: socket, Start: start, LogTo: logTo, log: log}
}

// Feed sends f, (re)connecting and if need be starting the watchdog.
func (c *WatchdogClient) Feed(f Feed) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, _ := json.Marshal(f)
	b = append(b, '\n')
	if c.conn != nil {
		c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.conn.Write(b); err == nil {
			return nil
		}
		c.conn.Close()
		c.conn = nil
	}
	conn, err := net.DialTimeout("unix", c.Socket, time.Second)
	if err != nil {
		if err := c.spawn(); err != nil {
			return err
		}
		if conn, err = c.dialRetry(3 * time.Second); err != nil {
			return fmt.Errorf("watchdog did not come up on %s: %w", c.Socket, err)
		}
	}
	c.conn = conn
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, err = conn.Write(b)
	return err
}

// Connected reports whether the client holds a connection to a watchdog.
func (c *WatchdogClient) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil
}

// Close lets go of the watchdog without disarming it.
func (c *WatchdogClient) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func (c *WatchdogClient) spawn() error {
	logf, err := os.OpenFile(c.LogTo, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(c.Start[0], c.Start[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not in the agent's process group or session
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the watchdog: %w", err)
	}
	c.log.Info("watchdog started", "pid", cmd.Process.Pid, "socket", c.Socket)
	go cmd.Wait() // reap it if it exits while the agent runs
	return nil
}

func (c *WatchdogClient) dialRetry(d time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(d)
	for {
		conn, err := net.DialTimeout("unix", c.Socket, time.Second)
		if err == nil || time.Now().After(deadline) {
			return conn, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
