package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/hostnet"
	"github.com/ferryvm/ferry/internal/qemu"
)

// Runtime is what the agent asks of its host to run guests: QEMU processes
// (daemonized, so that guests outlive the agent), their QMP monitors, the
// guests' disks and tap devices, and a look at the guest itself. Host runs
// them for real; the agent's unit tests and the scale benchmark run agents
// on a simulated one (package simqemu).
type Runtime interface {
	// Launch starts a guest's QEMU as cfg says and returns its pid.
	Launch(ctx context.Context, cfg *qemu.Config, logPath string) (int, error)
	// Dial connects to a QEMU's QMP socket.
	Dial(ctx context.Context, socket string) (qemu.Monitor, error)
	// IsGuest reports whether pid is the live QEMU of the guest uuid.
	IsGuest(pid int, uuid string) bool
	// Kill ends the guest's QEMU at once and waits until it is gone.
	Kill(ctx context.Context, pid int, uuid string) error
	// WaitGone waits until the guest's QEMU is gone.
	WaitGone(ctx context.Context, pid int, uuid string) error
	// MakeDisk creates the image file of a guest's disk at path: empty of
	// sizeMiB, or a copy-on-write overlay over backing (of backingFmt).
	MakeDisk(ctx context.Context, path string, sizeMiB int, backing, backingFmt string) error
	// Flush writes a file's cached data to its storage.
	Flush(path string)
	// CreateTap, DeleteTap and PinMAC manage a guest's tap on the overlay.
	CreateTap(name, bridge string, mtu int) error
	DeleteTap(name string) error
	PinMAC(tap, mac string) error
	// Probe asks the guest (its ferry-guest, at endpoint) how it is.
	Probe(ctx context.Context, endpoint string) *api.Guest
	// SampleMemory estimates the share of the guest's memory that is
	// zeros and how well the rest, and what it writes over again, compress.
	SampleMemory(pid, memoryMiB int, again time.Duration) (qemu.MemorySample, error)
	// CPUTime is how much CPU time the guest's QEMU has used so far.
	CPUTime(pid int) (time.Duration, error)
	// CPUWait is how long the guest's QEMU has waited for CPUs while
	// runnable so far (contention, a cgroup's quota).
	CPUWait(pid int) (time.Duration, error)
}

// Watchdog is the host's last line of fencing: told which HA guests run
// and until when the agent's lease is known good, it kills them when that
// deadline passes without a new feed — also if the agent hangs or dies.
// ha.WatchdogClient talks to the real one (a process of its own).
type Watchdog interface {
	// Feed moves the deadline and names the guests to kill at it.
	Feed(ha.Feed) error
	// Connected reports whether a watchdog is running and fed.
	Connected() bool
	// Close lets go of the watchdog without disarming it.
	Close()
}

// Host is the Runtime of a real host: QEMU, qemu-img, netlink, HTTP.
type Host struct{ hc *http.Client }

var _ Runtime = Host{}

// HostRuntime returns the real host's runtime.
func HostRuntime() Host { return Host{hc: &http.Client{Timeout: 2 * time.Second}} }

// Launch implements Runtime.
func (Host) Launch(ctx context.Context, cfg *qemu.Config, logPath string) (int, error) {
	return qemu.Launch(ctx, cfg, logPath)
}

// Dial implements Runtime.
func (Host) Dial(ctx context.Context, socket string) (qemu.Monitor, error) {
	return qemu.Dial(ctx, socket)
}

// IsGuest implements Runtime.
func (Host) IsGuest(pid int, uuid string) bool { return qemu.IsGuest(pid, uuid) }

// Kill implements Runtime.
func (Host) Kill(ctx context.Context, pid int, uuid string) error { return qemu.Kill(ctx, pid, uuid) }

// WaitGone implements Runtime.
func (Host) WaitGone(ctx context.Context, pid int, uuid string) error {
	return qemu.WaitGone(ctx, pid, uuid)
}

// MakeDisk implements Runtime with qemu-img.
func (Host) MakeDisk(ctx context.Context, path string, sizeMiB int, backing, backingFmt string) error {
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing == "" {
		args = append(args, path+".tmp", fmt.Sprintf("%dM", sizeMiB))
	} else {
		args = append(args, "-b", backing, "-F", backingFmt, path+".tmp")
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		os.Remove(path + ".tmp")
		return fmt.Errorf("creating disk: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return os.Rename(path+".tmp", path)
}

// Flush implements Runtime.
func (Host) Flush(path string) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return
	}
	f.Sync()
	f.Close()
}

// CreateTap implements Runtime.
func (Host) CreateTap(name, bridge string, mtu int) error {
	return hostnet.CreateTap(name, bridge, mtu)
}

// DeleteTap implements Runtime.
func (Host) DeleteTap(name string) error { return hostnet.DeleteTap(name) }

// PinMAC implements Runtime.
func (Host) PinMAC(tap, mac string) error { return hostnet.PinMAC(tap, mac) }

// SampleMemory implements Runtime: 2,048 random pages read from QEMU's memory.
func (Host) SampleMemory(pid, memoryMiB int, again time.Duration) (qemu.MemorySample, error) {
	return qemu.SampleMemory(pid, memoryMiB, 2048, again)
}

// CPUTime implements Runtime from /proc.
func (Host) CPUTime(pid int) (time.Duration, error) { return qemu.CPUTime(pid) }

// CPUWait reads /proc/PID/task/*/schedstat.
func (Host) CPUWait(pid int) (time.Duration, error) { return qemu.CPUWait(pid) }

// Probe implements Runtime: GET /health from the guest's ferry-guest.
func (h Host) Probe(ctx context.Context, endpoint string) *api.Guest {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+endpoint+"/health", nil)
	resp, err := h.hc.Do(req)
	if err != nil {
		return &api.Guest{Healthy: false}
	}
	defer resp.Body.Close()
	var g struct {
		Status  string  `json:"status"`
		BootID  string  `json:"boot_id"`
		UptimeS float64 `json:"uptime_s"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&g) != nil || g.Status != "ok" {
		return &api.Guest{Healthy: false}
	}
	return &api.Guest{Healthy: true, BootID: g.BootID, UptimeS: g.UptimeS, LastSeen: time.Now().UTC()}
}

// launchQEMU starts a guest's QEMU and, when the host keeps its guests in a
// cgroup of their own (Config.GuestCgroup), moves it there before it runs
// the guest (QEMU starts its guests paused or is told to wait for a
// migration; what it does before that is negligible).
func (a *Agent) launchQEMU(ctx context.Context, cfg *qemu.Config, logPath string) (int, error) {
	pid, err := a.rt.Launch(ctx, cfg, logPath)
	if err != nil || a.cfg.GuestCgroup == "" {
		return pid, err
	}
	if err := os.WriteFile(filepath.Join(a.cfg.GuestCgroup, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		a.rt.Kill(ctx, pid, cfg.UUID)
		return 0, fmt.Errorf("moving QEMU into the guests' cgroup %s: %w", a.cfg.GuestCgroup, err)
	}
	return pid, nil
}
