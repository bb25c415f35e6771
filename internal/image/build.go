// Package image builds and locates Ferry's built-in guest image "tiny": a
// Debian kernel (downloaded with apt-get and unpacked with dpkg -x, never
// installed on the host) and an initramfs of busybox, the virtio modules and
// ferry-guest.
package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// DefaultDir is where images live unless configured otherwise.
const DefaultDir = "/var/cache/ferry/images"

// Modules the guest needs (dependencies are added automatically).
var wantedModules = []string{"virtio_pci", "virtio_net", "virtio_blk", "i6300esb", "button", "evdev"}

// Tiny is the location of a built "tiny" image.
type Tiny struct {
	Kernel string `json:"kernel"` // the compressed kernel (bzImage)
	// PVHKernel is the same kernel uncompressed, booted through its PVH
	// entry point (see pvh.go); empty if the kernel has none.
	PVHKernel string   `json:"pvh_kernel,omitempty"`
	Initrd    string   `json:"initrd"`
	Manifest  Manifest `json:"manifest"`
}

// KernelFor returns the kernel to load for a boot form (api.BootPVH or
// api.BootBzImage), or an error if the image has no such kernel.
func (t *Tiny) KernelFor(boot string) (string, error) {
	switch boot {
	case "pvh":
		if t.PVHKernel == "" {
			return "", fmt.Errorf("image tiny has no PVH kernel (%s): rebuild it with `ferry image build --force`", t.Manifest.PVHMissing)
		}
		return t.PVHKernel, nil
	case "bzimage", "":
		return t.Kernel, nil
	}
	return "", fmt.Errorf("unknown boot form %q", boot)
}

// Manifest records what an image was built from.
type Manifest struct {
	KernelPackage string    `json:"kernel_package"`
	KernelVersion string    `json:"kernel_version"`
	GuestSHA256   string    `json:"guest_sha256"`
	Modules       []string  `json:"modules"`
	Built         time.Time `json:"built"`
	// PVH: vmlinux is the uncompressed kernel with a PVH entry point;
	// PVHMissing says why there is none.
	PVH        bool   `json:"pvh"`
	PVHMissing string `json:"pvh_missing,omitempty"`
}

// Find returns the tiny image under dir, or an error saying how to build it.
func Find(dir string) (*Tiny, error) {
	t := &Tiny{Kernel: filepath.Join(dir, "tiny", "vmlinuz"), Initrd: filepath.Join(dir, "tiny", "initrd.img")}
	b, err := os.ReadFile(filepath.Join(dir, "tiny", "manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("image tiny is not built in %s: run `ferry image build`", dir)
	}
	if err := json.Unmarshal(b, &t.Manifest); err != nil {
		return nil, fmt.Errorf("image tiny in %s has a broken manifest: rebuild with `ferry image build --force`", dir)
	}
	if t.Manifest.PVH {
		t.PVHKernel = filepath.Join(dir, "tiny", "vmlinux")
	}
	for _, p := range []string{t.Kernel, t.Initrd, t.PVHKernel} {
		if _, err := os.Stat(p); p != "" && err != nil {
			return nil, fmt.Errorf("image tiny is incomplete (%v): rebuild with `ferry image build --force`", err)
		}
	}
	return t, nil
}

// BuildOptions configure Build.
type BuildOptions struct {
	Dir           string // image directory (DefaultDir)
	GuestBinary   string // the static ferry-guest program
	Busybox       string // a static busybox (/bin/busybox)
	KernelPackage string // e.g. linux-image-6.1.0-56-amd64; resolved from linux-image-amd64 if empty
	Force         bool
	Log           *slog.Logger
}

// Build makes (or, if up to date, keeps) the tiny image.
func Build(ctx context.Context, o BuildOptions) (*Tiny, error) {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	guest, err := os.ReadFile(o.GuestBinary)
	if err != nil {
		return nil, fmt.Errorf("reading ferry-guest binary: %w (build it with `make` or pass --guest-binary)", err)
	}
	if !isStatic(guest) {
		return nil, fmt.Errorf("%s is not a static binary (build with CGO_ENABLED=0)", o.GuestBinary)
	}
	sum := sha256.Sum256(guest)
	guestSum := hex.EncodeToString(sum[:])
	busybox, err := os.ReadFile(o.Busybox)
	if err != nil {
		return nil, fmt.Errorf("reading busybox: %w (apt-get install busybox-static)", err)
	}
	pkg := o.KernelPackage
	if pkg == "" {
		if pkg, err = resolveKernelPackage(ctx); err != nil {
			return nil, err
		}
	}
	if !o.Force {
		if t, err := Find(o.Dir); err == nil && t.Manifest.GuestSHA256 == guestSum && t.Manifest.KernelPackage == pkg &&
			(t.Manifest.PVH || t.Manifest.PVHMissing != "") {
			o.Log.Info("image tiny is up to date", "dir", o.Dir, "kernel", t.Manifest.KernelVersion)
			return t, nil
		}
	}
	root, err := fetchKernel(ctx, filepath.Join(o.Dir, "cache"), pkg, o.Log)
	if err != nil {
		return nil, err
	}
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return nil, fmt.Errorf("expected one kernel in %s/boot, found %d", root, len(kernels))
	}
	version := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	initrd, order, err := buildInitrd(filepath.Join(root, "lib", "modules", version, "kernel"), busybox, guest, o.Log)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(kernels[0])
	if err != nil {
		return nil, err
	}
	man := Manifest{KernelPackage: pkg, KernelVersion: version, GuestSHA256: guestSum, Modules: order, Built: time.Now().UTC()}
	if err := writeImage(filepath.Join(o.Dir, "tiny"), kb, initrd, &man, o.Log); err != nil {
		return nil, err
	}
	return Find(o.Dir)
}

// buildInitrd makes the gzipped initramfs: busybox, ferry-guest, an init
// script and the kernel modules the guest needs (from moduleDir, in
// dependency order, which it returns).
func buildInitrd(moduleDir string, busybox, guest []byte, log *slog.Logger) ([]byte, []string, error) {
	idx, err := moduleIndex(moduleDir)
	if err != nil {
		return nil, nil, fmt.Errorf("indexing modules: %w", err)
	}
	order, missing, err := resolveModules(idx, wantedModules)
	if err != nil {
		return nil, nil, err
	}
	if len(missing) > 0 {
		log.Info("modules not built as modules (assumed built in)", "modules", missing)
	}
	var raw bytes.Buffer
	cw := &cpioWriter{w: &raw}
	for _, d := range []string{"bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "run"} {
		cw.Dir(d)
	}
	cw.File("init", 0o755, []byte(initScript))
	cw.File("bin/busybox", 0o755, busybox)
	for _, l := range []string{"sh", "mount", "insmod", "mkdir", "cat", "ip", "ls", "ps", "poweroff", "sync", "dmesg"} {
		cw.Symlink("bin/"+l, "busybox")
	}
	cw.File("bin/ferry-guest", 0o755, guest)
	for _, m := range order {
		b, err := os.ReadFile(idx[m])
		if err != nil {
			return nil, nil, err
		}
		cw.File("lib/modules/"+m+".ko", 0o644, b)
	}
	cw.File("etc/modules", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	if err := cw.Close(); err != nil {
		return nil, nil, err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	zw.Write(raw.Bytes())
	if err := zw.Close(); err != nil {
		return nil, nil, err
	}
	return gz.Bytes(), order, nil
}

// writeImage writes the kernel, its PVH-bootable vmlinux where one can be
// extracted, the initrd and, last, the manifest into out.
func writeImage(out string, kernel, initrd []byte, man *Manifest, log *slog.Logger) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	type file struct {
		name string
		data []byte
	}
	files := []file{{"vmlinuz", kernel}, {"initrd.img", initrd}}
	if vmlinux, err := extractPVH(kernel); err != nil {
		man.PVHMissing = err.Error()
		log.Warn("no PVH kernel: guests boot the compressed kernel, which is slow under TCG", "why", err)
		os.Remove(filepath.Join(out, "vmlinux"))
	} else {
		man.PVH = true
		files = append(files, file{"vmlinux", vmlinux})
	}
	mb, _ := json.MarshalIndent(man, "", "  ")
	// The manifest last: Find treats an image without one as unbuilt.
	os.Remove(filepath.Join(out, "manifest.json"))
	for _, f := range append(files, file{"manifest.json", mb}) {
		if err := writeAtomic(filepath.Join(out, f.name), f.data); err != nil {
			return err
		}
	}
	log.Info("built image tiny", "dir", out, "kernel", man.KernelVersion, "pvh", man.PVH, "modules", len(man.Modules), "initrd_bytes", len(initrd))
	return nil
}

const initScript = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /etc/modules); do
  /bin/busybox insmod /lib/modules/$m.ko || echo "init: loading $m failed"
done
exec /bin/ferry-guest
`

func isStatic(b []byte) bool {
	// A dynamically linked ELF names its interpreter.
	return !bytes.Contains(b[:min(len(b), 4096)], []byte("/lib64/ld-linux"))
}

var pkgRE = regexp.MustCompile(`Depends:\s*(linux-image-[0-9][^\s]*)`)

// resolveKernelPackage finds the versioned kernel package behind linux-image-amd64.
func resolveKernelPackage(ctx context.Context) (string, error) {
	try := func() string {
		out, _ := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").Output()
		if m := pkgRE.FindSubmatch(out); m != nil {
			return string(m[1])
		}
		return ""
	}
	if p := try(); p != "" {
		return p, nil
	}
	if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get update: %v: %s", err, out)
	}
	if p := try(); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("cannot resolve the kernel package behind linux-image-amd64 with apt-cache")
}

// fetchKernel downloads pkg with apt-get download and unpacks it with dpkg -x
// into cacheDir/pkg/root, once.
func fetchKernel(ctx context.Context, cacheDir, pkg string, log *slog.Logger) (string, error) {
	dir := filepath.Join(cacheDir, pkg)
	root := filepath.Join(dir, "root")
	if _, err := os.Stat(filepath.Join(dir, ".unpacked")); err == nil {
		return root, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) == 0 {
		log.Info("downloading kernel package", "package", pkg)
		cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("apt-get download %s: %v: %s", pkg, err, lastLines(out, 5))
		}
		debs, _ = filepath.Glob(filepath.Join(dir, "*.deb"))
		if len(debs) == 0 {
			return "", fmt.Errorf("apt-get download %s produced no .deb", pkg)
		}
	}
	sort.Strings(debs)
	os.RemoveAll(root)
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[len(debs)-1], root).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg -x: %v: %s", err, lastLines(out, 5))
	}
	return root, os.WriteFile(filepath.Join(dir, ".unpacked"), nil, 0o644)
}

func lastLines(b []byte, n int) string {
	l := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
