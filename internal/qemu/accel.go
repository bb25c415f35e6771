package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// ReadyMarker is what ferry-guest prints on the serial console once it serves.
const ReadyMarker = "ferry-guest: ready"

// ChooseAccel resolves an accelerator mode (auto, kvm or tcg) into kvm or
// tcg. "auto" trusts KVM only after a probe guest (kernel and initrd of the
// built-in image) has really booted under it: on nested hosts /dev/kvm can
// exist and accept VMs while guests hang early in boot. The reason explains
// the choice for logs and `ferry node list`.
func ChooseAccel(ctx context.Context, mode, kernel, initrd, workDir string) (accel, reason string, err error) {
	switch mode {
	case "tcg":
		return "tcg", "requested", nil
	case "kvm":
		if err := kvmUsable(); err != nil {
			return "", "", fmt.Errorf("--accel kvm: %w", err)
		}
		return "kvm", "requested", nil
	case "auto", "":
	default:
		return "", "", fmt.Errorf("accelerator %q is not auto, kvm or tcg", mode)
	}
	if err := kvmUsable(); err != nil {
		return "tcg", err.Error(), nil
	}
	if kernel == "" {
		return "tcg", "no built-in image to prove that KVM boots a guest", nil
	}
	if err := bootProbe(ctx, kernel, initrd, workDir); err != nil {
		return "tcg", "a probe guest did not boot under KVM: " + err.Error(), nil
	}
	return "kvm", "a probe guest booted under KVM", nil
}

func kvmUsable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm unusable: %v", err)
	}
	f.Close()
	return nil
}

// bootProbe boots the image under KVM (not daemonized) and waits for the
// guest's ready marker on the serial console.
func bootProbe(ctx context.Context, kernel, initrd, workDir string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	serial := filepath.Join(workDir, "kvm-probe.serial")
	defer os.Remove(serial)
	cmd := exec.CommandContext(ctx, Binary,
		"-machine", "pc,accel=kvm", "-m", "256", "-nodefaults", "-no-user-config",
		"-display", "none", "-vga", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=1 ferry.probe=1",
		"-serial", "file:"+serial)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if b, _ := os.ReadFile(serial); strings.Contains(string(b), ReadyMarker) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no ready marker within 30s")
		case err := <-done:
			done <- err
			return fmt.Errorf("qemu exited: %v", err)
		case <-t.C:
		}
	}
}
