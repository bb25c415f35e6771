package placement

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ferryvm/ferry/api"
)

// CompareVersions compares dotted QEMU versions numerically (-1, 0, 1).
func CompareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// CheckLive says why a running guest may not live-migrate from host src to
// host dst, or returns nil: the target's QEMU must not be older than the one
// the guest runs in, it must run the guest's machine type, and both hosts'
// QEMUs must allow live migration.
func CheckLive(vm *api.VM, src, dst *api.Node) error {
	switch {
	case src == nil || src.QEMU == nil:
		return fmt.Errorf("the source host %s has not reported its QEMU yet (an older agent?)", vm.Node)
	case dst.QEMU == nil:
		return fmt.Errorf("host %s has not reported its QEMU yet (an older agent?)", dst.Name)
	}
	running := vm.Status.QEMUVersion
	if running == "" {
		running = src.QEMU.Version
	}
	if CompareVersions(dst.QEMU.Version, running) < 0 {
		return fmt.Errorf("host %s has QEMU %s, older than the QEMU %s the guest runs in: Ferry never moves a guest to an older QEMU (its device state may not load there); upgrade %s first",
			dst.Name, dst.QEMU.Version, running, dst.Name)
	}
	if m := GuestMachine(vm, src); m != "" && !dst.QEMU.HasMachine(m) {
		return fmt.Errorf("host %s's QEMU %s cannot run the guest's machine type %s", dst.Name, dst.QEMU.Version, m)
	}
	if why := src.QEMU.NoLiveMigration; why != "" {
		return fmt.Errorf("the source host %s cannot live-migrate: %s", src.Name, why)
	}
	if why := dst.QEMU.NoLiveMigration; why != "" {
		return fmt.Errorf("host %s cannot live-migrate: %s", dst.Name, why)
	}
	return nil
}

// GuestMachine is the versioned machine type a running guest has: the one
// recorded at its first boot, or — for a guest started before Ferry recorded
// it, with the unversioned "pc" — what "pc" meant to its host's QEMU.
func GuestMachine(vm *api.VM, src *api.Node) string {
	if vm.Spec.Machine != "" || src == nil || src.QEMU == nil {
		return vm.Spec.Machine
	}
	return src.QEMU.Aliases["pc"]
}
