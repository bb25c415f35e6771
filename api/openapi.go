package api

import _ "embed"

// OpenAPI is the OpenAPI 3 document describing the HTTP API, served at
// /v1/openapi.json. A test checks that it names every route the server has.
//
//go:embed openapi.json
var OpenAPI []byte
