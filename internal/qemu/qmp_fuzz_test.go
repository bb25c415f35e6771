package qemu

import (
	"context"
	"net"
	"testing"
	"time"
)

// FuzzQMPReader feeds arbitrary bytes to the client as QEMU's side of the
// connection, after a valid greeting: the client must neither panic nor hang,
// and a call must return (with a value or an error).
func FuzzQMPReader(f *testing.F) {
	f.Add([]byte(`{"return": {}, "id": "ferry-2"}` + "\n"))
	f.Add([]byte(`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n" + `{"return": {"status": "running", "running": true}, "id": "ferry-2"}`))
	f.Add([]byte(`{"error": {"class": "GenericError", "desc": "x"}, "id": "ferry-2"}`))
	f.Add([]byte(`{"return": [1, 2, {"id": 5}], "id": 7}{"QMP": null}`))
	f.Add([]byte("\x00\xff{{{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go func() {
			b.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}` + "\n"))
			buf := make([]byte, 4096)
			b.Read(buf) // qmp_capabilities
			b.Write([]byte(`{"return": {}, "id": "ferry-1"}` + "\n"))
			b.Read(buf) // the fuzzed call
			b.Write(data)
			b.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := NewClient(ctx, a)
		if err != nil {
			return
		}
		defer c.Close()
		var st Status
		c.Execute(ctx, "query-status", nil, &st)
		if ctx.Err() != nil {
			t.Fatal("a call hung on hostile input")
		}
	})
}
