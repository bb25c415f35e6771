package pki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"time"
)

// CRLFile is the cluster CA's revocation list (DER, as etcd wants it)
// inside a PKI directory; etcd reads it on every new connection.
const CRLFile = "crl.der"

// RevokedCert is one entry of a revocation list.
type RevokedCert struct {
	Serial *big.Int
	Reason int // a Reason constant; 0: unspecified (treated as distrust)
}

// CRL is a revocation list (DER) of serials signed by ca, without reasons.
func (ca *CA) CRL(serials []*big.Int) ([]byte, error) {
	var entries []RevokedCert
	for _, s := range serials {
		entries = append(entries, RevokedCert{Serial: s})
	}
	return ca.CRLWithReasons(entries)
}

// CRLWithReasons is a revocation list (DER) signed by ca whose entries
// carry their reasons.
func (ca *CA) CRLWithReasons(revoked []RevokedCert) ([]byte, error) {
	if ca.Key == nil {
		return nil, errors.New("pki: this host holds no CA key and cannot sign a revocation list")
	}
	now := time.Now()
	var entries []x509.RevocationListEntry
	for _, r := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: r.Serial, RevocationTime: now, ReasonCode: r.Reason})
	}
	return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(now.UnixNano()),
		ThisUpdate:                now.Add(-time.Minute),
		NextUpdate:                now.AddDate(1, 0, 0),
		RevokedCertificateEntries: entries,
	}, ca.Cert, ca.Key)
}

// CRLPEM is a DER revocation list in PEM, as QEMU reads it (ca-crl.pem).
func CRLPEM(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}) }

// WriteCRL writes a revocation list of serials signed by ca to path (DER).
func (ca *CA) WriteCRL(path string, serials []*big.Int) error {
	der, err := ca.CRL(serials)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, der)
}

// Reasons for a revocation, as X.509 revocation lists carry them (RFC 5280).
const (
	// ReasonSuperseded: the certificate was replaced by a renewal; its
	// holder is still trusted, with the new one.
	ReasonSuperseded = 4
	// ReasonCessationOfOperation: the holder left (a host removed, a user
	// removed) and is no longer trusted at all.
	ReasonCessationOfOperation = 5
)
