package scale

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/internal/store"
)

// Etcd is an etcd cluster of member processes this run started (Ferry's
// embedded etcd, each in a process of its own so that its CPU is counted
// apart from the agents').
type Etcd struct {
	procs     []*exec.Cmd
	endpoints []string
}

// StartEtcd starts members processes of cmd (which must run one member:
// it is given --dir, --name, --client, --peer and --initial-cluster) and
// waits until the cluster answers.
func StartEtcd(ctx context.Context, cmd []string, dir string, members int) (*Etcd, error) {
	ports, err := freePorts(2 * members)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := 0; i < members; i++ {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	e := &Etcd{}
	for i := 0; i < members; i++ {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		mdir := filepath.Join(dir, fmt.Sprintf("etcd-m%d", i))
		if err := os.MkdirAll(mdir, 0o700); err != nil {
			e.Close()
			return nil, err
		}
		logf, err := os.Create(mdir + ".log")
		if err != nil {
			e.Close()
			return nil, err
		}
		args := append(append([]string(nil), cmd[1:]...), "--dir", mdir, "--name", fmt.Sprintf("m%d", i),
			"--client", client, "--peer", fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			"--initial-cluster", strings.Join(initial, ","))
		p := exec.Command(cmd[0], args...)
		p.Stdout, p.Stderr = logf, logf
		// A member must not outlive the run, even one that is killed.
		p.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := p.Start(); err != nil {
			logf.Close()
			e.Close()
			return nil, err
		}
		logf.Close()
		e.procs = append(e.procs, p)
		e.endpoints = append(e.endpoints, client)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := store.Open(ctx, e.endpoints, nil)
		if err == nil {
			st.Close()
			return e, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			e.Close()
			return nil, fmt.Errorf("etcd of %d members not answering: %w", members, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Endpoints are the members' client URLs.
func (e *Etcd) Endpoints() []string { return e.endpoints }

// PIDs are the members' processes.
func (e *Etcd) PIDs() []int {
	var out []int
	for _, p := range e.procs {
		out = append(out, p.Process.Pid)
	}
	return out
}

// Close ends the members (by the PIDs this run started).
func (e *Etcd) Close() {
	for _, p := range e.procs {
		p.Process.Kill()
		p.Wait()
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
