package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/hostnet"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/ipam"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/revert"
)

// coldBoot is the machine type and kernel form a fresh boot of the guest
// uses: what it first booted with, or — on its first start — this QEMU's
// current pc machine and the PVH kernel where the image has one.
func (a *Agent) coldBoot(spec api.VMSpec) (machine, boot string, err error) {
	machine = spec.Machine
	if machine == "" {
		if machine = a.cfg.QEMU.Aliases["pc"]; machine == "" {
			machine = "pc"
		}
	} else if !a.cfg.QEMU.HasMachine(machine) {
		return "", "", errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf(
			"this host's QEMU %s cannot run the guest's machine type %s (it first booted on another QEMU); start it on a host whose QEMU has it",
			a.cfg.QEMU.Version, machine))
	}
	boot = spec.Boot
	if boot == "" && spec.Image == api.ImageTiny {
		boot = api.BootBzImage
		if img, err := image.Find(a.cfg.ImageDir); err == nil && img.PVHKernel != "" {
			boot = api.BootPVH
		}
	}
	return machine, boot, nil
}

// recordBoot records the machine type and kernel form of a guest's first
// boot in its record, so every later start and move keeps them.
func (a *Agent) recordBoot(ctx context.Context, spec api.VMSpec, machine, boot string) {
	if spec.Machine != "" && spec.Boot == boot {
		return
	}
	_, err := a.st.UpdateSpec(ctx, spec.Name, func(s *api.VMSpec) error {
		if s.Machine == "" {
			s.Machine = machine
		}
		if s.Boot == "" {
			s.Boot = boot
		}
		return nil
	})
	if err != nil {
		a.log.Warn("recording the guest's machine type", "vm", spec.Name, "err", err)
	}
}

// StatusSocket is where a guest's second QMP monitor listens, for observers
// that want QEMU's own word on whether the guest runs (query-status).
func StatusSocket(runDir, name string) string { return filepath.Join(runDir, name+".qst") }

// guestConfig prepares what a guest's QEMU needs on this host (its disk on
// the shared storage, a tap on the overlay or a user-mode forward, clean
// sockets) and returns the QEMU configuration, the guest's HTTP endpoint and
// its tap. r undoes what was made.
func (a *Agent) guestConfig(ctx context.Context, spec api.VMSpec, machine, boot string, r *revert.Reverter) (*qemu.Config, string, string, error) {
	name := spec.Name
	dir := a.vmDir(name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, "", "", err
	}
	ip, err := netip.ParsePrefix(spec.IP)
	if err != nil {
		return nil, "", "", fmt.Errorf("vm has no valid address: %w", err)
	}
	cfg := &qemu.Config{
		Name: name, UUID: spec.UUID, MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs,
		Machine: machine, Accel: a.cfg.Accel, CPUModel: a.cfg.CPUModel,
		QMPSocket:     filepath.Join(a.cfg.RunDir, name+".qmp"),
		StatusSocket:  StatusSocket(a.cfg.RunDir, name),
		ConsoleSocket: filepath.Join(a.cfg.RunDir, name+".con"),
		ConsoleLog:    filepath.Join(dir, "console.log"),
		PidFile:       filepath.Join(dir, "qemu.pid"),
		Watchdog:      true,
		Paused:        true,
	}
	disk, err := a.ensureDisk(ctx, spec)
	if err != nil {
		return nil, "", "", err
	}
	cfg.Disks = []qemu.Disk{disk}
	var endpoint, tap string
	if ov := a.cfg.Overlay; ov != nil {
		tap = hostnet.TapName(spec.UUID)
		if err := a.rt.CreateTap(tap, ov.Bridge, ov.MTU()); err != nil {
			return nil, "", "", err
		}
		r.Add(func() { a.rt.DeleteTap(tap) })
		cfg.Net = &qemu.Net{Mode: "tap", MAC: spec.MAC, Tap: tap, MTU: ov.MTU()}
		endpoint = net.JoinHostPort(ip.Addr().String(), "80")
	} else {
		port, err := freePort(a.cfg.GuestHostAddr)
		if err != nil {
			return nil, "", "", err
		}
		cfg.Net = &qemu.Net{
			Mode: "user", MAC: spec.MAC, UserNet: ipam.Subnet.String(), UserHost: ipam.Gateway.String(),
			HostFwd: []qemu.HostFwd{{HostAddr: a.cfg.GuestHostAddr, HostPort: port, GuestAddr: ip.Addr().String(), GuestPort: 80}},
		}
		endpoint = net.JoinHostPort(a.cfg.GuestHostAddr, strconv.Itoa(port))
	}
	if spec.Image == api.ImageTiny {
		img, err := image.Find(a.cfg.ImageDir)
		if err != nil {
			return nil, "", "", err
		}
		if cfg.Kernel, err = img.KernelFor(boot); err != nil {
			return nil, "", "", err
		}
		cfg.Initrd = img.Initrd
		cfg.Append = fmt.Sprintf("console=ttyS0 quiet panic=1 ferry.name=%s ferry.ip=%s ferry.gw=%s", name, spec.IP, ipam.Gateway)
	}
	// Start from clean sockets; a stale one would make QEMU fail to bind.
	os.Remove(cfg.QMPSocket)
	os.Remove(cfg.StatusSocket)
	os.Remove(cfg.ConsoleSocket)

	return cfg, endpoint, tap, nil
}

// ensureDisk creates the VM's disk on first start: an empty qcow2 of the
// requested size for the tiny image, a copy-on-write overlay over a user's image.
func (a *Agent) ensureDisk(ctx context.Context, spec api.VMSpec) (qemu.Disk, error) {
	dir := filepath.Join(a.cfg.StorageDir, spec.Name)
	path := filepath.Join(dir, "disk0.qcow2")
	d := qemu.Disk{Path: path, Format: "qcow2"}
	if _, err := os.Stat(path); err == nil {
		return d, nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return d, err
	}
	if spec.Image == api.ImageTiny {
		return d, a.rt.MakeDisk(ctx, path, spec.DiskMiB, "", "")
	}
	return d, a.rt.MakeDisk(ctx, path, 0, spec.Image, spec.ImageFmt)
}
