// Package client is the Go client of Ferry's HTTP API, used by the CLI, the
// tests and the benchmarks. Errors from the server come back as *APIError,
// which matches the errdefs kinds with errors.Is.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/pki"
)

// Client talks to one Ferry API server.
type Client struct {
	base string
	hc   *http.Client
}

// New returns a client for server (https://host:port) with the given TLS config.
func New(server string, tlsCfg *tls.Config) *Client {
	return &Client{
		base: strings.TrimRight(server, "/"),
		hc:   &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}},
	}
}

// NewWithTransport returns a client that uses tr (e.g. one that dials
// inside a network namespace).
func NewWithTransport(server string, tr http.RoundTripper) *Client {
	return &Client{base: strings.TrimRight(server, "/"), hc: &http.Client{Transport: tr}}
}

// EndpointFile, in an agent's data directory, names the API address the agent serves.
const EndpointFile = "api-endpoint"

// FromDataDir builds a client from the admin credentials an agent generated
// in its data directory. server may be empty: then the address the agent
// recorded there is used.
func FromDataDir(dataDir, server string) (*Client, error) {
	pkiDir := filepath.Join(dataDir, "pki")
	cfg, err := pki.ClientTLS(pkiDir, pki.AdminCert, pki.AdminKey)
	if err != nil {
		return nil, fmt.Errorf("no admin credentials in %s (is `ferry agent` running with --data-dir %s?): %w", pkiDir, dataDir, err)
	}
	if server == "" {
		b, err := os.ReadFile(filepath.Join(dataDir, EndpointFile))
		if err != nil {
			return nil, fmt.Errorf("no API address recorded in %s: pass --server", dataDir)
		}
		server = strings.TrimSpace(string(b))
	}
	return New(server, cfg), nil
}

// APIError is an error the server returned.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Unwrap makes errors.Is(err, errdefs.ErrNotFound) and friends work.
func (e *APIError) Unwrap() error { return errdefs.FromCode(e.Code) }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", errdefs.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

func decodeError(resp *http.Response) error {
	var eb api.ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &eb) != nil || eb.Error.Code == "" {
		return &APIError{Status: resp.StatusCode, Code: "internal", Message: fmt.Sprintf("server answered %s: %s", resp.Status, strings.TrimSpace(string(b)))}
	}
	return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
}

// CreateVM creates a VM.
func (c *Client) CreateVM(ctx context.Context, req api.VMCreateRequest) (*api.VM, error) {
	var vm api.VM
	return &vm, c.do(ctx, "POST", "/v1/vms", req, &vm)
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, name string) (*api.VM, error) {
	var vm api.VM
	return &vm, c.do(ctx, "GET", "/v1/vms/"+url.PathEscape(name), nil, &vm)
}

// ListVMs returns every VM.
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	var vms []api.VM
	return vms, c.do(ctx, "GET", "/v1/vms", nil, &vms)
}

// StartVM asks for a VM to run.
func (c *Client) StartVM(ctx context.Context, name string) (*api.VM, error) {
	var vm api.VM
	return &vm, c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/start", nil, &vm)
}

// StopVM asks for a VM to stop.
func (c *Client) StopVM(ctx context.Context, name string, req api.VMStopRequest) (*api.VM, error) {
	var vm api.VM
	return &vm, c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/stop", req, &vm)
}

// RestartVM asks for a VM to be restarted.
func (c *Client) RestartVM(ctx context.Context, name string, req api.VMStopRequest) (*api.VM, error) {
	var vm api.VM
	return &vm, c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/restart", req, &vm)
}

// DeleteVM asks for a VM to be deleted.
func (c *Client) DeleteVM(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/vms/"+url.PathEscape(name), nil, nil)
}

// ListNodes returns every host.
func (c *Client) ListNodes(ctx context.Context) ([]api.Node, error) {
	var n []api.Node
	return n, c.do(ctx, "GET", "/v1/nodes", nil, &n)
}

// Console copies the VM's console output to w; with follow it keeps
// streaming until ctx ends.
func (c *Client) Console(ctx context.Context, name string, lines int, follow bool, w io.Writer) error {
	q := url.Values{"lines": {fmt.Sprint(lines)}, "follow": {fmt.Sprint(follow)}}
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/vms/"+url.PathEscape(name)+"/console?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", errdefs.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// DashboardLogin asks for a one-time link that logs a browser in to the
// dashboard as this client's user.
func (c *Client) DashboardLogin(ctx context.Context) (*api.DashboardLogin, error) {
	var l api.DashboardLogin
	return &l, c.do(ctx, "POST", "/v1/sessions", nil, &l)
}

// ListMigrations is each guest's current or last migration.
func (c *Client) ListMigrations(ctx context.Context) ([]api.Migration, error) {
	var ms []api.Migration
	return ms, c.do(ctx, "GET", "/v1/migrations", nil, &ms)
}

// BalancePlan returns what the balancer would do now and why.
func (c *Client) BalancePlan(ctx context.Context) (*api.BalancePlan, error) {
	var p api.BalancePlan
	return &p, c.do(ctx, "GET", "/v1/balance/plan", nil, &p)
}

// Metrics returns the API host's Prometheus metrics, as text.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errdefs.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return "", decodeError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return string(b), err
}

// Raw performs a request with a raw body and returns status and body; for
// tests of hostile input.
func (c *Client) Raw(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// WaitVM polls until cond holds for the VM, ctx ends, or the VM is gone
// (cond(nil) decides whether that is success).
func (c *Client) WaitVM(ctx context.Context, name string, cond func(*api.VM) (bool, error)) (*api.VM, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		vm, err := c.GetVM(ctx, name)
		if err != nil {
			if ae, ok := err.(*APIError); ok && ae.Code == "not_found" {
				vm = nil
			} else if ctx.Err() != nil {
				return nil, ctx.Err()
			} else {
				return nil, err
			}
		}
		done, cerr := cond(vm)
		if cerr != nil {
			return vm, cerr
		}
		if done {
			return vm, nil
		}
		select {
		case <-ctx.Done():
			return vm, fmt.Errorf("timed out waiting for vm %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// PredictMigration answers what a migration would do (a dry run).
func (c *Client) PredictMigration(ctx context.Context, name string, req api.MigrateRequest) (*api.MigrationPrediction, error) {
	req.DryRun = true
	var p api.MigrationPrediction
	return &p, c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/migrate", req, &p)
}

// ListPolicies lists the migration policies.
func (c *Client) ListPolicies(ctx context.Context) ([]api.MigrationPolicy, error) {
	var ps []api.MigrationPolicy
	return ps, c.do(ctx, "GET", "/v1/policies", nil, &ps)
}

// CreatePolicy creates a migration policy (admin).
func (c *Client) CreatePolicy(ctx context.Context, req api.MigrationPolicyRequest) (*api.MigrationPolicy, error) {
	var p api.MigrationPolicy
	return &p, c.do(ctx, "POST", "/v1/policies", req, &p)
}

// DeletePolicy deletes a migration policy (admin).
func (c *Client) DeletePolicy(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/policies/"+url.PathEscape(name), nil, nil)
}

// ListLinks is every path between hosts as the hosts measured it.
func (c *Client) ListLinks(ctx context.Context) ([]api.LinkStat, error) {
	var ls []api.LinkStat
	return ls, c.do(ctx, "GET", "/v1/links", nil, &ls)
}

// History returns what the API server sampled of hosts' load and traffic
// and links' round trips after since (all it keeps when zero), of the
// metrics whose name starts with metric.
func (c *Client) History(ctx context.Context, since time.Time, metric string) (api.History, error) {
	q := url.Values{}
	if !since.IsZero() {
		q.Set("since", strconv.FormatInt(since.UnixMilli(), 10))
	}
	if metric != "" {
		q.Set("metric", metric)
	}
	path := "/v1/history"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var h api.History
	return h, c.do(ctx, "GET", path, nil, &h)
}

// ProbeLinks asks every host to measure its links now.
func (c *Client) ProbeLinks(ctx context.Context) error {
	return c.do(ctx, "POST", "/v1/links/probe", nil, nil)
}

// TestLink asks host from to measure its link to host to now, bandwidth
// included; the result appears in ListLinks.
func (c *Client) TestLink(ctx context.Context, from, to string) error {
	return c.do(ctx, "POST", "/v1/links/test", api.LinkTestRequest{From: from, To: to}, nil)
}

// MigrateVM starts a live migration.
func (c *Client) MigrateVM(ctx context.Context, name string, req api.MigrateRequest) (*api.Migration, error) {
	var m api.Migration
	return &m, c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/migrate", req, &m)
}

// GetMigration returns the VM's current or last migration.
func (c *Client) GetMigration(ctx context.Context, name string) (*api.Migration, error) {
	var m api.Migration
	return &m, c.do(ctx, "GET", "/v1/vms/"+url.PathEscape(name)+"/migration", nil, &m)
}

// CancelMigration cancels a migration in flight.
func (c *Client) CancelMigration(ctx context.Context, name string) (*api.Migration, error) {
	var m api.Migration
	return &m, c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/migrate/cancel", nil, &m)
}

// WaitMigration polls migration id of a VM until it ends, calling progress
// (if non-nil) with each state seen.
func (c *Client) WaitMigration(ctx context.Context, name, id string, progress func(*api.Migration)) (*api.Migration, error) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		m, err := c.GetMigration(ctx, name)
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil && m.ID == id {
			if progress != nil {
				progress(m)
			}
			// The target marks completion; the source adds QEMU's figures a
			// moment later: wait for them (briefly).
			if api.MigrationTerminal(m.Phase) && (m.Phase != api.MigCompleted || m.TotalTimeMS > 0 || time.Since(m.Finished) > 3*time.Second) {
				return m, nil
			}
		}
		select {
		case <-ctx.Done():
			return m, fmt.Errorf("waiting for the migration of %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// DrainNode puts a host in maintenance.
func (c *Client) DrainNode(ctx context.Context, name string) (*api.Node, error) {
	var n api.Node
	return &n, c.do(ctx, "POST", "/v1/nodes/"+url.PathEscape(name)+"/drain", nil, &n)
}

// UndrainNode takes a host out of maintenance.
func (c *Client) UndrainNode(ctx context.Context, name string) (*api.Node, error) {
	var n api.Node
	return &n, c.do(ctx, "POST", "/v1/nodes/"+url.PathEscape(name)+"/undrain", nil, &n)
}

// Events returns the newest limit cluster events, oldest first.
func (c *Client) Events(ctx context.Context, limit int) ([]api.Event, error) {
	var evs []api.Event
	return evs, c.do(ctx, "GET", fmt.Sprintf("/v1/events?limit=%d", limit), nil, &evs)
}

// HAState returns the cluster's HA switch.
func (c *Client) HAState(ctx context.Context) (*api.HAState, error) {
	var st api.HAState
	return &st, c.do(ctx, "GET", "/v1/cluster/ha", nil, &st)
}

// SetHAPaused pauses or resumes HA restarts cluster-wide.
func (c *Client) SetHAPaused(ctx context.Context, paused bool, reason string) (*api.HAState, error) {
	var st api.HAState
	return &st, c.do(ctx, "PUT", "/v1/cluster/ha", api.HAStateRequest{Paused: paused, Reason: reason}, &st)
}

// Security returns the cluster's security settings.
func (c *Client) Security(ctx context.Context) (*api.Security, error) {
	var s api.Security
	return &s, c.do(ctx, "GET", "/v1/cluster/security", nil, &s)
}

// SetSecurity changes the cluster's security settings (admin only).
func (c *Client) SetSecurity(ctx context.Context, req api.SecurityRequest) (*api.Security, error) {
	var s api.Security
	return &s, c.do(ctx, "PUT", "/v1/cluster/security", req, &s)
}

// CreateUser asks the cluster for a certificate with a role for a key the
// caller made (admin only).
func (c *Client) CreateUser(ctx context.Context, req api.UserCreateRequest) (*api.User, error) {
	var u api.User
	return &u, c.do(ctx, "POST", "/v1/users", req, &u)
}

// RenewUser exchanges the certificate the client calls with (a user's) for
// a new one for the key csr was made with; the old one is revoked.
func (c *Client) RenewUser(ctx context.Context, csr []byte) (*api.User, error) {
	var u api.User
	return &u, c.do(ctx, "POST", "/v1/renew", api.RenewRequest{CSR: string(csr)}, &u)
}

// ListUsers lists the users the cluster issued certificates to (admin only).
func (c *Client) ListUsers(ctx context.Context) ([]api.User, error) {
	var us []api.User
	return us, c.do(ctx, "GET", "/v1/users", nil, &us)
}

// DeleteUser revokes a user's certificate (admin only).
func (c *Client) DeleteUser(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/users/"+url.PathEscape(name), nil, nil)
}

// RemoveNode takes a host out of the cluster and revokes its certificates
// (admin only).
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/nodes/"+url.PathEscape(name), nil, nil)
}

// Credential file names in a directory written by `ferry user create`.
const (
	CredCert   = "client.crt"
	CredKey    = "client.key"
	CredCA     = "ca.crt"
	CredServer = "server"
)

// FromCredentials builds a client from a directory written by `ferry user
// create`: a certificate with a role, its key, the cluster CA and the API
// address (server overrides it when set).
func FromCredentials(dir, server string) (*Client, error) {
	cfg, err := pki.TLSFromFiles(filepath.Join(dir, CredCA), filepath.Join(dir, CredCert), filepath.Join(dir, CredKey))
	if err != nil {
		return nil, fmt.Errorf("credentials in %s: %w", dir, err)
	}
	cfg.MinVersion = tls.VersionTLS13
	if server == "" {
		b, err := os.ReadFile(filepath.Join(dir, CredServer))
		if err != nil {
			return nil, fmt.Errorf("no API address in %s: pass --server", dir)
		}
		server = strings.TrimSpace(string(b))
	}
	return New(server, cfg), nil
}

// Server is the API address the client talks to.
func (c *Client) Server() string { return c.base }

// CreateToken makes a one-time join token (admin only).
func (c *Client) CreateToken(ctx context.Context, req api.TokenCreateRequest) (*api.JoinToken, error) {
	var t api.JoinToken
	return &t, c.do(ctx, "POST", "/v1/cluster/tokens", req, &t)
}
