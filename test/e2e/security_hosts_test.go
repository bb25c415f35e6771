package e2e

// Hosts under the zero-trust PKI: a removed host is shut out, joining
// takes a token, certificates renew.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/testbed"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// checkRemovedHost drains and removes the one host that is not an etcd
// member, and shows its identity refused by the API, by etcd and in the
// migration revocation list every host holds.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func checkRemovedHost(t *testing.T, b *testbed.Bed, admin *client.Client) {
	ctx := ctxT(t, 3*time.Minute)
	hi := len(b.Hosts) - 1
	h := b.Hosts[hi]
	pd := filepath.Join(h.DataDir, "pki")
	read := func(f string) []byte {
		data, err := os.ReadFile(filepath.Join(pd, f))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	asHost := clientFor(t, b, read(pki.ServerCert), read(pki.ServerKey), read(pki.CACert))
	etcdClientAsHost := func() *clientv3.Client {
		cfg, err := pki.ClientTLS(pd, pki.ServerCert, pki.ServerKey)
		if err != nil {
			t.Fatal(err)
		}
		dial := testbed.DialIn(b.Hosts[0].NS)
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + b.Hosts[0].Addr + ":2379"}, TLS: cfg,
			DialTimeout: 3 * time.Second, Logger: zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return dial(ctx, "tcp", addr)
			})}})
		if err != nil {
			t.Fatal(err)
		}
		return cli
	}
	get := func(cli *clientv3.Client) error {
		gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := cli.Get(gctx, "/ferry/v1/ping")
		return err
	}
	etcdAsHost := func() error {
		cli := etcdClientAsHost()
		defer cli.Close()
		return get(cli)
	}
	// A connection made before the removal, with a watch open on it: etcd
	// checks its revocation list only on new connections.
	held := etcdClientAsHost()
	defer held.Close()
	if err := get(held); err != nil {
		t.Fatalf("etcd refuses %s's certificate before its removal: %v", h.Name, err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch := held.Watch(wctx, "/ferry/v1/", clientv3.WithPrefix())
	if _, err := asHost.ListNodes(ctx); err != nil {
		t.Fatalf("%s's certificate is refused before its removal: %v", h.Name, err)
	}
	if err := etcdAsHost(); err != nil {
		t.Fatalf("etcd refuses %s's certificate before its removal: %v", h.Name, err)
	}
	// Removing a host that still holds guests is refused; drained, it goes.
	if _, err := admin.DrainNode(ctx, h.Name); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		vms, err := admin.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		here := 0
		for _, vm := range vms {
			if vm.Node == h.Name {
				here++
			}
		}
		if here == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%s still holds %d guests after its drain", h.Name, here)
		}
	}
	nodes, err := admin.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var serials []string
	for _, n := range nodes {
		if n.Name == h.Name {
			serials = n.CertSerials
		}
	}
	if len(serials) != 2 {
		t.Fatalf("%s reports certificate serials %v, want its cluster and migration certificates", h.Name, serials)
	}
	if err := admin.RemoveNode(ctx, h.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := asHost.ListNodes(ctx); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("the removed host's certificate still calls the API: %v", err)
	}
	// The etcd members write the cluster's revocation list where etcd reads it.
	crlPath := filepath.Join(b.Hosts[0].DataDir, "pki", pki.CRLFile)
	for end := time.Now().Add(30 * time.Second); !slices.Contains(crlSerials(crlPath), serials[0]); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s's etcd revocation list %v lacks %s", b.Hosts[0].Name, crlSerials(crlPath), serials[0])
		}
	}
	if err := etcdAsHost(); err == nil {
		t.Error("etcd still admits the removed host's certificate on a new connection")
	} else {
		t.Logf("etcd refuses the removed host: %v", err)
	}
	if err := get(held); err == nil {
		t.Error("etcd still serves the removed host on its connection made before the removal")
	} else {
		t.Logf("etcd refuses the removed host's open connection: %v", err)
	}
	// Its open watch ends at its next event (the cluster writes heartbeats).
	watchEnded := false
	for end := time.After(30 * time.Second); !watchEnded; {
		select {
		case wr, ok := <-watch:
			if !ok || wr.Err() != nil {
				t.Logf("the removed host's watch ended: %v", wr.Err())
				watchEnded = true
			}
		case <-end:
			t.Fatal("the removed host's watch, opened before its removal, still delivers events")
		}
	}
	// Every remaining host holds the migration revocation list with the
	// removed host's migration certificate (QEMU loads it as ca-crl.pem).
	for i := 0; i < hi; i++ {
		path := filepath.Join(b.Hosts[i].DataDir, "pki", pki.MigrationDir, "ca-crl.pem")
		var got []string
		for end := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			got = crlSerials(path)
			if slices.Contains(got, serials[1]) || time.Now().After(end) {
				break
			}
		}
		if !slices.Contains(got, serials[1]) {
			t.Errorf("%s's migration CRL %v lacks the removed host's migration certificate %s", b.Hosts[i].Name, got, serials[1])
		}
	}
	if _, err := admin.MigrateVM(ctx, "sec", api.MigrateRequest{To: h.Name}); err == nil {
		t.Error("a migration to the removed host was accepted")
	}
	// Its agent learns it was removed and stops.
	for end := time.Now().Add(30 * time.Second); syscall.Kill(h.PID, 0) == nil; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the removed host's agent (pid %d) is still running", h.PID)
		}
	}
}

// crlSerials reads a revocation list's serials (hex), PEM or DER; nil if
// unreadable.
func crlSerials(path string) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	if blk, _ := pem.Decode(data); blk != nil {
		data = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, e.SerialNumber.Text(16))
	}
	return out
}

// checkJoin looks at a host that joined with a token (the testbed's last
// host) and at the join endpoint itself, called without a certificate.
func checkJoin(t *testing.T, b *testbed.Bed, admin *client.Client) {
	ctx := ctxT(t, time.Minute)
	h := b.Hosts[len(b.Hosts)-1]
	pd := filepath.Join(h.DataDir, "pki")
	for _, f := range []string{pki.CAKey, pki.MigrationCAKey, pki.AdminCert} {
		if _, err := os.Stat(filepath.Join(pd, f)); err == nil {
			t.Errorf("%s joined with a token but holds %s", h.Name, f)
		}
	}
	for _, f := range []string{pki.ServerCert, filepath.Join(pki.MigrationDir, "server-cert.pem")} {
		if _, err := os.Stat(filepath.Join(pd, f)); err != nil {
			t.Errorf("%s has no %s: %v", h.Name, f, err)
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(pd, pki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	anon := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: testbed.DialIn(b.Hosts[0].NS),
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}, DisableKeepAlives: true}}
	base := "https://" + b.Hosts[0].Addr + ":7443"
	join := func(token, node string) (int, string) {
		_, csr, _ := pki.NewKeyAndCSR(node)
		_, mcsr, _ := pki.NewKeyAndCSR(node)
		body, _ := json.Marshal(api.JoinRequest{Token: token, Node: node, Addresses: []string{"198.18.0.99"}, CSR: string(csr), MigrationCSR: string(mcsr)})
		resp, err := anon.Post(base+"/v1/join", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	if resp, err := anon.Get(base + "/v1/nodes"); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a certificate GET /v1/nodes answered %s", resp.Status)
	}
	tok, err := admin.CreateToken(ctx, api.TokenCreateRequest{TTL: "5m"})
	if err != nil {
		t.Fatal(err)
	}
	// Another host's name is refused (and does not use the token up).
	if code, body := join(tok.Token, b.Hosts[0].Name); code != http.StatusConflict {
		t.Errorf("joining as existing host %s: %d %s", b.Hosts[0].Name, code, body)
	}
	if code, body := join(tok.Token, "newhost"); code != http.StatusOK {
		t.Fatalf("a valid token was refused: %d %s", code, body)
	}
	if code, body := join(tok.Token, "newhost2"); code != http.StatusUnauthorized {
		t.Errorf("a used token admitted a second host: %d %s", code, body)
	}
	bad, _ := pki.ParseToken(tok.Token)
	bad.Secret = strings.Repeat("0", 32)
	if code, body := join(bad.String(), "newhost3"); code != http.StatusUnauthorized {
		t.Errorf("a token with a wrong secret: %d %s", code, body)
	}
	if code, body := join("ferry1.nonsense", "newhost4"); code != http.StatusUnauthorized {
		t.Errorf("a malformed token: %d %s", code, body)
	}
}

// checkRenewal makes the token-joined host renew its certificates while a
// guest runs on it (its agent told to renew every second), and shows the
// guest untouched, the host's API serving the new certificate without a
// restart, and the replaced certificate refused.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func checkRenewal(t *testing.T, b *testbed.Bed, admin *client.Client) {
	ctx := ctxT(t, 3*time.Minute)
	hi := len(b.Hosts) - 1
	h := b.Hosts[hi]
	pd := filepath.Join(h.DataDir, "pki")
	vm, err := admin.GetVM(ctx, "sec")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Node != h.Name {
		m, err := admin.MigrateVM(ctx, "sec", api.MigrateRequest{To: h.Name})
		if err != nil {
			t.Fatal(err)
		}
		if m = waitMigEnd(t, admin, "sec", m.ID); m.Phase != api.MigCompleted {
			t.Fatalf("moving sec to %s: %s %s", h.Name, m.Phase, m.Error)
		}
		vm = waitVM(t, admin, "sec", time.Minute, "running and healthy on "+h.Name, func(v *api.VM) bool {
			return healthyRunning(v) && v.Status.Node == h.Name
		})
	}
	boot := vm.Status.Guest.BootID
	oldCert, _ := os.ReadFile(filepath.Join(pd, pki.ServerCert))
	oldKey, _ := os.ReadFile(filepath.Join(pd, pki.ServerKey))
	old, err := pki.Serials(filepath.Join(pd, pki.ServerCert))
	if err != nil {
		t.Fatal(err)
	}
	restart := func(extra ...string) {
		t.Helper()
		if err := b.StopAgent(hi, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		h.ExtraArgs = extra
		if err := b.StartAgent(ctx, hi); err != nil {
			t.Fatal(err)
		}
	}
	// Renew as soon as a check finds less than ~1 year + 1 day left: at once.
	restart("--cert-check", "1s", "--cert-renew-before", "8785h")
	restored := false
	defer func() { // back to the defaults, also when the test fails
		if !restored {
			restart()
		}
	}()
	var now []string
	for end := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		nodes, err := admin.ListNodes(ctx)
		if err == nil {
			for _, n := range nodes {
				if n.Name == h.Name && len(n.CertSerials) == 2 && n.CertSerials[0] != old[0] {
					now = n.CertSerials
				}
			}
		}
		if now != nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%s never reported renewed certificates", h.Name)
		}
	}
	// The host's API, still the same process, serves a renewed certificate.
	cfg, err := pki.ClientTLS(filepath.Join(b.Dir, "pki"), pki.AdminCert, pki.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := testbed.DialIn(b.Hosts[0].NS)(ctx, "tcp", h.Addr+":7443")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = h.Addr
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	if served := pki.SerialHex(tc.ConnectionState().PeerCertificates[0]); served == old[0] {
		t.Errorf("%s's API still serves its replaced certificate", h.Name)
	}
	tc.Close()
	restart() // back to the defaults
	restored = true
	if err := b.WaitNodes(ctx, len(b.Hosts)); err != nil {
		t.Fatal(err)
	}
	if _, err := clientFor(t, b, oldCert, oldKey, readFile(t, filepath.Join(pd, pki.CACert))).ListNodes(ctx); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("the replaced certificate still calls the API: %v", err)
	}
	vm = waitVM(t, admin, "sec", time.Minute, "running and healthy", healthyRunning)
	if vm.Status.Guest.BootID != boot || vm.Status.Node != h.Name {
		t.Errorf("the guest did not stay put through the renewal: boot %s -> %s, on %s", boot, vm.Status.Guest.BootID, vm.Status.Node)
	}
	t.Logf("%s renewed: %v -> %v; guest %s kept boot %s", h.Name, old[0], now, vm.Spec.Name, boot[:8])
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }
