package pki

import (
	"strings"
	"testing"
)

func TestToken(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := NewToken(ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseToken(" " + tok.String() + "\n")
	if err != nil || back != tok {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	for _, bad := range []string{"", "ferry1", "ferry2." + strings.TrimPrefix(tok.String(), "ferry1."),
		"ferry1.zz." + tok.Secret + "." + tok.CAFingerprint, tok.String() + ".x"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
	if !SecretMatches(tok.Secret, SecretHash(tok.Secret)) || SecretMatches("x"+tok.Secret[1:], SecretHash(tok.Secret)) {
		t.Error("SecretMatches")
	}
	if _, err := CAFromPEM(ca.PEM, tok.CAFingerprint); err != nil {
		t.Errorf("the right CA was refused: %v", err)
	}
	other, err := EnsureCA(t.TempDir(), "other CA")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CAFromPEM(other.PEM, tok.CAFingerprint); err == nil {
		t.Error("a CA with another fingerprint was accepted")
	}
}

func TestSignCSRIgnoresRequestedSubject(t *testing.T) {
	ca, err := EnsureCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	_, csr, err := NewKeyAndCSR("i-want-to-be-admin")
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ca.SignCSR(csr, "alice", RoleViewer, nil, 3600e9)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := RoleOf(cert); cert.Subject.CommonName != "alice" || r != Viewer {
		t.Errorf("subject %v role %v", cert.Subject, r)
	}
	if _, _, err := ca.SignCSR([]byte("not a csr"), "x", RoleViewer, nil, 3600e9); err == nil {
		t.Error("garbage signed")
	}
	noKey := &CA{Cert: ca.Cert, PEM: ca.PEM}
	if _, _, err := noKey.SignCSR(csr, "x", RoleViewer, nil, 3600e9); err == nil {
		t.Error("a CA without its key signed")
	}
}
