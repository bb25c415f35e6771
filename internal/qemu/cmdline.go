// Package qemu drives QEMU: it builds command lines, launches QEMU daemonized
// with a pidfile (so guests outlive the agent), re-attaches to running guests,
// and talks QMP through a client of its own (see qmp.go for why).
package qemu

import (
	"fmt"
	"strconv"
	"strings"
)

// Disk is a block device attached to the guest as virtio-blk.
type Disk struct {
	Path   string
	Format string // qcow2 or raw
}

// HostFwd forwards a TCP port on the host to a port in the guest (user-mode
// networking only).
type HostFwd struct {
	HostAddr  string
	HostPort  int
	GuestAddr string // the guest's static address (slirp defaults to its DHCP address)
	GuestPort int
}

// Net describes the guest's single NIC.
type Net struct {
	MAC string
	// Mode "user": QEMU's user-mode stack, isolated (restrict=on), with port
	// forwards on the host. Mode "tap": an existing tap device.
	Mode     string
	UserNet  string // CIDR of the user-mode network, e.g. 198.19.0.0/16
	UserHost string // the gateway address inside UserNet
	HostFwd  []HostFwd
	Tap      string
	MTU      int // advertised to the guest's virtio-net driver (host_mtu); 0 leaves QEMU's default
}

// Config is everything needed to start one guest.
type Config struct {
	Name      string
	UUID      string
	MemoryMiB int
	CPUs      int
	Machine   string // machine type, e.g. pc-i440fx-10.0; "pc" if empty
	Accel     string // kvm or tcg
	CPUModel  string

	Kernel, Initrd, Append string // direct kernel boot when Kernel != ""
	Disks                  []Disk
	Net                    *Net

	QMPSocket string
	// StatusSocket, if set, is a second QMP monitor for observers (tests,
	// operators debugging a host): the agent holds the first one.
	StatusSocket  string
	ConsoleSocket string
	ConsoleLog    string
	PidFile       string

	Watchdog bool // an emulated i6300esb
	Paused   bool // start with the CPUs stopped (-S)

	Incoming string

	// Prefix runs QEMU through another command, e.g. ip netns exec NS
	// (benchmarks start baseline guests inside testbed hosts).
	Prefix []string
	// Binary overrides the QEMU binary (Binary) for this guest.
	Binary string
}

func (c *Config) machine() string {
	if c.Machine == "" {
		return "pc"
	}
	return c.Machine
}

// accelArg is the -accel value.
func (c *Config) accelArg() string { return c.Accel }

// Validate reports a configuration QEMU would reject or that would be unsafe.
func (c *Config) Validate() error {
	switch {
	case c.Name == "" || c.UUID == "":
		return fmt.Errorf("qemu: name and uuid are required")
	case c.MemoryMiB <= 0 || c.CPUs <= 0:
		return fmt.Errorf("qemu: memory and cpus must be positive")
	case c.Accel != "kvm" && c.Accel != "tcg":
		return fmt.Errorf("qemu: accelerator %q is not kvm or tcg", c.Accel)
	case c.QMPSocket == "" || c.PidFile == "":
		return fmt.Errorf("qemu: qmp socket and pidfile are required")
	case strings.ContainsAny(c.Machine, ", "):
		return fmt.Errorf("qemu: machine type %q is not a plain name", c.Machine)
	case len(c.QMPSocket) > 107 || len(c.ConsoleSocket) > 107 || len(c.StatusSocket) > 107:
		return fmt.Errorf("qemu: socket path longer than 107 bytes: %s", c.QMPSocket)
	}
	for _, p := range []string{c.Kernel, c.Initrd, c.QMPSocket, c.StatusSocket, c.ConsoleSocket, c.ConsoleLog, c.PidFile} {
		if strings.Contains(p, ",") {
			return fmt.Errorf("qemu: path %q contains a comma", p)
		}
	}
	for _, d := range c.Disks {
		if strings.Contains(d.Path, ",") {
			return fmt.Errorf("qemu: disk path %q contains a comma", d.Path)
		}
	}
	return nil
}

// Args returns the QEMU command line (without the binary) for c. QEMU is
// asked to daemonize once initialised and to write its pid to PidFile.
// (Long on purpose: a declarative list, one entry per option, read top to bottom.)
func (c *Config) Args() []string {
	a := []string{
		"-name", "guest=" + c.Name + ",debug-threads=on",
		"-uuid", c.UUID,
		"-machine", c.machine(),
		"-accel", c.accelArg(),
		"-m", strconv.Itoa(c.MemoryMiB),
		"-smp", strconv.Itoa(c.CPUs),
		"-nodefaults", "-no-user-config",
		"-display", "none", "-vga", "none",
		// A guest reset (reboot, panic with panic=N, watchdog) ends QEMU; the
		// agent sees the exit and decides, so nothing restarts behind its back.
		"-no-reboot",
		"-chardev", "socket,id=qmp,path=" + c.QMPSocket + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-daemonize", "-pidfile", c.PidFile,
	}
	if c.StatusSocket != "" {
		a = append(a, "-chardev", "socket,id=qmp2,path="+c.StatusSocket+",server=on,wait=off", "-mon", "chardev=qmp2,mode=control")
	}
	if c.CPUModel != "" {
		a = append(a, "-cpu", c.CPUModel)
	}
	if c.ConsoleSocket != "" {
		cd := "socket,id=console,path=" + c.ConsoleSocket + ",server=on,wait=off"
		if c.ConsoleLog != "" {
			cd += ",logfile=" + c.ConsoleLog + ",logappend=on"
		}
		a = append(a, "-chardev", cd, "-serial", "chardev:console")
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Append != "" {
			a = append(a, "-append", c.Append)
		}
	}
	for i, d := range c.Disks {
		id := fmt.Sprintf("disk%d", i)
		a = append(a,
			"-blockdev", fmt.Sprintf("driver=file,node-name=%s-file,filename=%s", id, d.Path),
			"-blockdev", fmt.Sprintf("driver=%s,node-name=%s,file=%s-file", d.Format, id, id),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=%s,serial=ferry-%s", id, id))
		if i == 0 && c.Kernel == "" {
			a[len(a)-1] += ",bootindex=0"
		}
	}
	if n := c.Net; n != nil {
		switch n.Mode {
		case "user":
			nd := "user,id=net0,restrict=on"
			if n.UserNet != "" {
				nd += ",net=" + n.UserNet
			}
			if n.UserHost != "" {
				nd += ",host=" + n.UserHost
			}
			for _, f := range n.HostFwd {
				nd += fmt.Sprintf(",hostfwd=tcp:%s:%d-%s:%d", f.HostAddr, f.HostPort, f.GuestAddr, f.GuestPort)
			}
			a = append(a, "-netdev", nd)
		case "tap":
			a = append(a, "-netdev", "tap,id=net0,ifname="+n.Tap+",script=no,downscript=no")
		}
		dev := "virtio-net-pci,netdev=net0,mac=" + n.MAC + ",romfile="
		if n.MTU > 0 {
			dev += fmt.Sprintf(",host_mtu=%d", n.MTU)
		}
		a = append(a, "-device", dev)
	}
	if c.Watchdog {
		a = append(a, "-device", "i6300esb", "-action", "watchdog=reset")
	}
	if c.Paused {
		a = append(a, "-S")
	}

	if c.Incoming != "" {
		a = append(a, "-incoming", c.Incoming)
	}
	return a
}
