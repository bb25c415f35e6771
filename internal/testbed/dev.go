// Package testbed starts real Ferry processes for tests, the demo and the
// benchmarks, behind small handles (Start, Stop, Kill, Cleanup) in the manner
// of etcd's e2e framework. DevAgent is a single-host `ferry agent --dev`
// whose guests use QEMU's user-mode networking with forwards on 127.0.0.1, so
// it leaves the machine's own network untouched.
package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/store"
)

// DevOptions configure a DevAgent.
type DevOptions struct {
	Bin      string // the ferry binary
	ImageDir string // where the tiny image is built
	Accel    string // default tcg
	Dir      string // parent for the data dir (default os.TempDir())
	// EtcdEndpoints, if set, points the agent at an external etcd instead of
	// running an embedded one.
	EtcdEndpoints []string
	// EtcdTLS is the client identity for EtcdEndpoints (CA, cert, key).
	EtcdTLS *store.TLSFiles
}

// DevAgent is one `ferry agent --dev` process and its state directories.
type DevAgent struct {
	opts       DevOptions
	DataDir    string
	RunDir     string
	LogPath    string
	APIPort    int
	EtcdClient int
	EtcdPeer   int
	cmd        *exec.Cmd
	done       chan struct{}
	Client     *client.Client
}

// NewDev prepares directories and free ports; Start runs the agent.
func NewDev(o DevOptions) (*DevAgent, error) {
	if o.Accel == "" {
		o.Accel = "tcg"
	}
	data, err := os.MkdirTemp(o.Dir, "ferry-dev-")
	if err != nil {
		return nil, err
	}
	// Socket paths are limited to 107 bytes: keep the run dir short.
	run, err := os.MkdirTemp("/tmp", "fy")
	if err != nil {
		os.RemoveAll(data)
		return nil, err
	}
	d := &DevAgent{opts: o, DataDir: data, RunDir: run, LogPath: filepath.Join(data, "agent.log")}
	ports, err := FreePorts(3)
	if err != nil {
		d.Cleanup()
		return nil, err
	}
	d.APIPort, d.EtcdClient, d.EtcdPeer = ports[0], ports[1], ports[2]
	return d, nil
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Args is the agent's command line.
func (d *DevAgent) Args() []string {
	a := []string{"agent", "--data-dir", d.DataDir, "--run-dir", d.RunDir,
		"--listen", "127.0.0.1:" + strconv.Itoa(d.APIPort),
		"--image-dir", d.opts.ImageDir, "--accel", d.opts.Accel, "--node-name", "dev1"}
	if len(d.opts.EtcdEndpoints) > 0 {
		a = append(a, "--etcd-endpoints", strings.Join(d.opts.EtcdEndpoints, ","))
		if t := d.opts.EtcdTLS; t != nil {
			a = append(a, "--etcd-cacert", t.CA, "--etcd-cert", t.Cert, "--etcd-key", t.Key)
		}
		return a
	}
	return append(a, "--dev",
		"--etcd-client-url", d.etcdEndpoints()[0],
		"--etcd-peer-url", "https://127.0.0.1:"+strconv.Itoa(d.EtcdPeer))
}

func (d *DevAgent) etcdEndpoints() []string {
	if len(d.opts.EtcdEndpoints) > 0 {
		return d.opts.EtcdEndpoints
	}
	return []string{"https://127.0.0.1:" + strconv.Itoa(d.EtcdClient)}
}

// Start runs the agent and waits until its API answers.
func (d *DevAgent) Start(ctx context.Context) error {
	if d.cmd != nil {
		return errors.New("testbed: agent already running")
	}
	logf, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.opts.Bin, d.Args()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	logf.Close()
	d.cmd = cmd
	d.done = make(chan struct{})
	go func() { cmd.Wait(); close(d.done) }()
	return d.waitReady(ctx)
}

func (d *DevAgent) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		select {
		case <-d.done:
			d.cmd = nil
			return fmt.Errorf("testbed: agent exited during start:\n%s", d.LogTail(20))
		default:
		}
		if d.Client == nil {
			d.Client, _ = client.FromDataDir(d.DataDir, "https://127.0.0.1:"+strconv.Itoa(d.APIPort))
		}
		if d.Client != nil {
			if nodes, err := d.Client.ListNodes(ctx); err == nil && len(nodes) > 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testbed: agent not ready: %w\n%s", ctx.Err(), d.LogTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop ends the agent with SIGTERM (guests keep running) and waits.
func (d *DevAgent) Stop() error { return d.signal(syscall.SIGTERM) }

// Kill ends the agent with SIGKILL (guests keep running) and waits.
func (d *DevAgent) Kill() error { return d.signal(syscall.SIGKILL) }

func (d *DevAgent) signal(sig syscall.Signal) error {
	if d.cmd == nil {
		return nil
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd = nil
	return nil
}

// LogTail returns the last n lines of the agent's log.
func (d *DevAgent) LogTail(n int) string {
	b, _ := os.ReadFile(d.LogPath)
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// EtcdKeys lists every key under /ferry/v1/ (etcd must be running).
func (d *DevAgent) EtcdKeys(ctx context.Context) ([]string, error) {
	files := d.opts.EtcdTLS
	if files == nil { // the embedded member: the host's own certificate
		pd := filepath.Join(d.DataDir, "pki")
		files = &store.TLSFiles{CA: filepath.Join(pd, pki.CACert), Cert: filepath.Join(pd, pki.ServerCert), Key: filepath.Join(pd, pki.ServerKey)}
	}
	tlsCfg, err := pki.TLSFromFiles(files.CA, files.Cert, files.Key)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, d.etcdEndpoints(), tlsCfg)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	keys, err := st.Keys(ctx)
	if err != nil {
		return nil, err
	}
	sort.Strings(keys)
	return keys, nil
}

// QEMUPids returns the pids of QEMU processes started by this agent (found
// by the agent's unique socket directory on their command line).
func (d *DevAgent) QEMUPids() []int {
	return pidsWithArg("qemu-system", d.RunDir+"/")
}

// WatchdogPids returns the pids of this agent's watchdog process.
func (d *DevAgent) WatchdogPids() []int {
	return pidsWithArg("watchdog", filepath.Join(d.RunDir, "watchdog.sock"))
}

func pidsWithArg(comm, needle string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(comm)) || !bytes.Contains(b, []byte(needle)) {
			continue
		}
		if qemu.Running(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Cleanup stops the agent, kills every QEMU it started and removes its
// directories. It is safe to call more than once and after failures.
func (d *DevAgent) Cleanup() {
	d.Kill()
	for _, pid := range d.WatchdogPids() { // started by the agent for HA guests
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range d.QEMUPids() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(d.QEMUPids()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	os.RemoveAll(d.RunDir)
	os.RemoveAll(d.DataDir)
}
