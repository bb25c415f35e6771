package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
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
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
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
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func checkRoles(t *testing.T, b *testbed.Bed, admin *client.Client) {
	ctx := ctxT(t, 3*time.Minute)
	viewer := userClient(t, b, admin, "vera", pki.RoleViewer)
	operator := userClient(t, b, admin, "otto", pki.RoleOperator)
	admin2 := userClient(t, b, admin, "ada", pki.RoleAdmin)
	scraper := userClient(t, b, admin, "prom", pki.RoleMetrics)
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
	scrape := []call{{"read the metrics", func(c *client.Client) error {
		text, err := c.Metrics(ctx)
		if err == nil && !strings.Contains(text, "ferry_build_info") {
			err = fmt.Errorf("the metrics lack ferry_build_info:\n%.300s", text)
		}
		return err
	}}}
	may("metrics", scraper, scrape)
	mayNot("metrics", scraper, reads)
	mayNot("metrics", scraper, operate)
	may("viewer", viewer, scrape)
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
