package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// A join token is "ferry1.ID.SECRET.CAFP": ID names the token's record,
// SECRET proves the holder got it from an admin (the cluster keeps only
// its hash), CAFP is the SHA-256 of the cluster CA certificate, with which
// the joining host checks that it talks to the right cluster before it
// sends anything.
type Token struct {
	ID, Secret, CAFingerprint string
}

const tokenPrefix = "ferry1"

// NewToken makes a token for the cluster whose CA is ca.
func NewToken(ca *x509.Certificate) (Token, error) {
	id, sec := make([]byte, 4), make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return Token{}, err
	}
	if _, err := rand.Read(sec); err != nil {
		return Token{}, err
	}
	return Token{ID: hex.EncodeToString(id), Secret: hex.EncodeToString(sec), CAFingerprint: Fingerprint(ca)}, nil
}

// String is the token as an operator passes it around.
func (t Token) String() string {
	return strings.Join([]string{tokenPrefix, t.ID, t.Secret, t.CAFingerprint}, ".")
}

// ParseToken checks a token's shape.
func ParseToken(s string) (Token, error) {
	p := strings.Split(strings.TrimSpace(s), ".")
	if len(p) != 4 || p[0] != tokenPrefix || !isHex(p[1], 8) || !isHex(p[2], 32) || !isHex(p[3], 64) {
		return Token{}, errors.New("not a Ferry join token (ferry1.ID.SECRET.CA-FINGERPRINT; make one with `ferry cluster token create`)")
	}
	return Token{ID: p[1], Secret: p[2], CAFingerprint: p[3]}, nil
}

// SecretHash is what the cluster stores instead of the secret.
func SecretHash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// SecretMatches compares a secret with a stored hash in constant time.
func SecretMatches(secret, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(SecretHash(secret)), []byte(hash)) == 1
}

// Fingerprint is the SHA-256 of a certificate, hex.
func Fingerprint(c *x509.Certificate) string {
	h := sha256.Sum256(c.Raw)
	return hex.EncodeToString(h[:])
}

// CAFromPEM parses a CA certificate and checks it has the fingerprint fp.
func CAFromPEM(pemBytes []byte, fp string) (*x509.Certificate, error) {
	pool, err := parseCert(pemBytes)
	if err != nil {
		return nil, err
	}
	if got := Fingerprint(pool); subtle.ConstantTimeCompare([]byte(got), []byte(fp)) != 1 {
		return nil, fmt.Errorf("the server's CA has fingerprint %s, the token says %s: not the cluster the token is for", got, fp)
	}
	if !pool.IsCA {
		return nil, errors.New("the server's CA certificate is not a CA")
	}
	return pool, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
