package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Binary is the QEMU system emulator Ferry runs.
var Binary = "qemu-system-x86_64"

// Launch starts QEMU daemonized with c and returns its pid. QEMU's own
// messages (before and after daemonizing) go to logPath. If QEMU fails to
// start, the error carries the tail of its log.
func Launch(ctx context.Context, c *Config, logPath string) (int, error) {
	if err := c.Validate(); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return 0, fmt.Errorf("qemu: opening log: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "%s ferry: starting %s %s\n", time.Now().UTC().Format(time.RFC3339), c.binary(), strings.Join(c.Args(), " "))
	os.Remove(c.PidFile)
	argv := append(append(append([]string{}, c.Prefix...), c.binary()), c.Args()...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("qemu failed to start: %v\n%s", err, Tail(logPath, 12))
	}
	pid, err := ReadPidFile(c.PidFile)
	if err != nil {
		return 0, fmt.Errorf("qemu started but %w", err)
	}
	return pid, nil
}

func (c *Config) binary() string {
	if c.Binary != "" {
		return c.Binary
	}
	return Binary
}

// ReadPidFile reads a QEMU pidfile.
func ReadPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s holds no pid", path)
	}
	return pid, nil
}

// IsGuest reports whether pid is a live QEMU process running the guest with
// this uuid. Checking the command line guards against pid reuse.
func IsGuest(pid int, uuid string) bool {
	if pid <= 0 || !Running(pid) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := bytes.Split(b, []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if string(args[i]) == "-uuid" && string(args[i+1]) == uuid {
			return true
		}
	}
	return false
}

// Running reports whether process pid exists and has not exited (a zombie
// has exited; it only waits to be reaped).
func Running(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(st, ')')
	return i > 0 && i+2 < len(st) && st[i+2] != 'Z'
}

// Kill sends SIGKILL to the guest's QEMU and waits until it is gone.
func Kill(ctx context.Context, pid int, uuid string) error {
	if !IsGuest(pid, uuid) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("qemu: killing %d: %w", pid, err)
	}
	return WaitGone(ctx, pid, uuid)
}

// WaitGone polls until the guest's QEMU process no longer exists.
func WaitGone(ctx context.Context, pid int, uuid string) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for IsGuest(pid, uuid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu: pid %d still running: %w", pid, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Tail returns the last n lines of a log file ("" if unreadable).
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 64<<10 {
		b = b[len(b)-64<<10:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var versionRE = regexp.MustCompile(`version (\d+\.\d+\.\d+)`)

// BinaryVersion runs QEMU --version and returns e.g. "7.2.22".
func BinaryVersion(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, Binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s not usable (install qemu-system-x86): %w", Binary, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("cannot parse %s --version output", Binary)
	}
	return string(m[1]), nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat's CPU
// times: 100 on every Linux architecture Ferry runs on.
const clockTicks = 100

// CPUTime is how much CPU time process pid (all its threads: vCPUs,
// I/O, migration) has used so far, from /proc/PID/stat.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// count the fields after its closing one.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// Fields 14 and 15 (utime, stime) are the 12th and 13th after it.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad CPU times", pid)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// CPUWait is how long process pid's threads have waited for a CPU while
// runnable (run_delay, the second field of /proc/PID/task/TID/schedstat,
// summed): time on a run queue behind other work, and time throttled by a
// cgroup's CPU quota. Its rate over an interval is how many CPUs' worth
// of time the guest wanted and did not get. Threads that ended are not
// counted, so it can go down; callers take rates of positive steps only.
func CPUWait(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
		if err != nil {
			continue // the thread ended since the listing
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return 0, fmt.Errorf("%s/%s/schedstat: %q", dir, t.Name(), b)
		}
		ns, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: %w", dir, t.Name(), err)
		}
		sum += time.Duration(ns)
	}
	return sum, nil
}
