package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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

// `ip netns exec` gives the agent a sysfs of the namespace's own, without
// the machine's cgroup tree, so each host's cgroup is bind-mounted into
// the testbed's directory (mountCPUCap), which the agent sees.

// cgroupMount is where host's cgroup is bind-mounted for its agent.
func cgroupMount(name, host string) string { return filepath.Join(Dir(name), "cg-"+host) }

// mountCPUCap makes host's guest cgroup with a CPU quota of cpus CPUs and
// bind-mounts it at cgroupMount, once.
func mountCPUCap(name, host string, cpus float64) error {
	dir, err := capCPU(name, host, cpus)
	if err != nil {
		return err
	}
	mnt := cgroupMount(name, host)
	if _, err := os.Stat(filepath.Join(mnt, "cgroup.procs")); err == nil {
		return nil // mounted already (the agent is started again)
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount(dir, mnt, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("testbed: bind-mounting host %s's cgroup: %w", host, err)
	}
	return nil
}

// unmountCPUCaps undoes mountCPUCap for every host of testbed name.
func unmountCPUCaps(name string) error {
	mnts, _ := filepath.Glob(filepath.Join(Dir(name), "cg-*"))
	var errs []error
	for _, m := range mnts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
			continue
		}
		os.Remove(m)
	}
	return errors.Join(errs...)
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

// removeCgroups removes testbed name's cgroups (their processes were
// killed). A killed process leaves its cgroup only once the kernel has
// finished with it: a cgroup still busy is tried again for a few seconds.
func removeCgroups(name string) error {
	var errs []error
	for _, parent := range []string{cgroupRoot, filepath.Join(cgroupRoot, "cpu")} {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), "ferry-"+name+"-") {
				dir := filepath.Join(parent, e.Name())
				err := os.Remove(dir)
				for end := time.Now().Add(5 * time.Second); errors.Is(err, syscall.EBUSY) && time.Now().Before(end); {
					time.Sleep(50 * time.Millisecond)
					err = os.Remove(dir)
				}
				if err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Neighbour starts a noisy neighbour on host: a process, no guest of
// Ferry's, that spins in the host's guest cgroup, so that the host's
// guests get less of its capped CPU than they want (they wait) while their
// own use stays what it was. stop ends it (by its PID) and waits for it.
// The host must have a CPU cap (Options.HostCPUs).
func (b *Bed) Neighbour(host string) (stop func(), err error) {
	dir, _ := cgroupDir(b.Name, host)
	procs := filepath.Join(dir, "cgroup.procs")
	if _, err := os.Stat(procs); err != nil {
		return nil, fmt.Errorf("testbed: host %s has no CPU cap to crowd: %w", host, err)
	}
	// The shell joins the cgroup before it spins: $$ is its own PID.
	cmd := exec.Command("sh", "-c", `echo $$ > "$1" && while :; do :; done`, "neighbour", procs)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testbed: starting a neighbour on %s: %w", host, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	return func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}, nil
}
