package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"time"
)

// EnsureMigrationCA loads the migration CA from dir, creating it if there is none.
func EnsureMigrationCA(dir string) (*CA, error) {
	return ensureCA(dir, MigrationCACert, MigrationCAKey, "ferry migration CA")
}

// MigrationDN is the distinguished name QEMU (GnuTLS) reports for node's
// migration certificate: what a target's authorization rule matches.
func MigrationDN(node string) string { return "O=" + MigrationOrg + ",CN=" + node }

// IssueMigration writes node's migration credentials into
// dir/MigrationDir for QEMU: one certificate, usable as TLS server (the
// target, named by node and hosts) and as client (the source), with the
// migration CA beside it.
func (ca *CA) IssueMigration(dir, node string, hosts []string, validity time.Duration) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := migrationTemplate(node, hosts, validity)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return WriteMigrationCreds(dir, pemCert(der), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), ca.PEM)
}

// EnsureMigration issues node's migration credentials unless valid ones for
// at least another 30 days exist.
func (ca *CA) EnsureMigration(dir, node string, hosts []string) error {
	md := filepath.Join(dir, MigrationDir)
	if c, err := tls.LoadX509KeyPair(filepath.Join(md, "server-cert.pem"), filepath.Join(md, "server-key.pem")); err == nil {
		if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil && time.Until(leaf.NotAfter) > 30*24*time.Hour &&
			sameHosts(leaf, hosts) && leaf.CheckSignatureFrom(ca.Cert) == nil {
			return writeDHParams(md) // credentials made before the file existed
		}
	}
	return ca.IssueMigration(dir, node, hosts, 365*24*time.Hour)
}

// SignMigrationCSR issues a migration certificate (pki.IssueMigration's
// shape) for a joining host's key.
func (ca *CA) SignMigrationCSR(csrPEM []byte, node string, hosts []string, validity time.Duration) ([]byte, error) {
	if ca.Key == nil {
		return nil, errors.New("pki: this host holds no migration CA key")
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	tmpl := migrationTemplate(node, hosts, validity)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, err
	}
	return pemCert(der), nil
}

// WriteMigrationCreds writes a migration certificate and its key in QEMU's
// layout into dir/MigrationDir, with the migration CA.
func WriteMigrationCreds(dir string, certPEM, keyPEM, caPEM []byte) error {
	md := filepath.Join(dir, MigrationDir)
	if err := os.MkdirAll(md, 0o700); err != nil {
		return err
	}
	for _, side := range []string{"server", "client"} {
		if err := os.WriteFile(filepath.Join(md, side+"-key.pem"), keyPEM, 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(md, side+"-cert.pem"), certPEM, 0o644); err != nil {
			return err
		}
	}
	if err := writeDHParams(md); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(md, "ca-cert.pem"), caPEM, 0o644)
}

// writeDHParams gives QEMU's server credentials fixed Diffie-Hellman
// parameters. Without dh-params.pem QEMU generates 2048-bit parameters each
// time a migration target adds its tls-creds-x509 object: about 200 ms of
// CPU on every incoming migration (measured with QEMU 7.2, GnuTLS 3.7).
// TLS 1.3, which the migration stream uses, negotiates its groups itself;
// the standard group only serves a TLS 1.2 peer.
func writeDHParams(md string) error {
	return os.WriteFile(filepath.Join(md, "dh-params.pem"), []byte(ffdhe2048), 0o644)
}

func migrationTemplate(node string, hosts []string, validity time.Duration) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: node, Organization: []string{MigrationOrg}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		// GnuTLS, for QEMU, wants key encipherment on a server certificate.
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{node},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != node {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return tmpl
}

// Files of the migration PKI. Its CA is separate from the cluster CA: a
// cluster certificate never authenticates a migration stream, and a
// migration certificate never calls the API.
const (
	MigrationCACert = "migration-ca.crt"
	MigrationCAKey  = "migration-ca.key"
	// MigrationDir (inside a PKI directory) holds this host's migration
	// credentials in the layout QEMU's tls-creds-x509 reads.
	MigrationDir = "migration"
	// MigrationOrg is the Organization of every migration certificate.
	MigrationOrg = "ferry-migration"
)
