package apiserver

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/pki"
)

// FuzzDecodeBodies runs the API's strict body decoding and the validation
// that needs no store over arbitrary input: no panic, and whatever decodes
// either validates or is refused with an error.
func FuzzDecodeBodies(f *testing.F) {
	f.Add([]byte(`{"name":"web","memory":"256M","cpus":2,"disk":"1G"}`))
	f.Add([]byte(`{"name":"a","colour":"red"}`))
	f.Add([]byte(`{"to":"h2","max_bandwidth":"100M","max_downtime":"300ms","strategy":"multifd"}`))
	f.Add([]byte(`{"force":true,"timeout":"10s"}`))
	f.Add([]byte(`{"name":"x"}{"name":"y"}`))
	f.Add([]byte(`{"token":"ferry1.00000000.00000000000000000000000000000000.` + strings.Repeat("a", 64) + `","node":"h9","addresses":["198.18.0.9"],"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n","migration_csr":""}`))
	f.Add([]byte(`{"name":"alice","role":"operator","csr":"x"}`))
	fuzzCA, err := pki.EnsureCA(f.TempDir(), "fuzz CA")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&api.VMCreateRequest{}, &api.MigrateRequest{}, &api.VMStopRequest{},
			&api.JoinRequest{}, &api.UserCreateRequest{}, &api.SecurityRequest{}, &api.TokenCreateRequest{}} {
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, "/v1/vms", bytes.NewReader(body))
			if err := decode(w, r, v, true); err != nil {
				continue
			}
			switch req := v.(type) {
			case *api.VMCreateRequest:
				api.ValidateName("vm", req.Name)
				if req.Memory != "" {
					api.ParseSizeMiB(req.Memory)
				}
				if req.Disk != "" {
					api.ParseSizeMiB(req.Disk)
				}
			case *api.MigrateRequest:
				if req.MaxBandwidth != "" {
					api.ParseSize(req.MaxBandwidth)
				}
			case *api.VMStopRequest:
				validGrace(req.Timeout)
			case *api.JoinRequest:
				// What join does with the body before it touches the store.
				pki.ParseToken(req.Token)
				api.ValidateName("node", req.Node)
				fuzzCA.SignCSR([]byte(req.CSR), "h9", pki.RoleNode, nil, time.Hour)
				fuzzCA.SignMigrationCSR([]byte(req.MigrationCSR), "h9", nil, time.Hour)
			case *api.UserCreateRequest:
				pki.ParseRole(req.Role)
				fuzzCA.SignCSR([]byte(req.CSR), "u", pki.RoleViewer, nil, time.Hour)
			}
		}
	})
}
