package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The testbed's hosts share one machine's CPUs; a host given a CPU cap has
// its agent put every QEMU it starts into a cgroup of the host's own whose
// CPU quota is the cap (agent --guest-cgroup): a host whose guests want
// more than it has is then really overloaded (its guests answer slowly),
// as on a machine of that size, while its agent and etcd member are not
// starved with them. Both cgroup versions are handled: v2 (cpu.max, Debian
// 12's default) and v1's cpu controller (cpu.cfs_quota_us).

const cgroupRoot = "/sys/fs/cgroup"

// cgroupDir is host h's cgroup under testbed name, and whether the machine
// has cgroup v2.
func cgroupDir(name, host string) (string, bool) {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return filepath.Join(cgroupRoot, "ferry-"+name+"-"+host), true
	}
	return filepath.Join(cgroupRoot, "cpu", "ferry-"+name+"-"+host), false
}

// capCPU makes host's guest cgroup with a CPU quota of cpus CPUs and
// returns it.
func capCPU(name, host string, cpus float64) (string, error) {
	dir, v2 := cgroupDir(name, host)
	if v2 {
		// The cpu controller must be enabled for the root's children.
		os.WriteFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), []byte("+cpu"), 0o644)
	} else if _, err := os.Stat(filepath.Dir(dir)); err != nil {
		return "", fmt.Errorf("testbed: no cgroup cpu controller to cap host %s's CPU: %w", host, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("testbed: cgroup for host %s: %w", host, err)
	}
	const period = 100000 // µs
	quota := strconv.Itoa(int(cpus * period))
	var err error
	if v2 {
		err = os.WriteFile(filepath.Join(dir, "cpu.max"), []byte(quota+" "+strconv.Itoa(period)), 0o644)
	} else {
		err = errors.Join(os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(period)), 0o644),
			os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(quota), 0o644))
	}
	if err != nil {
		return "", fmt.Errorf("testbed: CPU quota for host %s: %w", host, err)
	}
	return dir, nil
}

// removeCgroups removes testbed name's cgroups (their processes are gone).
func removeCgroups(name string) error {
	var errs []error
	for _, parent := range []string{cgroupRoot, filepath.Join(cgroupRoot, "cpu")} {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), "ferry-"+name+"-") {
				if err := os.Remove(filepath.Join(parent, e.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}
