package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/tunnel"
)

// How a migration's stream travels (api.Transport*): through the agents'
// tunnel (QEMU on local sockets, the agents speak TLS), through QEMU's own
// TLS channel, or — where the cluster allows it — in plaintext. Every
// encrypted way admits only the migration's source.

// transportOf is a migration's transport; records made before Ferry knew
// transports used QEMU's TLS unless plaintext.
func transportOf(m *api.Migration) string {
	switch {
	case m.Options.Transport != "":
		return m.Options.Transport
	case m.Options.Plaintext:
		return api.TransportPlain
	}
	return api.TransportQEMU
}

// listenIncoming makes the paused target QEMU (QMP client c) listen for the
// migration's stream and returns the URI the source sends to, and the
// tunnel's end when the agents carry it.
func (a *Agent) listenIncoming(ctx context.Context, c qemu.QMP, name string, m *api.Migration) (string, *tunnel.Target, error) {
	transport := transportOf(m)
	if transport != api.TransportPlain && a.cfg.MigrationTLSDir == "" {
		return "", nil, errors.New("this host has no migration credentials")
	}
	if transport == api.TransportAgent {
		creds, err := tunnel.LoadCredentials(a.cfg.MigrationTLSDir)
		if err != nil {
			return "", nil, err
		}
		// QEMU's stream stays on this host; the agent is what listens.
		if err := c.SetMigrationParameters(ctx, map[string]any{"tls-creds": ""}); err != nil {
			return "", nil, err
		}
		backend := incomingSocket(a.cfg.RunDir, name, 0)
		os.Remove(backend)
		if err := c.MigrateIncoming(ctx, "unix:"+backend); err != nil {
			return "", nil, err
		}
		t, err := tunnel.Listen(net.JoinHostPort(a.cfg.Address, "0"), creds, m.Source, backend, a.log.With("vm", name))
		if err != nil {
			return "", nil, fmt.Errorf("migration tunnel: %w", err)
		}
		return "tcp:" + t.Addr(), t, nil
	}
	port, err := freePort(a.cfg.Address)
	if err != nil {
		return "", nil, err
	}
	uri := "tcp:" + net.JoinHostPort(a.cfg.Address, strconv.Itoa(port))
	if transport == api.TransportQEMU {
		// Only the source of this migration may send the stream.
		if err := c.SetupIncomingTLS(ctx, qemu.MigrationTLS{Dir: a.cfg.MigrationTLSDir, AllowDN: pki.MigrationDN(m.Source)}); err != nil {
			return "", nil, fmt.Errorf("migration TLS: %w", err)
		}
	} else if err := c.SetMigrationParameters(ctx, map[string]any{"tls-creds": ""}); err != nil {
		return "", nil, err
	}
	if err := c.MigrateIncoming(ctx, uri); err != nil {
		return "", nil, err
	}
	return uri, nil, nil
}

// incomingSocket is the local socket a target QEMU listens on for the
// tunnel; a post-copy recovery listens on a fresh one (seq > 0).
func incomingSocket(runDir, name string, seq int) string {
	if seq == 0 {
		return filepath.Join(runDir, name+".min")
	}
	return filepath.Join(runDir, fmt.Sprintf("%s.min%d", name, seq))
}

// sendStream prepares the source QEMU's side of the stream: its own TLS
// towards the target, none, or the source end of the agents' tunnel (kept
// on the instance until the migration ends; the target's address is set
// once the target listens). The copy then goes to the target's URI, or to
// the tunnel's local socket.
func (a *Agent) sendStream(ctx context.Context, in *instance, m *api.Migration) error {
	in.closeTunnel()
	switch transportOf(m) {
	case api.TransportPlain:
		a.log.Warn("migrating in PLAINTEXT (allowed for this cluster)", "vm", m.VM, "to", m.Target)
		return in.qmp.SetMigrationParameters(ctx, map[string]any{"tls-creds": ""})
	case api.TransportQEMU:
		if a.cfg.MigrationTLSDir == "" {
			return errors.New("this host has no migration credentials")
		}
		return in.qmp.SetupOutgoingTLS(ctx, qemu.MigrationTLS{Dir: a.cfg.MigrationTLSDir, Hostname: m.Target})
	}
	creds, err := tunnel.LoadCredentials(a.cfg.MigrationTLSDir)
	if err != nil {
		return err
	}
	if err := in.qmp.SetMigrationParameters(ctx, map[string]any{"tls-creds": ""}); err != nil {
		return err
	}
	s, err := tunnel.Send(filepath.Join(a.cfg.RunDir, m.VM+".mout"), strings.TrimPrefix(m.TargetURI, "tcp:"), creds, m.Target, a.log.With("vm", m.VM))
	if err != nil {
		return fmt.Errorf("migration tunnel: %w", err)
	}
	in.mu.Lock()
	in.srcTunnel = s
	in.mu.Unlock()
	return nil
}

// closeTunnel ends the instance's tunnel ends, if any.
func (in *instance) closeTunnel() {
	in.mu.Lock()
	s, t := in.srcTunnel, in.tgtTunnel
	in.srcTunnel, in.tgtTunnel = nil, nil
	in.mu.Unlock()
	if s != nil {
		s.Close()
	}
	if t != nil {
		t.Close()
	}
}
