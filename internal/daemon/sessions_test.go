package daemon

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/apiserver"
	"github.com/ferryvm/ferry/internal/pki"
)

// The dashboard's log-in, against the real API and etcd: a user's
// certificate obtains a one-time link; a browser (no certificate) opens it
// once and gets a session with the user's role; the session reads, but
// changes only with the dashboard's header and within its role; a host's
// certificate gets no link; a removed user's session ends.
// (Long on purpose: a scenario read top to bottom; split, its story would scatter.)
func TestDashboardLogin(t *testing.T) {
	h := newAPIHarness(t)
	dir := h.dir
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	base := "https://" + h.addr
	as := func(cert, key string) *client.Client {
		cfg, err := pki.ClientTLS(dir, cert, key)
		if err != nil {
			t.Fatal(err)
		}
		return client.New(base, cfg)
	}
	// A browser: no certificate, the cluster's CA trusted, cookies kept,
	// redirects not followed (to see them).
	browser := func() *http.Client {
		jar, _ := cookiejar.New(nil)
		cfg, err := pki.ClientTLS(dir, pki.AdminCert, pki.AdminKey)
		if err != nil {
			t.Fatal(err)
		}
		cfg.GetClientCertificate = nil // a browser has none
		return &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: cfg},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	do := func(b *http.Client, method, path string, dashboard bool) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(""))
		if dashboard {
			req.Header.Set(apiserver.DashboardHeader, "1")
		}
		resp, err := b.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	// A host's certificate gets no link; a viewer's does.
	if _, err := as(pki.ServerCert, pki.ServerKey).DashboardLogin(ctx); err == nil {
		t.Error("a host's certificate got a dashboard log-in")
	}
	// vera, a viewer made through the API as `ferry user create` does.
	admin := as(pki.AdminCert, pki.AdminKey)
	key, csr, err := pki.NewKeyAndCSR("vera")
	if err != nil {
		t.Fatal(err)
	}
	u0, err := admin.CreateUser(ctx, api.UserCreateRequest{Name: "vera", Role: pki.RoleViewer, CSR: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair([]byte(u0.Certificate), key)
	if err != nil {
		t.Fatal(err)
	}
	vcfg, _ := pki.ClientTLS(dir, pki.AdminCert, pki.AdminKey)
	vcfg.GetClientCertificate, vcfg.Certificates = nil, []tls.Certificate{pair}
	login, err := client.New(base, vcfg).DashboardLogin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if login.User != "vera" || login.Role != "viewer" || !strings.Contains(login.URL, "/ui/login?t=") {
		t.Fatalf("log-in link %+v", login)
	}
	u, _ := url.Parse(login.URL)
	b := browser()
	if code, _ := do(b, "GET", "/v1/vms", false); code != http.StatusUnauthorized {
		t.Fatalf("a browser without a session read the API: %d", code)
	}
	if code, _ := do(b, "GET", u.RequestURI(), false); code != http.StatusSeeOther {
		t.Fatalf("opening the link: %d, want a redirect to the dashboard", code)
	}
	if code, body := do(b, "GET", "/v1/whoami", false); code != http.StatusOK || !strings.Contains(body, `"vera"`) || !strings.Contains(body, `"viewer"`) {
		t.Fatalf("whoami with the session: %d %s", code, body)
	}
	if code, _ := do(b, "GET", "/v1/vms", false); code != http.StatusOK {
		t.Fatalf("the session cannot read: %d", code)
	}
	// A viewer's session may not change anything, with or without the header.
	if code, _ := do(b, "POST", "/v1/nodes/n1/drain", true); code != http.StatusForbidden {
		t.Errorf("a viewer's session drained a host: %d", code)
	}
	// The link works once.
	if code, _ := do(browser(), "GET", u.RequestURI(), false); code != http.StatusUnauthorized {
		t.Errorf("the link opened a second session: %d", code)
	}
	// The dashboard's pages are served, with their policy.
	if code, body := do(browser(), "GET", "/ui/", false); code != http.StatusOK || !strings.Contains(body, "<title>Ferry</title>") {
		t.Errorf("the dashboard page: %d", code)
	}

	// An admin's session changes things only with the dashboard's header.
	alogin, err := admin.DashboardLogin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	au, _ := url.Parse(alogin.URL)
	ab := browser()
	do(ab, "GET", au.RequestURI(), false)
	if code, _ := do(ab, "POST", "/v1/policies", false); code != http.StatusForbidden {
		t.Errorf("a change through a session without the dashboard's header: %d, want 403", code)
	}
	if code, body := do(ab, "POST", "/v1/policies", true); code == http.StatusForbidden || code == http.StatusUnauthorized {
		t.Errorf("an admin's dashboard change was refused: %d %s", code, body)
	}

	// Removing the user revokes its certificate: its session ends (once
	// the server's few seconds of caching are over).
	if err := admin.DeleteUser(ctx, "vera"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)
	if code, _ := do(b, "GET", "/v1/whoami", false); code != http.StatusUnauthorized {
		t.Errorf("a removed user's session still reads: %d", code)
	}
}
