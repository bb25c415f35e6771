package qemu

import (
	"strings"
	"testing"
)

func baseConfig() *Config {
	return &Config{Name: "web", UUID: "u-1", MemoryMiB: 256, CPUs: 2, Accel: "tcg",
		QMPSocket: "/run/f/web.qmp", PidFile: "/d/web.pid", ConsoleSocket: "/run/f/web.con", ConsoleLog: "/d/console.log",
		Kernel: "/i/vmlinuz", Initrd: "/i/initrd", Append: "console=ttyS0",
		Disks: []Disk{{Path: "/s/disk0.qcow2", Format: "qcow2"}},
		Net: &Net{Mode: "user", MAC: "52:54:00:13:00:0a", UserNet: "198.19.0.0/16", UserHost: "198.19.255.254",
			HostFwd: []HostFwd{{HostAddr: "127.0.0.1", HostPort: 4000, GuestAddr: "198.19.0.10", GuestPort: 80}}},
		Watchdog: true, Paused: true}
}

func TestArgs(t *testing.T) {
	a := strings.Join(baseConfig().Args(), " ")
	for _, want := range []string{
		"-uuid u-1", "-machine pc -accel tcg", "-m 256", "-smp 2", "-daemonize -pidfile /d/web.pid", "-no-reboot",
		"socket,id=qmp,path=/run/f/web.qmp,server=on,wait=off",
		"logfile=/d/console.log", "-kernel /i/vmlinuz", "-initrd /i/initrd",
		"driver=qcow2,node-name=disk0,file=disk0-file", "virtio-blk-pci,drive=disk0",
		"restrict=on", "hostfwd=tcp:127.0.0.1:4000-198.19.0.10:80", "mac=52:54:00:13:00:0a",
		"-device i6300esb", "-S",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("args lack %q:\n%s", want, a)
		}
	}
	if strings.Contains(a, "bootindex") {
		t.Error("direct kernel boot must not set a boot disk")
	}
}

func TestValidate(t *testing.T) {
	cases := map[string]func(*Config){
		"comma in disk":   func(c *Config) { c.Disks[0].Path = "/s/a,b" },
		"bad accel":       func(c *Config) { c.Accel = "xen" },
		"no memory":       func(c *Config) { c.MemoryMiB = 0 },
		"long socket":     func(c *Config) { c.QMPSocket = "/" + strings.Repeat("x", 120) },
		"no uuid":         func(c *Config) { c.UUID = "" },
		"comma in kernel": func(c *Config) { c.Kernel = "/a,b" },
	}
	for name, mut := range cases {
		c := baseConfig()
		mut(c)
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := baseConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}
