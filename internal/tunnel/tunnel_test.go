package tunnel

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
)

// hostCreds makes host's migration credentials from ca in a directory of its own.
func hostCreds(t *testing.T, ca *pki.CA, host string) (string, *Credentials) {
	t.Helper()
	dir := t.TempDir()
	if err := ca.IssueMigration(dir, host, []string{host, "127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, pki.MigrationDir)
	c, err := LoadCredentials(md)
	if err != nil {
		t.Fatal(err)
	}
	return md, c
}

// fakeQEMU listens on a unix socket like a target QEMU, reads each stream to
// its end and answers with its checksum.
func fakeQEMU(t *testing.T, path string) (got chan [32]byte) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = make(chan [32]byte, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				io.Copy(h, c)
				var sum [32]byte
				copy(sum[:], h.Sum(nil))
				c.Write(sum[:])
				got <- sum
			}()
		}
	}()
	return got
}

// Long on purpose: a scenario or table read top to bottom; split, its story would scatter.
func TestTunnel(t *testing.T) {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	caDir := t.TempDir()
	ca, err := pki.EnsureMigrationCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := pki.EnsureMigrationCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, h1 := hostCreds(t, ca, "h1")
	h2dir, h2 := hostCreds(t, ca, "h2")
	_, h3 := hostCreds(t, ca, "h3")
	_, fakeH1 := hostCreds(t, otherCA, "h1")

	run := t.TempDir()
	backend := filepath.Join(run, "q.in")
	got := fakeQEMU(t, backend)
	tgt, err := Listen("127.0.0.1:0", h2, "h1", backend, log)
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()

	// send carries data through a source end to the target and returns the
	// checksum the fake QEMU answered with (nil if the stream did not arrive).
	send := func(creds *Credentials, targetName string) []byte {
		src, err := Send(filepath.Join(run, "q.out"), tgt.Addr(), creds, targetName, log)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		c, err := net.Dial("unix", filepath.Join(run, "q.out"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		data := make([]byte, 8<<20)
		rand.Read(data)
		want := sha256.Sum256(data)
		c.Write(data)
		c.(*net.UnixConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		answer, _ := io.ReadAll(c)
		if len(answer) == 0 {
			return nil
		}
		if !bytes.Equal(answer, want[:]) {
			t.Fatalf("the stream arrived damaged: checksum %x, sent %x", answer, want)
		}
		return answer
	}

	t.Run("the source's stream arrives intact", func(t *testing.T) {
		if send(h1, "h2") == nil {
			t.Fatal("nothing arrived")
		}
		<-got
	})
	t.Run("a source refuses a target of another name", func(t *testing.T) {
		if send(h1, "h3") != nil {
			t.Fatal("the stream went to a target whose certificate names h2, not h3")
		}
	})

	refusedBefore := tgt.Refused.Load()
	dialTLS := func(creds *Credentials) error {
		cfg := creds.clientConfig("h2")
		c, err := tls.Dial("tcp", tgt.Addr(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		c.Write([]byte("stream"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1)) // TLS 1.3: the server's verdict on our certificate arrives here
		return err
	}
	for _, c := range []struct {
		name  string
		creds *Credentials
	}{{"another host's valid certificate", h3}, {"a certificate for the source's name from another CA", fakeH1}} {
		t.Run(c.name+" is refused", func(t *testing.T) {
			if err := dialTLS(c.creds); err == nil {
				t.Fatal("admitted")
			}
		})
	}
	t.Run("plaintext is refused", func(t *testing.T) {
		c, err := net.Dial("tcp", tgt.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("QEVM\x00\x00\x00\x03 plaintext migration stream\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.ReadAll(c)
		c.Close()
	})
	t.Run("a revoked source is refused", func(t *testing.T) {
		leaf, err := x509Leaf(h1)
		if err != nil {
			t.Fatal(err)
		}
		crl, err := ca.CRL([]*big.Int{leaf})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(h2dir, "ca-crl.pem"), pki.CRLPEM(crl), 0o644); err != nil {
			t.Fatal(err)
		}
		if send(h1, "h2") != nil {
			t.Fatal("a revoked source's stream arrived")
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for tgt.Refused.Load()-refusedBefore < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := tgt.Refused.Load() - refusedBefore; n != 4 {
		t.Errorf("the target refused %d connections, want 4", n)
	}
	select {
	case sum := <-got:
		t.Fatalf("a refused stream reached QEMU (checksum %x)", sum)
	default:
	}
}

func x509Leaf(c *Credentials) (*big.Int, error) {
	leaf, err := parseLeaf(c.Cert)
	if err != nil {
		return nil, err
	}
	return leaf.SerialNumber, nil
}
