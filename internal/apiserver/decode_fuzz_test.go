package apiserver

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ferryvm/ferry/api"
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
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&api.VMCreateRequest{}, &api.MigrateRequest{}, &api.VMStopRequest{}} {
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
			}
		}
	})
}
