package store_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/store/storetest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An embedded etcd with TLS admits clients with a certificate of its CA,
// and refuses plaintext, no certificate, another CA, and a revoked one —
// also on a connection made before the revocation, and its open watch.
func TestEmbeddedTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.EnsureCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.EnsureLeaf(dir, pki.ServerCert, pki.ServerKey, "n1", pki.RoleNode, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if err := ca.Issue(dir, "gone.crt", "gone.key", "gone", pki.RoleNode, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	crl := filepath.Join(dir, pki.CRLFile)
	if err := ca.WriteCRL(crl, nil); err != nil {
		t.Fatal(err)
	}
	ports := storetest.Ports(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{Dir: t.TempDir(), Name: "t",
		ClientURL: fmt.Sprintf("https://127.0.0.1:%d", ports[0]), PeerURL: fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
		TLS:     &store.TLSFiles{CA: filepath.Join(dir, pki.CACert), Cert: filepath.Join(dir, pki.ServerCert), Key: filepath.Join(dir, pki.ServerKey), CRL: crl},
		Revoked: pki.NewRevocationFile(crl, ca.Cert).Revoked})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	eps := []string{e.ClientURL()}
	open := func(certFile, keyFile string) error {
		cfg, err := pki.ClientTLS(dir, certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		octx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		st, err := store.Open(octx, eps, cfg)
		if err == nil {
			st.Close()
		}
		return err
	}
	if err := open(pki.ServerCert, pki.ServerKey); err != nil {
		t.Fatalf("a certificate of the CA was refused: %v", err)
	}
	if err := open("gone.crt", "gone.key"); err != nil {
		t.Fatalf("a certificate not yet revoked was refused: %v", err)
	}
	// A connection made before the revocation, with a watch on keys
	// nobody writes.
	gcfg, err := pki.ClientTLS(dir, "gone.crt", "gone.key")
	if err != nil {
		t.Fatal(err)
	}
	held, err := store.Open(ctx, eps, gcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := held.Client().Get(ctx, "/quiet"); err != nil {
		t.Fatal(err)
	}
	watch := held.Client().Watch(ctx, "/quiet")
	b, _ := os.ReadFile(filepath.Join(dir, "gone.crt"))
	blk, _ := pem.Decode(b)
	gone, _ := x509.ParseCertificate(blk.Bytes)
	if err := ca.WriteCRL(crl, []*big.Int{gone.SerialNumber}); err != nil {
		t.Fatal(err)
	}
	if err := open("gone.crt", "gone.key"); err == nil {
		t.Fatal("a revoked certificate was admitted")
	}
	if _, err := held.Client().Get(ctx, "/quiet"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a connection made before the revocation is still served: %v", err)
	}
	select {
	case wr, ok := <-watch:
		if ok && wr.Err() == nil {
			t.Fatalf("the revoked caller's watch delivered %+v", wr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked caller's watch is still open")
	}
	if err := open(pki.ServerCert, pki.ServerKey); err != nil {
		t.Fatalf("after a revocation, a good certificate was refused: %v", err)
	}
	octx, cancel2 := context.WithTimeout(ctx, 3*time.Second)
	defer cancel2()
	if st, err := store.Open(octx, []string{fmt.Sprintf("http://127.0.0.1:%d", ports[0])}, nil); err == nil {
		st.Close()
		t.Fatal("a plaintext client was served")
	}
}

// A join token admits once, only with its secret, and not after it expired.
func TestConsumeToken(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	match := func(secret, hash string) bool { return secret == hash } // the hash is pki's business
	if err := st.PutToken(ctx, "aaaa", store.TokenRecord{Hash: "s3cret", Expires: time.Now().Add(time.Minute)}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.ConsumeToken(ctx, "aaaa", "wrong", match); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("wrong secret: %v", err)
	}
	if err := st.ConsumeToken(ctx, "aaaa", "s3cret", match); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	if err := st.ConsumeToken(ctx, "aaaa", "s3cret", match); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("used twice: %v", err)
	}
	if err := st.PutToken(ctx, "bbbb", store.TokenRecord{Hash: "s3cret", Expires: time.Now().Add(-time.Second)}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.ConsumeToken(ctx, "bbbb", "s3cret", match); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("expired: %v", err)
	}
	if err := st.ConsumeToken(ctx, "cccc", "s3cret", match); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("unknown: %v", err)
	}
}
