package apiserver

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/api"
)

// Every route the server has is in the OpenAPI document, and nothing else.
func TestOpenAPICoversRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for p, ops := range doc.Paths {
		for m := range ops {
			documented[strings.ToUpper(m)+" "+p] = true
		}
	}
	s := &Server{}
	for _, r := range s.routes() {
		if !documented[r.pattern] {
			t.Errorf("route %s is not in api/openapi.json", r.pattern)
		}
		delete(documented, r.pattern)
	}
	for r := range documented {
		t.Errorf("api/openapi.json documents %s, which the server does not have", r)
	}
}
