package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
)

// Bad input against the real API: each request gets the right status and a
// machine-readable code, and leaves the store exactly as it was.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestBadInput(t *testing.T) {
	d := newDev(t)
	cl := d.Client
	f := false
	// A VM that exists, created stopped (no QEMU), for duplicate and action cases.
	if _, err := cl.CreateVM(ctxT(t, 10*time.Second), api.VMCreateRequest{Name: "dup", Start: &f}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	tiny := filepath.Join(t.TempDir(), "tiny.raw")
	os.WriteFile(tiny, []byte("x"), 0o644)

	cases := []struct {
		name         string
		method, path string
		body         string
		status       int
		code         string
	}{
		{"malformed json", "POST", "/v1/vms", `{"name":`, 400, "invalid_argument"},
		{"not an object", "POST", "/v1/vms", `[1,2]`, 400, "invalid_argument"},
		{"empty body", "POST", "/v1/vms", ``, 400, "invalid_argument"},
		{"unknown field", "POST", "/v1/vms", `{"name":"a","colour":"red"}`, 400, "invalid_argument"},
		{"two json values", "POST", "/v1/vms", `{"name":"a"}{"name":"b"}`, 400, "invalid_argument"},
		{"missing name", "POST", "/v1/vms", `{}`, 400, "invalid_argument"},
		{"uppercase name", "POST", "/v1/vms", `{"name":"Web"}`, 400, "invalid_argument"},
		{"path in name", "POST", "/v1/vms", `{"name":"../etc"}`, 400, "invalid_argument"},
		{"long name", "POST", "/v1/vms", `{"name":"` + strings.Repeat("a", 64) + `"}`, 400, "invalid_argument"},
		{"memory unit", "POST", "/v1/vms", `{"name":"a","memory":"12Q"}`, 400, "invalid_argument"},
		{"memory too small", "POST", "/v1/vms", `{"name":"a","memory":"1M"}`, 400, "invalid_argument"},
		{"memory not whole MiB", "POST", "/v1/vms", `{"name":"a","memory":"1000K"}`, 400, "invalid_argument"},
		{"memory beyond every node", "POST", "/v1/vms", `{"name":"a","memory":"900G"}`, 412, "failed_precondition"},
		{"negative cpus", "POST", "/v1/vms", `{"name":"a","cpus":-1}`, 400, "invalid_argument"},
		{"too many cpus", "POST", "/v1/vms", `{"name":"a","cpus":1000}`, 400, "invalid_argument"},
		{"cpus as string", "POST", "/v1/vms", `{"name":"a","cpus":"two"}`, 400, "invalid_argument"},
		{"disk too small", "POST", "/v1/vms", `{"name":"a","disk":"1M"}`, 400, "invalid_argument"},
		{"missing image", "POST", "/v1/vms", `{"name":"a","image":"/nonexistent/x.qcow2"}`, 400, "invalid_argument"},
		{"relative image", "POST", "/v1/vms", `{"name":"a","image":"x.qcow2"}`, 400, "invalid_argument"},
		{"image is a directory", "POST", "/v1/vms", `{"name":"a","image":"/tmp"}`, 400, "invalid_argument"},
		{"image too small", "POST", "/v1/vms", fmt.Sprintf(`{"name":"a","image":%q}`, tiny), 400, "invalid_argument"},
		{"disk size with image file", "POST", "/v1/vms", fmt.Sprintf(`{"name":"a","image":%q,"disk":"1G"}`, img), 400, "invalid_argument"},
		{"comma in image path", "POST", "/v1/vms", `{"name":"a","image":"/tmp/a,b"}`, 400, "invalid_argument"},
		{"body too large", "POST", "/v1/vms", `{"name":"a","image":"` + strings.Repeat("x", 2<<20) + `"}`, 400, "invalid_argument"},
		{"duplicate name", "POST", "/v1/vms", `{"name":"dup"}`, 409, "already_exists"},
		{"get invalid name", "GET", "/v1/vms/Bad_Name", ``, 400, "invalid_argument"},
		{"get missing", "GET", "/v1/vms/nope", ``, 404, "not_found"},
		{"start missing", "POST", "/v1/vms/nope/start", ``, 404, "not_found"},
		{"stop missing", "POST", "/v1/vms/nope/stop", ``, 404, "not_found"},
		{"delete missing", "DELETE", "/v1/vms/nope", ``, 404, "not_found"},
		{"stop bad timeout", "POST", "/v1/vms/dup/stop", `{"timeout":"forever"}`, 400, "invalid_argument"},
		{"stop unknown field", "POST", "/v1/vms/dup/stop", `{"force":true,"now":1}`, 400, "invalid_argument"},
		{"console bad lines", "GET", "/v1/vms/dup/console?lines=x", ``, 400, "invalid_argument"},
		{"console bad follow", "GET", "/v1/vms/dup/console?follow=maybe", ``, 400, "invalid_argument"},
		{"unknown endpoint", "GET", "/v1/bogus", ``, 404, "not_found"},
		{"bad label key", "POST", "/v1/vms", `{"name":"a","labels":{"Tier!":"db"}}`, 400, "invalid_argument"},
		{"bad label value", "POST", "/v1/vms", `{"name":"a","labels":{"tier":"d b"}}`, 400, "invalid_argument"},
		{"migrate unknown strategy", "POST", "/v1/vms/dup/migrate", `{"to":"dev1","strategy":"teleport"}`, 400, "invalid_argument"},
		{"migrate auto with compress", "POST", "/v1/vms/dup/migrate", `{"to":"dev1","strategy":"auto","compress":true}`, 400, "invalid_argument"},
		{"policy without name", "POST", "/v1/policies", `{}`, 400, "invalid_argument"},
		{"policy unknown strategy", "POST", "/v1/policies", `{"name":"p","strategies":["teleport"]}`, 400, "invalid_argument"},
		{"policy unknown escalation", "POST", "/v1/policies", `{"name":"p","escalations":["pray"]}`, 400, "invalid_argument"},
		{"policy allowed below max", "POST", "/v1/policies", `{"name":"p","max_downtime":"500ms","allowed_downtime":"100ms"}`, 400, "invalid_argument"},
		{"policy bad bandwidth", "POST", "/v1/policies", `{"name":"p","max_bandwidth":"fast"}`, 400, "invalid_argument"},
		{"policy named default", "POST", "/v1/policies", `{"name":"default"}`, 400, "invalid_argument"},
		{"policy bad selector", "POST", "/v1/policies", `{"name":"p","selector":{"a b":"c"}}`, 400, "invalid_argument"},
		{"delete missing policy", "DELETE", "/v1/policies/nope", ``, 404, "not_found"},
	}
	// The scheduler places even a stopped VM, and its host reports it
	// stopped (an event with it): wait for both, so that the store is at
	// rest before the bad requests.
	waitVM(t, cl, "dup", 30*time.Second, "placed and reported stopped", func(vm *api.VM) bool {
		return vm.Node != "" && vm.Status.Phase == api.PhaseStopped
	})
	keysBefore, err := d.EtcdKeys(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	vmBefore, _ := cl.GetVM(ctxT(t, 10*time.Second), "dup")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body, err := cl.Raw(ctxT(t, 10*time.Second), c.method, c.path, []byte(c.body))
			if err != nil {
				t.Fatal(err)
			}
			var eb api.ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil {
				t.Fatalf("status %d, body is not a JSON error: %.200s", status, body)
			}
			if status != c.status || eb.Error.Code != c.code || eb.Error.Message == "" {
				t.Fatalf("got %d %s %q, want %d %s", status, eb.Error.Code, eb.Error.Message, c.status, c.code)
			}
		})
	}
	keysAfter, err := d.EtcdKeys(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// The balancer's plan appears once the host has sampled its load, a
	// matter of time: it is the leader's report, not what was asked.
	noPlan := func(ks []string) []string {
		return slices.DeleteFunc(slices.Clone(ks), func(k string) bool { return k == store.BalancePlanKey })
	}
	if !slices.Equal(noPlan(keysBefore), noPlan(keysAfter)) {
		t.Errorf("bad input changed the store:\nbefore %v\nafter  %v", keysBefore, keysAfter)
	}
	vmAfter, _ := cl.GetVM(ctxT(t, 10*time.Second), "dup")
	if !reflect.DeepEqual(vmAfter.Spec, vmBefore.Spec) {
		t.Errorf("bad input changed vm dup: %+v -> %+v", vmBefore.Spec, vmAfter.Spec)
	}
	if p := d.QEMUPids(); len(p) != 0 {
		t.Errorf("bad input started QEMU: %v", p)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.DataDir, "storage")); len(ents) != 0 {
		t.Errorf("bad input created disks: %v", ents)
	}
}

// The API speaks only TLS and only to clients with a certificate from the
// cluster CA.
func TestAPIRequiresClientCertificate(t *testing.T) {
	d := newDev(t)
	url := fmt.Sprintf("https://127.0.0.1:%d/v1/vms", d.APIPort)
	// TLS without a client certificate: only the join routes answer; this
	// one is refused as unauthenticated.
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if resp, err := noCert.Get(url); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "client certificate") {
			t.Fatalf("request without a client certificate answered %s: %s", resp.Status, body)
		}
	}
	// A certificate from another CA: the handshake is refused.
	pd := t.TempDir()
	other, err := pki.EnsureCA(pd, "another CA")
	if err != nil {
		t.Fatal(err)
	}
	if err := other.EnsureLeaf(pd, pki.AdminCert, pki.AdminKey, "admin", pki.RoleAdmin, nil); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(pd, pki.AdminCert), filepath.Join(pd, pki.AdminKey))
	if err != nil {
		t.Fatal(err)
	}
	// (Sent even though the server asks for its own CA's: Go's client would
	// otherwise leave it out.)
	forged := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}}}
	if resp, err := forged.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("an admin certificate from another CA answered %s", resp.Status)
	}
	// Plain HTTP: no API answer.
	plain := &http.Client{Timeout: 5 * time.Second}
	if resp, err := plain.Get(strings.Replace(url, "https://", "http://", 1)); err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("plain HTTP answered %s", resp.Status)
		}
	}
}
