package pki

import (
	"crypto/x509"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRevocationFile(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := EnsureCA(t.TempDir(), "other CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(name string) *x509.Certificate {
		t.Helper()
		if err := ca.EnsureLeaf(dir, name+".crt", name+".key", name, RoleViewer, nil); err != nil {
			t.Fatal(err)
		}
		cert, err := LoadCert(filepath.Join(dir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	a, b := leaf("a"), leaf("b")
	path := filepath.Join(dir, CRLFile)
	rf := NewRevocationFile(path, ca.Cert)
	if rf.Revoked(a) || rf.Err() != nil {
		t.Fatalf("no file: revoked %v, err %v", rf.Revoked(a), rf.Err())
	}
	if err := ca.WriteCRL(path, []*big.Int{a.SerialNumber}); err != nil {
		t.Fatal(err)
	}
	if !rf.Revoked(a) || rf.Revoked(b) {
		t.Fatalf("after revoking a: a %v, b %v", rf.Revoked(a), rf.Revoked(b))
	}
	// A list from another CA is not used; the last good one stays.
	time.Sleep(10 * time.Millisecond) // a new modification time
	if err := other.WriteCRL(path, []*big.Int{b.SerialNumber}); err != nil {
		t.Fatal(err)
	}
	if rf.Revoked(b) || !rf.Revoked(a) || rf.Err() == nil {
		t.Fatalf("foreign list: b %v, a %v, err %v", rf.Revoked(b), rf.Revoked(a), rf.Err())
	}
	// Garbage likewise.
	if err := os.WriteFile(path, []byte("not a list"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !rf.Revoked(a) || rf.Err() == nil {
		t.Fatalf("garbage: a %v, err %v", rf.Revoked(a), rf.Err())
	}
	// PEM, as QEMU's ca-crl.pem, is read too.
	der, err := ca.CRL([]*big.Int{b.SerialNumber})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, CRLPEM(der), 0o644); err != nil {
		t.Fatal(err)
	}
	if !rf.Revoked(b) || rf.Revoked(a) || rf.Err() != nil {
		t.Fatalf("PEM list of b: b %v, a %v, err %v", rf.Revoked(b), rf.Revoked(a), rf.Err())
	}
	if !rf.Distrusted(b) {
		t.Fatal("a revocation without a reason does not withdraw trust")
	}
	// Reasons: a superseded (renewed) certificate is revoked but its holder
	// is still trusted; a removed one is distrusted.
	der, err = ca.CRLWithReasons([]RevokedCert{{Serial: a.SerialNumber, Reason: ReasonSuperseded}, {Serial: b.SerialNumber, Reason: ReasonCessationOfOperation}})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(path, der); err != nil {
		t.Fatal(err)
	}
	if !rf.Revoked(a) || rf.Distrusted(a) || !rf.Revoked(b) || !rf.Distrusted(b) {
		t.Fatalf("renewed a: revoked %v distrusted %v; removed b: revoked %v distrusted %v", rf.Revoked(a), rf.Distrusted(a), rf.Revoked(b), rf.Distrusted(b))
	}
}
