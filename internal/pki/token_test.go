package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
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
	if r, _ := RoleOf(cert, true); cert.Subject.CommonName != "alice" || r != Viewer {
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

// The cluster CA certifies hosts only: a certificate of it that names a
// user role gets none, and a user CA certificate naming the host
// organisation is no host.
func TestRoleOfDependsOnTheCA(t *testing.T) {
	cert := func(orgs ...string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: "x", Organization: orgs}}
	}
	for _, c := range []struct {
		orgs     []string
		fromUser bool
		want     Role
	}{
		{[]string{RoleNode}, false, Viewer},
		{[]string{RoleAdmin}, false, NoRole},
		{[]string{RoleNode, RoleAdmin}, false, Viewer},
		{[]string{RoleAdmin}, true, Admin},
		{[]string{RoleViewer, RoleOperator}, true, Operator},
		{[]string{RoleNode}, true, NoRole},
	} {
		if got, ok := RoleOf(cert(c.orgs...), c.fromUser); got != c.want || ok != (c.want != NoRole) {
			t.Errorf("RoleOf(%v, fromUserCA %v) = %v, %v; want %v", c.orgs, c.fromUser, got, ok, c.want)
		}
	}
}
