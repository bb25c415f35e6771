package e2e

import (
	"bufio"
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
	"os/exec"
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
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/testbed"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// TestSecurity runs one 4-host testbed (three etcd members) with a guest
// and checks what the zero-trust issue asks of a running cluster.
func TestSecurity(t *testing.T) {
	b, cl := newBed(t, 4)
	ctx := ctxT(t, 5*time.Minute)
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "sec"}); err != nil {
		t.Fatal(err)
	}
	waitVM(t, cl, "sec", 3*time.Minute, "running and healthy", healthyRunning)

	t.Run("no port accepts plaintext", func(t *testing.T) {
		// A migration's target listens only briefly: a failpoint holds it
		// listening so that its port — the target agent's end of the
		// migration tunnel (the target QEMU listens on a unix socket) — is
		// among those scanned, and the migration must still complete after
		// the scan's attempts.
		vm, err := cl.GetVM(ctx, "sec")
		if err != nil {
			t.Fatal(err)
		}
		target := b.Hosts[(hostIndex(b, vm.Node)+1)%len(b.Hosts)]
		fp := filepath.Join(target.DataDir, "failpoints")
		if err := os.WriteFile(fp, []byte(failpoint.TargetListening+" 4s\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(fp)
		m, err := cl.MigrateVM(ctx, "sec", api.MigrateRequest{To: target.Name})
		if err != nil {
			t.Fatal(err)
		}
		migPort := ""
		for end := time.Now().Add(time.Minute); migPort == "" && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			for _, l := range listeners(t, b) {
				_, port, _ := net.SplitHostPort(l.addr)
				if l.host == target.Name && !slices.Contains(testbed.ControlPorts, atoi(port)) &&
					(strings.Contains(l.proc, "ferry") || strings.Contains(l.proc, "qemu")) {
					migPort = l.addr + " (" + l.proc + ")"
				}
			}
		}
		if migPort == "" {
			t.Fatal("the migration's target never listened")
		}
		t.Logf("the migration target listens on %s", migPort)
		checkNoPlaintext(t, b)
		if m = waitMigEnd(t, cl, "sec", m.ID); m.Phase != api.MigCompleted {
			t.Fatalf("the migration did not survive the scan: %s: %s", m.Phase, m.Error)
		}
	})

	t.Run("join tokens", func(t *testing.T) { checkJoin(t, b, cl) })

	t.Run("roles", func(t *testing.T) { checkRoles(t, b, cl) })

	t.Run("certificates renew without restarts", func(t *testing.T) { checkRenewal(t, b, cl) })

	t.Run("users renew their certificates", func(t *testing.T) { checkUserRenewal(t, b) })

	t.Run("user certificates do not open etcd", func(t *testing.T) { checkUserNotEtcd(t, b, cl) })

	t.Run("removed host is refused everywhere", func(t *testing.T) { checkRemovedHost(t, b, cl) })
}

// checkUserNotEtcd shows that an admin user's certificate, which the API
// obeys, opens neither etcd's client port nor its peer port: users come
// from the user CA, etcd trusts only the cluster CA of hosts. (Were it
// otherwise, any user could write the cluster's state past its role.)
func checkUserNotEtcd(t *testing.T, b *testbed.Bed, admin *client.Client) {
	ctx := ctxT(t, time.Minute)
	key, csr, err := pki.NewKeyAndCSR("eve")
	if err != nil {
		t.Fatal(err)
	}
	u, err := admin.CreateUser(ctx, api.UserCreateRequest{Name: "eve", Role: pki.RoleAdmin, CSR: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.DeleteUser(context.Background(), "eve")
	if _, err := clientFor(t, b, []byte(u.Certificate), key, []byte(u.CA)).ListNodes(ctx); err != nil {
		t.Fatalf("the user's certificate does not work with the API: %v", err)
	}
	pair, err := tls.X509KeyPair([]byte(u.Certificate), key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(u.CA))
	// Presented whatever CAs the server names as acceptable (with
	// Certificates, Go would send nothing to a server that names another).
	cfg := &tls.Config{GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil },
		RootCAs: pool, MinVersion: tls.VersionTLS12}
	h := b.Hosts[0]
	dial := testbed.DialIn(h.NS)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + h.Addr + ":2379"}, TLS: cfg,
		DialTimeout: 3 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		})}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := cli.Put(gctx, "/ferry/v1/eve-was-here", "x"); err == nil {
		t.Fatal("etcd's client port took a write from a user's certificate")
	} else {
		t.Logf("etcd client port refuses the user: %v", err)
	}
	// Both ports, by hand: the server must refuse the user's certificate
	// with a TLS alert; the host's own certificate, the control, is served.
	handshake := func(port string, cfg *tls.Config) error {
		raw, err := dial(ctx, "tcp", net.JoinHostPort(h.Addr, port))
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, cfg)
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if err := c.Handshake(); err != nil {
			return err
		}
		// TLS 1.3 reports a refused client certificate on the first read; a
		// server that accepted it waits for the client to speak.
		c.SetDeadline(time.Now().Add(time.Second))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	}
	hostCfg, err := pki.ClientTLS(filepath.Join(h.DataDir, "pki"), pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	hostCfg.ServerName = h.Addr
	cfg.ServerName = h.Addr
	for _, port := range []string{"2379", "2380"} {
		if err := handshake(port, hostCfg.Clone()); err != nil {
			t.Fatalf("control: etcd port %s refuses the host's own certificate: %v", port, err)
		}
		err := handshake(port, cfg.Clone())
		if err == nil || !strings.Contains(err.Error(), "remote error: tls: ") {
			t.Errorf("etcd port %s did not refuse a user's certificate with a TLS alert: %v", port, err)
		} else {
			t.Logf("etcd port %s refuses the user's certificate: %v", port, err)
		}
	}
}

// checkUserRenewal drives the CLI in host 0's namespace: an admin makes a
// user, the user renews its certificate with its own credentials, the new
// one works with the same role, and the old one is refused, for calls and
// for a second renewal.
func checkUserRenewal(t *testing.T, b *testbed.Bed) {
	h := b.Hosts[0]
	ferry := func(args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, ferryBin}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	dir := filepath.Join(t.TempDir(), "rita")
	if out, err := ferry("--data-dir", h.DataDir, "user", "create", "rita", "--role", "operator", "--out", dir); err != nil {
		t.Fatalf("user create: %v\n%s", err, out)
	}
	old := t.TempDir()
	for _, f := range []string{client.CredCert, client.CredKey, client.CredCA, client.CredServer} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(old, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	before, err := pki.LoadCert(filepath.Join(dir, client.CredCert))
	if err != nil {
		t.Fatal(err)
	}
	out, err := ferry("--credentials", dir, "user", "renew")
	if err != nil {
		t.Fatalf("user renew: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(out))
	after, err := pki.LoadCert(filepath.Join(dir, client.CredCert))
	if err != nil {
		t.Fatal(err)
	}
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 || after.Subject.CommonName != "rita" ||
		!slices.Equal(after.Subject.Organization, []string{pki.RoleOperator}) || after.NotAfter.Before(before.NotAfter) {
		t.Fatalf("renewed certificate: serial %s (was %s), subject %v, until %v (was %v)",
			pki.SerialHex(after), pki.SerialHex(before), after.Subject, after.NotAfter, before.NotAfter)
	}
	if out, err := ferry("--credentials", dir, "vm", "list"); err != nil || !strings.Contains(out, "sec") {
		t.Errorf("the renewed certificate cannot list VMs: %v\n%s", err, out)
	}
	// The operator role came along: still no user management.
	if out, err := ferry("--credentials", dir, "user", "list"); err == nil || !strings.Contains(out, "needs admin") {
		t.Errorf("the renewed operator may list users: %v\n%q", err, out)
	}
	if out, err := ferry("--credentials", old, "vm", "list"); err == nil || !strings.Contains(out, "revoked") {
		t.Errorf("the replaced certificate still calls the API: %v\n%s", err, out)
	}
	if out, err := ferry("--credentials", old, "user", "renew"); err == nil {
		t.Errorf("the replaced certificate was renewed again:\n%s", out)
	}
	// The testbed's administrator credentials belong to no user record.
	adm := t.TempDir()
	for from, to := range map[string]string{pki.AdminCert: client.CredCert, pki.AdminKey: client.CredKey, pki.CACert: client.CredCA} {
		data, err := os.ReadFile(filepath.Join(b.Dir, "pki", from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(adm, to), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(adm, client.CredServer), []byte("https://"+h.Addr+":7443\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := ferry("--credentials", adm, "user", "renew"); err == nil || !strings.Contains(out, "not user") {
		t.Errorf("renewed credentials of no user: %v\n%s", err, out)
	}
	if out, err := ferry("--data-dir", h.DataDir, "user", "remove", "rita"); err != nil {
		t.Fatalf("user remove: %v\n%s", err, out)
	}
}

// userClient makes a user with role through admin and returns a client
// that holds its certificate (and key made here), talking to host 0's API.
func userClient(t *testing.T, b *testbed.Bed, admin *client.Client, name, role string) *client.Client {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	key, csr, err := pki.NewKeyAndCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	u, err := admin.CreateUser(ctx, api.UserCreateRequest{Name: name, Role: role, CSR: string(csr)})
	if err != nil {
		t.Fatalf("creating user %s: %v", name, err)
	}
	if u.Role != role || u.Certificate == "" || u.CA == "" {
		t.Fatalf("user %s: %+v", name, u)
	}
	return clientFor(t, b, []byte(u.Certificate), key, []byte(u.CA))
}

// clientFor is an API client with the given identity, dialling from host 0.
func clientFor(t *testing.T, b *testbed.Bed, certPEM, keyPEM, caPEM []byte) *client.Client {
	t.Helper()
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	h := b.Hosts[0]
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13},
		DialContext: testbed.DialIn(h.NS), DisableKeepAlives: true}
	return client.NewWithTransport("https://"+h.Addr+":7443", tr)
}

// checkRoles shows what each role may and may not do.
func checkRoles(t *testing.T, b *testbed.Bed, admin *client.Client) {
	ctx := ctxT(t, 3*time.Minute)
	viewer := userClient(t, b, admin, "vera", pki.RoleViewer)
	operator := userClient(t, b, admin, "otto", pki.RoleOperator)
	admin2 := userClient(t, b, admin, "ada", pki.RoleAdmin)
	no := false
	type call struct {
		what string
		do   func(c *client.Client) error
	}
	reads := []call{
		{"list VMs", func(c *client.Client) error { _, err := c.ListVMs(ctx); return err }},
		{"get a VM", func(c *client.Client) error { _, err := c.GetVM(ctx, "sec"); return err }},
		{"list hosts", func(c *client.Client) error { _, err := c.ListNodes(ctx); return err }},
		{"read events", func(c *client.Client) error { _, err := c.Events(ctx, 10); return err }},
		{"read the security settings", func(c *client.Client) error { _, err := c.Security(ctx); return err }},
	}
	operate := []call{
		{"create a VM", func(c *client.Client) error {
			_, err := c.CreateVM(ctx, api.VMCreateRequest{Name: "roletest", Start: &no})
			return err
		}},
		{"delete a VM", func(c *client.Client) error { return c.DeleteVM(ctx, "roletest") }},
		{"read a console", func(c *client.Client) error {
			err := c.Console(ctx, "sec", 5, false, io.Discard)
			if errors.Is(err, errdefs.ErrUnavailable) {
				return nil // let through, but the guest runs on another host's API
			}
			return err
		}},
		{"undrain a host", func(c *client.Client) error { _, err := c.UndrainNode(ctx, b.Hosts[0].Name); return err }},
	}
	administer := []call{
		{"change the security settings", func(c *client.Client) error {
			_, err := c.SetSecurity(ctx, api.SecurityRequest{})
			return err
		}},
		{"pause HA", func(c *client.Client) error { _, err := c.SetHAPaused(ctx, false, ""); return err }},
		{"list users", func(c *client.Client) error { _, err := c.ListUsers(ctx); return err }},
		{"create a user", func(c *client.Client) error {
			_, csr, _ := pki.NewKeyAndCSR("mallory")
			_, err := c.CreateUser(ctx, api.UserCreateRequest{Name: "mallory", Role: pki.RoleAdmin, CSR: string(csr)})
			return err
		}},
		{"remove a host", func(c *client.Client) error { return c.RemoveNode(ctx, "nosuchhost") }},
	}
	may := func(who string, c *client.Client, calls []call) {
		for _, cl := range calls {
			if err := cl.do(c); err != nil {
				// Removing a host that does not exist answers not-found
				// once the role has been let through.
				if errors.Is(err, errdefs.ErrNotFound) {
					continue
				}
				t.Errorf("%s may %s, but: %v", who, cl.what, err)
			}
		}
	}
	mayNot := func(who string, c *client.Client, calls []call) {
		for _, cl := range calls {
			err := cl.do(c)
			if !errors.Is(err, errdefs.ErrPermissionDenied) {
				t.Errorf("%s may not %s, but got: %v", who, cl.what, err)
			}
		}
	}
	may("viewer", viewer, reads)
	mayNot("viewer", viewer, operate)
	mayNot("viewer", viewer, administer)
	may("operator", operator, reads)
	may("operator", operator, operate)
	mayNot("operator", operator, administer)
	may("admin", admin2, reads)
	may("admin", admin2, operate)
	may("admin", admin2, administer)
	// A removed user is refused from then on.
	if err := admin.DeleteUser(ctx, "vera"); err != nil {
		t.Fatal(err)
	}
	if _, err := viewer.ListVMs(ctx); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("a removed user could still read: %v", err)
	}
	if err := admin.DeleteUser(ctx, "mallory"); err != nil {
		t.Fatal(err)
	}
}

// checkRemovedHost drains and removes the one host that is not an etcd
// member, and shows its identity refused by the API, by etcd and in the
// migration revocation list every host holds.
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

// listener is one listening TCP socket of a testbed host.
type listener struct {
	host, ns, addr, proc string
}

// listeners finds every TCP socket listening in the hosts' namespaces (the
// namespace holds only what Ferry started there: agent, etcd, QEMUs).
func listeners(t *testing.T, b *testbed.Bed) []listener {
	t.Helper()
	var out []listener
	for _, h := range b.Hosts {
		raw, err := exec.Command("ip", "netns", "exec", h.NS, "ss", "-Htlnp").CombinedOutput()
		if err != nil {
			t.Fatalf("ss in %s: %v: %s", h.NS, err, raw)
		}
		sc := bufio.NewScanner(strings.NewReader(string(raw)))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 4 {
				continue
			}
			host, port, err := net.SplitHostPort(f[3])
			if err != nil {
				t.Fatalf("ss line %q: %v", sc.Text(), err)
			}
			switch host {
			case "*", "0.0.0.0", "[::]", "::":
				host = h.Addr
			}
			proc := ""
			if len(f) > 5 {
				proc = f[5]
			}
			out = append(out, listener{host: h.Name, ns: h.NS, addr: net.JoinHostPort(strings.Trim(host, "[]"), port), proc: proc})
		}
	}
	return out
}

// checkNoPlaintext connects to every listening port twice: in plaintext
// (an HTTP request) and with TLS but no client certificate. Each must
// refuse: no plaintext answer but a TLS server's complaint, no TLS session
// without a certificate of the cluster CA.
func checkNoPlaintext(t *testing.T, b *testbed.Bed) {
	ls := listeners(t, b)
	seen := map[string]bool{}
	for _, l := range ls {
		_, port, _ := net.SplitHostPort(l.addr)
		seen[port] = true
	}
	// The scan found what must be there (API, etcd client and peer).
	for _, p := range []string{"7443", "2379", "2380"} {
		if !seen[p] {
			t.Fatalf("no listener on port %s found; the scan is broken: %v", p, ls)
		}
	}
	for _, l := range ls {
		dial := testbed.DialIn(l.ns)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		// Plaintext.
		c, err := dial(ctx, "tcp", l.addr)
		if err != nil {
			cancel()
			t.Errorf("%s %s (%s): cannot connect: %v", l.host, l.addr, l.proc, err)
			continue
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "GET /v1/nodes HTTP/1.1\r\nHost: ferry\r\n\r\n")
		reply, _ := io.ReadAll(io.LimitReader(c, 4096))
		c.Close()
		s := string(reply)
		switch {
		case len(reply) == 0:
			t.Logf("%s %s (%s): plaintext: closed without a word", l.host, l.addr, l.proc)
		case strings.Contains(s, "Client sent an HTTP request to an HTTPS server"):
			t.Logf("%s %s (%s): plaintext: told to use TLS", l.host, l.addr, l.proc)
		case reply[0] == 0x15: // a TLS alert record
			t.Logf("%s %s (%s): plaintext: TLS alert", l.host, l.addr, l.proc)
		default:
			t.Errorf("%s %s (%s): answered plaintext: %.200q", l.host, l.addr, l.proc, s)
		}
		// TLS without a client certificate.
		c, err = dial(ctx, "tcp", l.addr)
		if err != nil {
			cancel()
			t.Errorf("%s %s: cannot connect: %v", l.host, l.addr, err)
			continue
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		tc.SetDeadline(time.Now().Add(3 * time.Second))
		err = tc.HandshakeContext(ctx)
		if err == nil {
			// TLS 1.3 servers report a missing client certificate on the
			// first read.
			io.WriteString(tc, "GET /v1/nodes HTTP/1.1\r\nHost: ferry\r\n\r\n")
			var buf [512]byte
			var n int
			n, err = tc.Read(buf[:])
			switch {
			case err == nil && strings.HasPrefix(string(buf[:n]), "HTTP/1.1 401") && strings.Contains(string(buf[:n]), "client certificate"):
				// The API: without a certificate only the join routes answer.
				t.Logf("%s %s (%s): without a client certificate: 401 (only joining is served)", l.host, l.addr, l.proc)
				err = nil
			case err == nil:
				t.Errorf("%s %s (%s): served TLS without a client certificate: %.200q", l.host, l.addr, l.proc, buf[:n])
			}
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("%s %s (%s): without a client certificate: %v", l.host, l.addr, l.proc, err)
		}
		tc.Close()
		cancel()
	}
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
