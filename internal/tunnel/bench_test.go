package tunnel

import (
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	"github.com/ferryvm/ferry/internal/pki"
)

// BenchmarkTunnel carries b.N bytes through both ends over loopback.
func BenchmarkTunnel(b *testing.B) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	caDir := b.TempDir()
	ca, _ := pki.EnsureMigrationCA(caDir)
	mk := func(host string) *Credentials {
		dir := b.TempDir()
		ca.IssueMigration(dir, host, []string{host, "127.0.0.1"}, 3600e9)
		c, err := LoadCredentials(filepath.Join(dir, pki.MigrationDir))
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	h1, h2 := mk("h1"), mk("h2")
	run := b.TempDir()
	backend := filepath.Join(run, "in")
	ln, _ := net.Listen("unix", backend)
	defer ln.Close()
	done := make(chan int64)
	go func() {
		c, _ := ln.Accept()
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		done <- n
	}()
	tgt, _ := Listen("127.0.0.1:0", h2, "h1", backend, log)
	defer tgt.Close()
	src, _ := Send(filepath.Join(run, "out"), tgt.Addr(), h1, "h2", log)
	defer src.Close()
	c, err := net.Dial("unix", filepath.Join(run, "out"))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Write(buf)
	}
	c.(*net.UnixConn).CloseWrite()
	<-done
}
