package pki

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// TestMigrationCredentials checks the QEMU layout IssueMigration writes,
// that EnsureMigration keeps valid credentials, and that it adds the
// Diffie-Hellman parameters to credentials made before they existed.
func TestMigrationCredentials(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureMigrationCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	hosts := []string{"n1", "198.18.0.11"}
	if err := ca.EnsureMigration(dir, "n1", hosts); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, MigrationDir)
	for _, f := range []string{"ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem", "dh-params.pem"} {
		if _, err := os.Stat(filepath.Join(md, f)); err != nil {
			t.Errorf("QEMU layout misses %s: %v", f, err)
		}
	}
	cert, err := LoadCert(filepath.Join(md, "server-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if got := "O=" + cert.Subject.Organization[0] + ",CN=" + cert.Subject.CommonName; got != MigrationDN("n1") {
		t.Errorf("subject %s, want %s", got, MigrationDN("n1"))
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("not signed by the migration CA: %v", err)
	}
	dh, err := os.ReadFile(filepath.Join(md, "dh-params.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(dh); b == nil || b.Type != "DH PARAMETERS" || len(b.Bytes) < 256 {
		t.Errorf("dh-params.pem is not a 2048-bit DH PARAMETERS block: %q", dh)
	}

	// Credentials from before dh-params.pem: kept, and the file added.
	if err := os.Remove(filepath.Join(md, "dh-params.pem")); err != nil {
		t.Fatal(err)
	}
	if err := ca.EnsureMigration(dir, "n1", hosts); err != nil {
		t.Fatal(err)
	}
	again, err := LoadCert(filepath.Join(md, "server-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if again.SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Error("EnsureMigration replaced valid credentials")
	}
	if _, err := os.Stat(filepath.Join(md, "dh-params.pem")); err != nil {
		t.Errorf("EnsureMigration did not restore dh-params.pem: %v", err)
	}
	// Other hosts: new credentials.
	if err := ca.EnsureMigration(dir, "n1", []string{"n1", "198.18.0.12"}); err != nil {
		t.Fatal(err)
	}
	if third, _ := LoadCert(filepath.Join(md, "server-cert.pem")); third == nil || third.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Error("EnsureMigration kept credentials for other addresses")
	}
}
