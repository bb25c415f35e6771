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
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
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
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
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
		TLS:        &store.TLSFiles{CA: filepath.Join(dir, pki.CACert), Cert: filepath.Join(dir, pki.ServerCert), Key: filepath.Join(dir, pki.ServerKey), CRL: crl},
		Distrusted: pki.NewRevocationFile(crl, ca.Cert).Distrusted})
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
	if _, err := held.Etcd().Get(ctx, "/quiet"); err != nil {
		t.Fatal(err)
	}
	watch := held.Etcd().Watch(ctx, "/quiet")
	b, _ := os.ReadFile(filepath.Join(dir, "gone.crt"))
	blk, _ := pem.Decode(b)
	gone, _ := x509.ParseCertificate(blk.Bytes)
	if err := ca.WriteCRL(crl, []*big.Int{gone.SerialNumber}); err != nil {
		t.Fatal(err)
	}
	if err := open("gone.crt", "gone.key"); err == nil {
		t.Fatal("a revoked certificate was admitted")
	}
	if _, err := held.Etcd().Get(ctx, "/quiet"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a connection made before the revocation is still served: %v", err)
	}
	// The store says so in its own terms, naming the refused certificate
	// (a removed host's agent stops on it).
	if _, _, err := held.HostVMs(ctx, "gone"); !errors.Is(err, errdefs.ErrUnauthenticated) || !strings.Contains(err.Error(), "(serial "+pki.SerialHex(gone)+")") {
		t.Fatalf("the store reports a revoked caller as %v, want unauthenticated naming serial %s", err, pki.SerialHex(gone))
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
	if err := ignoreRec(st.ConsumeToken(ctx, "aaaa", "wrong", false, match)); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("wrong secret: %v", err)
	}
	if err := ignoreRec(st.ConsumeToken(ctx, "aaaa", "s3cret", false, match)); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	if err := ignoreRec(st.ConsumeToken(ctx, "aaaa", "s3cret", false, match)); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("used twice: %v", err)
	}
	if err := st.PutToken(ctx, "bbbb", store.TokenRecord{Hash: "s3cret", Expires: time.Now().Add(-time.Second)}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := ignoreRec(st.ConsumeToken(ctx, "bbbb", "s3cret", false, match)); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("expired: %v", err)
	}
	if err := ignoreRec(st.ConsumeToken(ctx, "cccc", "s3cret", false, match)); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("unknown: %v", err)
	}
	// An etcd server needs a server token; a host token it presents is
	// refused and stays usable by a host.
	if err := st.PutToken(ctx, "dddd", store.TokenRecord{Hash: "s3cret", Expires: time.Now().Add(time.Minute)}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := ignoreRec(st.ConsumeToken(ctx, "dddd", "s3cret", true, match)); !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Fatalf("host token for a server: %v", err)
	}
	if rec, err := st.ConsumeToken(ctx, "dddd", "s3cret", false, match); err != nil || rec.Server {
		t.Fatalf("host token after the refusal: %+v %v", rec, err)
	}
	if err := st.PutToken(ctx, "eeee", store.TokenRecord{Hash: "s3cret", Expires: time.Now().Add(time.Minute), Server: true}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if rec, err := st.ConsumeToken(ctx, "eeee", "s3cret", true, match); err != nil || !rec.Server {
		t.Fatalf("server token: %+v %v", rec, err)
	}
}

// Two revocations made from the same state: the second is refused, so that
// no revocation list lacks the other's certificate; a guarded write is
// refused once its key changed.
func TestRevokeConflicts(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	known, based, err := st.RevokedState(ctx)
	if err != nil || len(known) != 0 || based != 0 {
		t.Fatalf("fresh store: %v %d %v", known, based, err)
	}
	change := func(serial string, based int64) store.RevocationChange {
		return store.RevocationChange{Revs: []api.Revocation{{Serial: serial, Holder: "node " + serial}},
			CRL: []byte("crl " + serial), MigrationCRL: []byte("mcrl " + serial), Based: based}
	}
	if err := st.Revoke(ctx, change("aa", based)); err != nil {
		t.Fatal(err)
	}
	if err := st.Revoke(ctx, change("bb", based)); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("a revocation from an old state: %v, want a conflict", err)
	}
	known, based2, err := st.RevokedState(ctx)
	if err != nil || len(known) != 1 || known[0].Serial != "aa" || known[0].Holder != "node aa" || based2 <= based {
		t.Fatalf("after one revocation: %v %d %v", known, based2, err)
	}
	if err := st.Revoke(ctx, change("bb", based2)); err != nil {
		t.Fatalf("made again from the new state: %v", err)
	}
	crl, mcrl, err := st.CRLs(ctx)
	if err != nil || string(crl) != "crl bb" || string(mcrl) != "mcrl bb" {
		t.Fatalf("lists %q %q %v", crl, mcrl, err)
	}

	if err := st.CreateUser(ctx, api.User{Name: "alice", Role: "viewer", Serial: "01"}); err != nil {
		t.Fatal(err)
	}
	_, urev, err := st.GetUserRevision(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	_, based3, _ := st.RevokedState(ctx)
	put := func(serial string, rev int64) *store.GuardedPut {
		return &store.GuardedPut{Key: store.UserPrefix + "alice", Value: store.UserRecord(api.User{Name: "alice", Role: "viewer", Serial: serial}), PutIfRevision: rev}
	}
	c := change("01", based3)
	c.Put = put("02", urev)
	if err := st.Revoke(ctx, c); err != nil {
		t.Fatal(err)
	}
	_, based4, _ := st.RevokedState(ctx)
	c = change("02", based4)
	c.Put = put("03", urev) // read before the first renewal
	if err := st.Revoke(ctx, c); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("a guarded write over a changed key: %v, want a conflict", err)
	}
	if u, err := st.GetUser(ctx, "alice"); err != nil || u.Serial != "02" {
		t.Fatalf("alice: %+v %v", u, err)
	}
}

func ignoreRec(_ store.TokenRecord, err error) error { return err }
