package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/testbed"
)

// TestSecurity runs one 3-host testbed with a guest and checks what the
// zero-trust issue asks of a running cluster.
func TestSecurity(t *testing.T) {
	b, cl := newBed(t, 3)
	ctx := ctxT(t, 5*time.Minute)
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "sec"}); err != nil {
		t.Fatal(err)
	}
	waitVM(t, cl, "sec", 3*time.Minute, "running and healthy", healthyRunning)

	t.Run("no port accepts plaintext", func(t *testing.T) {
		// A migration's target listens only briefly: a failpoint holds it
		// listening so that its QEMU's port is among those scanned, and the
		// migration must still complete after the scan's attempts.
		vm, err := cl.GetVM(ctx, "sec")
		if err != nil {
			t.Fatal(err)
		}
		target := b.Hosts[(hostIndex(b, vm.Node)+1)%len(b.Hosts)]
		fp := filepath.Join(target.DataDir, "failpoints")
		if err := os.WriteFile(fp, []byte(failpoint.TargetListening+" 4s\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(fp)
		m, err := cl.MigrateVM(ctx, "sec", api.MigrateRequest{To: target.Name})
		if err != nil {
			t.Fatal(err)
		}
		qemuPort := false
		for end := time.Now().Add(time.Minute); !qemuPort && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			for _, l := range listeners(t, b) {
				qemuPort = qemuPort || strings.Contains(l.proc, "qemu")
			}
		}
		if !qemuPort {
			t.Fatal("the migration target's QEMU never listened")
		}
		checkNoPlaintext(t, b)
		if m = waitMigEnd(t, cl, "sec", m.ID); m.Phase != api.MigCompleted {
			t.Fatalf("the migration did not survive the scan: %s: %s", m.Phase, m.Error)
		}
	})
}

// listener is one listening TCP socket of a testbed host.
type listener struct {
	host, ns, addr, proc string
}

// listeners finds every TCP socket listening in the hosts' namespaces (the
// namespace holds only what Ferry started there: agent, etcd, QEMUs).
func listeners(t *testing.T, b *testbed.Bed) []listener {
	t.Helper()
	var out []listener
	for _, h := range b.Hosts {
		raw, err := exec.Command("ip", "netns", "exec", h.NS, "ss", "-Htlnp").CombinedOutput()
		if err != nil {
			t.Fatalf("ss in %s: %v: %s", h.NS, err, raw)
		}
		sc := bufio.NewScanner(strings.NewReader(string(raw)))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 4 {
				continue
			}
			host, port, err := net.SplitHostPort(f[3])
			if err != nil {
				t.Fatalf("ss line %q: %v", sc.Text(), err)
			}
			switch host {
			case "*", "0.0.0.0", "[::]", "::":
				host = h.Addr
			}
			proc := ""
			if len(f) > 5 {
				proc = f[5]
			}
			out = append(out, listener{host: h.Name, ns: h.NS, addr: net.JoinHostPort(strings.Trim(host, "[]"), port), proc: proc})
		}
	}
	return out
}

// checkNoPlaintext connects to every listening port twice: in plaintext
// (an HTTP request) and with TLS but no client certificate. Each must
// refuse: no plaintext answer but a TLS server's complaint, no TLS session
// without a certificate of the cluster CA.
func checkNoPlaintext(t *testing.T, b *testbed.Bed) {
	ls := listeners(t, b)
	seen := map[string]bool{}
	for _, l := range ls {
		_, port, _ := net.SplitHostPort(l.addr)
		seen[port] = true
	}
	// The scan found what must be there (API, etcd client and peer).
	for _, p := range []string{"7443", "2379", "2380"} {
		if !seen[p] {
			t.Fatalf("no listener on port %s found; the scan is broken: %v", p, ls)
		}
	}
	for _, l := range ls {
		if l.addr == "" {
			continue
		}
		dial := testbed.DialIn(l.ns)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		// Plaintext.
		c, err := dial(ctx, "tcp", l.addr)
		if err != nil {
			cancel()
			t.Errorf("%s %s (%s): cannot connect: %v", l.host, l.addr, l.proc, err)
			continue
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "GET /v1/nodes HTTP/1.1\r\nHost: ferry\r\n\r\n")
		reply, _ := io.ReadAll(io.LimitReader(c, 4096))
		c.Close()
		s := string(reply)
		switch {
		case len(reply) == 0:
			t.Logf("%s %s (%s): plaintext: closed without a word", l.host, l.addr, l.proc)
		case strings.Contains(s, "Client sent an HTTP request to an HTTPS server"):
			t.Logf("%s %s (%s): plaintext: told to use TLS", l.host, l.addr, l.proc)
		case reply[0] == 0x15: // a TLS alert record
			t.Logf("%s %s (%s): plaintext: TLS alert", l.host, l.addr, l.proc)
		default:
			t.Errorf("%s %s (%s): answered plaintext: %.200q", l.host, l.addr, l.proc, s)
		}
		// TLS without a client certificate.
		c, err = dial(ctx, "tcp", l.addr)
		if err != nil {
			cancel()
			t.Errorf("%s %s: cannot connect: %v", l.host, l.addr, err)
			continue
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		tc.SetDeadline(time.Now().Add(3 * time.Second))
		err = tc.HandshakeContext(ctx)
		if err == nil {
			// TLS 1.3 servers report a missing client certificate on the
			// first read.
			io.WriteString(tc, "GET /v1/nodes HTTP/1.1\r\nHost: ferry\r\n\r\n")
			var buf [512]byte
			var n int
			n, err = tc.Read(buf[:])
			if err == nil {
				t.Errorf("%s %s (%s): served TLS without a client certificate: %.200q", l.host, l.addr, l.proc, buf[:n])
			}
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("%s %s (%s): without a client certificate: %v", l.host, l.addr, l.proc, err)
		}
		tc.Close()
		cancel()
	}
}
