package e2e

import (
	"context"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
)

// TestMigrationTLSAuthorization drives two real QEMUs the way the agents do
// and pushes migration streams at a target that waits for h1: from h2 (a
// valid certificate of the same migration CA, but not the source of this
// migration), from a certificate named h1 but made by another CA, and in
// plaintext. Each must be refused with the target still waiting; then h1's
// stream must be accepted.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestMigrationTLSAuthorization(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	base, err := os.MkdirTemp("", "fmtls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	creds := func(caDir, node string) string {
		ca, err := pki.EnsureMigrationCA(caDir)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(base, "creds-"+filepath.Base(caDir)+"-"+node)
		if err := ca.IssueMigration(dir, node, []string{"127.0.0.1"}, time.Hour); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, pki.MigrationDir)
	}
	ours, other := filepath.Join(base, "ca"), filepath.Join(base, "otherca")
	h1, h2, h3 := creds(ours, "h1"), creds(ours, "h2"), creds(ours, "h3")
	// A certificate named h1 from another CA; the forger trusts our CA as
	// well as its own, so the source accepts the target and only the target
	// can refuse.
	forged := creds(other, "h1")
	ourCA, err := os.ReadFile(filepath.Join(h1, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	theirs, _ := os.ReadFile(filepath.Join(forged, "ca-cert.pem"))
	if err := os.WriteFile(filepath.Join(forged, "ca-cert.pem"), append(theirs, ourCA...), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx := ctxT(t, 3*time.Minute)
	n := 0
	start := func(incoming bool) qemu.QMP {
		t.Helper()
		n++
		id := fmt.Sprintf("00000000-0000-4000-8000-%012d", n)
		cfg := &qemu.Config{Name: "tls" + strconv.Itoa(n), UUID: id, MemoryMiB: 64, CPUs: 1, Accel: "tcg",
			QMPSocket: filepath.Join(base, fmt.Sprintf("q%d", n)), PidFile: filepath.Join(base, fmt.Sprintf("p%d", n))}
		if incoming {
			cfg.Incoming = "defer"
		}
		pid, err := qemu.Launch(ctx, cfg, filepath.Join(base, fmt.Sprintf("log%d", n)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			qemu.Kill(kctx, pid, id)
		})
		c, err := qemu.DialQMP(ctx, cfg.QMPSocket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// The target waits for h1's stream; it is h3 to the sources.
	target := start(true)
	if err := target.SetupIncomingTLS(ctx, qemu.MigrationTLS{Dir: h3, AllowDN: pki.MigrationDN("h1")}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	uri := "tcp:127.0.0.1:" + strconv.Itoa(port)
	if err := target.MigrateIncoming(ctx, uri); err != nil {
		t.Fatal(err)
	}

	push := func(dir string) qemu.MigrationInfo {
		t.Helper()
		src := start(false)
		if dir != "" {
			if err := src.SetupOutgoingTLS(ctx, qemu.MigrationTLS{Dir: dir, Hostname: "h3"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := src.Migrate(ctx, uri); err != nil {
			t.Fatal(err)
		}
		for {
			info, err := src.QueryMigrate(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.Status == "completed" || info.Status == "failed" || info.Status == "cancelled" {
				return info
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waiting := func(after string) {
		t.Helper()
		st, err := target.QueryStatus(ctx)
		if err != nil {
			t.Fatalf("after %s the target is gone: %v", after, err)
		}
		if st.Status != "inmigrate" {
			t.Fatalf("after %s the target is %q, want still waiting (inmigrate)", after, st.Status)
		}
	}
	for _, c := range []struct{ name, dir string }{
		{"a valid certificate of another host (h2)", h2},
		{"a certificate for h1 from another CA", forged},
		{"plaintext", ""},
	} {
		info := push(c.dir)
		if info.Status == "completed" {
			t.Fatalf("%s: the target accepted the stream", c.name)
		}
		t.Logf("%s: refused (%s: %s)", c.name, info.Status, info.ErrorDesc)
		waiting(c.name)
	}
	if info := push(h1); info.Status != "completed" {
		t.Fatalf("the expected source h1 was refused: %s: %s", info.Status, info.ErrorDesc)
	}
	t.Log("h1 (the expected source) was admitted")

	// A revoked host cannot join a migration even as its expected source:
	// the target's credentials carry the migration CA's revocation list
	// (ca-crl.pem, as agents write it) naming h2's certificate.
	revokedDir := filepath.Join(base, "target-with-crl")
	if err := os.MkdirAll(revokedDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"} {
		data, err := os.ReadFile(filepath.Join(h3, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(revokedDir, f), data, 0o600)
	}
	mca, err := pki.EnsureMigrationCA(ours)
	if err != nil {
		t.Fatal(err)
	}
	h2serials, err := pki.Serials(filepath.Join(h2, "client-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	sn, _ := new(big.Int).SetString(h2serials[0], 16)
	waitFor := func(revoked []*big.Int) {
		t.Helper()
		der, err := mca.CRL(revoked)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(revokedDir, "ca-crl.pem"), pki.CRLPEM(der), 0o644)
		target = start(true)
		if err := target.SetupIncomingTLS(ctx, qemu.MigrationTLS{Dir: revokedDir, AllowDN: pki.MigrationDN("h2")}); err != nil {
			t.Fatal(err)
		}
		if err := target.MigrateIncoming(ctx, uri); err != nil {
			t.Fatal(err)
		}
	}
	// Control: the same target, its list revoking nothing, admits h2.
	waitFor(nil)
	if info := push(h2); info.Status != "completed" {
		t.Fatalf("h2, expected and not revoked, was refused: %s: %s", info.Status, info.ErrorDesc)
	}
	waitFor([]*big.Int{sn})
	if info := push(h2); info.Status == "completed" {
		t.Fatal("a revoked source was admitted")
	} else {
		t.Logf("revoked h2: refused (%s: %s)", info.Status, info.ErrorDesc)
	}
	waiting("the revoked source")
}
