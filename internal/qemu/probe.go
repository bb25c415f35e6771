package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
)

// Probe starts the QEMU binary once without a guest (-machine none, paused)
// and asks it through QMP what it is and what it can do: its version, the
// machine types it runs, and the migration capabilities, parameters and
// multifd compression methods it knows. Ferry sets only what the QEMUs at
// both ends of a migration know, instead of assuming a version's feature set
// (QEMU 9.1 removed capabilities 7.2 had, and setting an unknown one fails
// the whole migrate-set-capabilities).
func Probe(ctx context.Context, runDir string) (*api.QEMUInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return nil, err
	}
	sock := filepath.Join(runDir, fmt.Sprintf("probe-%d.qmp", os.Getpid()))
	os.Remove(sock)
	defer os.Remove(sock)
	cmd := exec.CommandContext(ctx, Binary, "-machine", "none", "-accel", "tcg", "-nodefaults", "-no-user-config",
		"-display", "none", "-S", "-chardev", "socket,id=qmp,path="+sock+",server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	out := &tailBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s not usable (install qemu-system-x86): %w", Binary, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	var c *Client
	for {
		var err error
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		c, err = Dial(dctx, sock)
		dcancel()
		if err == nil {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			return nil, fmt.Errorf("probing %s: it exited (%v): %s", Binary, err, out.String())
		case <-ctx.Done():
			return nil, fmt.Errorf("probing %s: no QMP within 20s: %s", Binary, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer c.Close()
	return probeQMP(ctx, c)
}

// probeQMP asks a connected QEMU what it can do.
func probeQMP(ctx context.Context, c *Client) (*api.QEMUInfo, error) {
	var ver struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	}
	if err := c.Execute(ctx, "query-version", nil, &ver); err != nil {
		return nil, err
	}
	info := &api.QEMUInfo{Version: Version{ver.QEMU.Major, ver.QEMU.Minor, ver.QEMU.Micro}.String(),
		Package: ver.Package, Aliases: map[string]string{}}
	var machines []struct {
		Name  string `json:"name"`
		Alias string `json:"alias"`
	}
	if err := c.Execute(ctx, "query-machines", nil, &machines); err != nil {
		return nil, err
	}
	for _, m := range machines {
		info.Machines = append(info.Machines, m.Name)
		if m.Alias != "" {
			info.Aliases[m.Alias] = m.Name
		}
	}
	sort.Strings(info.Machines)
	var caps []struct {
		Capability string `json:"capability"`
	}
	if err := c.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		return nil, err
	}
	for _, cp := range caps {
		info.Capabilities = append(info.Capabilities, cp.Capability)
	}
	sort.Strings(info.Capabilities)
	var params map[string]any
	if err := c.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil {
		return nil, err
	}
	for p := range params {
		info.Parameters = append(info.Parameters, p)
	}
	sort.Strings(info.Parameters)
	if info.HasParameter("multifd-compression") {
		// Which methods were compiled in shows only by trying them.
		for _, m := range []string{"zstd", "zlib"} {
			err := c.Execute(ctx, "migrate-set-parameters", map[string]any{"multifd-compression": m}, nil)
			var qe *QMPError
			switch {
			case err == nil:
				info.MultifdCompression = append(info.MultifdCompression, m)
			case !errors.As(err, &qe):
				return nil, err
			}
		}
	}
	return info, nil
}

// tailBuffer keeps the last few KiB written to it (a probe's messages).
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
