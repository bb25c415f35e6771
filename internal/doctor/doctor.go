// Package doctor checks that a host has what a Ferry agent needs — a QEMU
// new enough with an accelerator that boots guests, bridge, VXLAN and TAP
// devices, a synchronised clock, free ports, memory and disk, the built-in
// image — and says what to fix (`ferry doctor`). Each check is a small
// function of what it read, so that its judgement is tested apart from the
// machine it runs on.
package doctor

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Status is a check's verdict.
type Status string

// Verdicts: OK, Warn (works, worse), Fail (an agent cannot run as it is).
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "FAIL"
)

// Result is one check's verdict, what it found and what to do about it.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Found  string `json:"found"`
	Fix    string `json:"fix,omitempty"`
}

// Options say where the agent keeps its state and images, and which ports
// it serves.
type Options struct {
	DataDir  string
	ImageDir string
	Ports    []int // the API's and etcd's
	// Running reports whether a Ferry agent already serves here (its
	// ports are then rightly taken).
	Running bool
	// Accel is the accelerator the agent will be asked for (auto, kvm or
	// tcg; "" is auto, which boots a probe guest under KVM).
	Accel string
}

// MinQEMU is the oldest QEMU Ferry runs guests on (docs/KNOWN-ISSUES.md).
const MinQEMU = "9.0"

// Run makes every check.
func Run(ctx context.Context, o Options) []Result {
	var out []Result
	dir, err := os.MkdirTemp("", "ferry-doctor-")
	if err == nil {
		defer os.RemoveAll(dir)
	}
	info, err := qemu.Probe(ctx, dir)
	var version string
	if info != nil {
		version = info.Version
	}
	out = append(out, qemuVersion(version, err))
	img, imgErr := image.Find(o.ImageDir)
	out = append(out, builtImage(o.ImageDir, imgErr))
	if imgErr == nil {
		accel, why, err := qemu.ChooseAccel(ctx, o.Accel, img.Kernel, img.Initrd, dir)
		out = append(out, accelerator(accel, why, err))
	} else {
		out = append(out, accelerator("", "", fmt.Errorf("cannot prove an accelerator without the built-in image")))
	}
	out = append(out, netDevices(tryNetDevices()))
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	out = append(out, clock(state, tx.Status, err))
	for _, p := range o.Ports {
		out = append(out, port(p, tryListen(p), o.Running))
	}
	out = append(out, memory(memAvailable()))
	var fs unix.Statfs_t
	target := o.DataDir
	if _, err := os.Stat(target); err != nil {
		target = "/"
	}
	if err := unix.Statfs(target, &fs); err == nil {
		out = append(out, disk(target, int64(fs.Bavail)*int64(fs.Bsize)))
	}
	return out
}

// Failed reports whether any check failed.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

func qemuVersion(version string, err error) Result {
	r := Result{Check: "QEMU"}
	switch {
	case err != nil:
		r.Status, r.Found, r.Fix = Fail, err.Error(), "install qemu-system-x86 and qemu-utils "+MinQEMU+" or newer (Debian 12: from bookworm-backports; make deps does it)"
	case placement.CompareVersions(version, MinQEMU) < 0:
		r.Status, r.Found, r.Fix = Fail, "QEMU "+version, "QEMU "+MinQEMU+" or newer is needed (older TCG loses pages written during a migration); Debian 12: install it from bookworm-backports"
	default:
		r.Status, r.Found = OK, "QEMU "+version
	}
	return r
}

func builtImage(dir string, err error) Result {
	if err != nil {
		return Result{Check: "built-in image", Status: Warn, Found: err.Error(), Fix: "ferry image build --image-dir " + dir + " (needs busybox-static)"}
	}
	return Result{Check: "built-in image", Status: OK, Found: "tiny image in " + dir}
}

func accelerator(accel, why string, err error) Result {
	switch {
	case err != nil:
		return Result{Check: "accelerator", Status: Warn, Found: err.Error(), Fix: "build the image first; guests then run under TCG unless KVM proves itself"}
	case accel == "kvm":
		return Result{Check: "accelerator", Status: OK, Found: "KVM: " + why}
	case why == "requested":
		return Result{Check: "accelerator", Status: OK, Found: "TCG, as asked (emulation, many times slower than KVM)"}
	case strings.Contains(why, "did not boot"):
		return Result{Check: "accelerator", Status: Warn, Found: "TCG (emulation, many times slower): " + why,
			Fix: "/dev/kvm is there but a guest did not boot under it (nested virtualisation without the host's support?); guests run under TCG"}
	default:
		return Result{Check: "accelerator", Status: Warn, Found: "TCG (emulation, many times slower): " + why,
			Fix: "give the host /dev/kvm (hardware virtualisation on in the firmware, the kvm_intel or kvm_amd module, nested virtualisation for a VM host)"}
	}
}

func netDevices(err error) Result {
	if err != nil {
		return Result{Check: "bridge, VXLAN, TAP", Status: Fail, Found: err.Error(),
			Fix: "a kernel with bridge, vxlan and tun support, and root (CAP_NET_ADMIN) for the agent"}
	}
	return Result{Check: "bridge, VXLAN, TAP", Status: OK, Found: "created and removed in a scratch network namespace"}
}

// clock judges adjtimex's answer: state TIME_ERROR or the STA_UNSYNC flag
// mean the kernel's clock is not disciplined by NTP.
func clock(state int, status int32, err error) Result {
	r := Result{Check: "clock sync"}
	switch {
	case err != nil:
		r.Status, r.Found = Warn, "cannot ask the kernel: "+err.Error()
	case state == unix.TIME_ERROR || status&unix.STA_UNSYNC != 0:
		r.Status, r.Found, r.Fix = Warn, "the kernel's clock is not synchronised",
			"run an NTP client (chrony or systemd-timesyncd): leases and fencing tolerate skew, but event times and certificates do not"
	default:
		r.Status, r.Found = OK, "synchronised"
	}
	return r
}

func port(p int, err error, running bool) Result {
	r := Result{Check: "port " + strconv.Itoa(p)}
	switch {
	case err == nil:
		r.Status, r.Found = OK, "free"
	case running:
		r.Status, r.Found = OK, "in use by the Ferry agent running here"
	default:
		r.Status, r.Found, r.Fix = Fail, err.Error(), "stop what listens there, or give the agent other ports (--listen, --etcd-client-url, --etcd-peer-url)"
	}
	return r
}

// MinMemory and MinDisk are the least an agent with a guest or two needs.
const (
	MinMemory = 1 << 30
	MinDisk   = 5 << 30
)

func memory(avail int64) Result {
	r := Result{Check: "memory", Found: fmt.Sprintf("%.1f GiB available", float64(avail)/(1<<30))}
	if avail < MinMemory {
		r.Status, r.Fix = Warn, "guests need their memory free on the host; less than 1 GiB is left"
	} else {
		r.Status = OK
	}
	return r
}

func disk(path string, free int64) Result {
	r := Result{Check: "disk", Found: fmt.Sprintf("%.1f GiB free under %s", float64(free)/(1<<30), path)}
	if free < MinDisk {
		r.Status, r.Fix = Warn, "guests' disks and etcd's data live here; free at least 5 GiB"
	} else {
		r.Status = OK
	}
	return r
}

// tryNetDevices creates a bridge, a VXLAN device and a TAP device in a
// scratch network namespace (nothing on the host's own network changes).
func tryNetDevices() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home, err := netns.Get()
	if err != nil {
		return err
	}
	defer home.Close()
	scratch, err := netns.New() // this thread is in it from here
	if err != nil {
		return fmt.Errorf("a scratch network namespace: %w", err)
	}
	defer scratch.Close()
	defer netns.Set(home)
	for _, l := range []netlink.Link{
		&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "fdoc-br"}},
		&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "fdoc-vx"}, VxlanId: 42, Port: 4789},
		&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "fdoc-tap"}, Mode: netlink.TUNTAP_MODE_TAP},
	} {
		if err := netlink.LinkAdd(l); err != nil {
			return fmt.Errorf("%s device: %w", l.Type(), err)
		}
	}
	return nil
}

func tryListen(p int) error {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
	if err != nil {
		return err
	}
	return ln.Close()
}

// memAvailable is the kernel's estimate of memory available, in bytes.
func memAvailable() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
