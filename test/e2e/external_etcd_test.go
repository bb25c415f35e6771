package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/testbed"
)

// An agent pointed at an etcd it does not run (--etcd-endpoints) keeps its
// state there: the VM's records appear in that etcd, and outlive the agent.
func TestExternalEtcd(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	ports, err := testbed.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The external etcd has a PKI of its own; the agent gets its CA and a
	// client certificate, as an operator would give them.
	pd := t.TempDir()
	ca, err := pki.EnsureCA(pd, "external etcd CA")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Issue(pd, "etcd.crt", "etcd.key", "etcd", "etcd", []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := ca.Issue(pd, "ferry.crt", "ferry.key", "ferry", "etcd-client", nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	etcd, err := store.StartEmbedded(ctx, store.EmbedConfig{Dir: t.TempDir(), Name: "external",
		ClientURL: fmt.Sprintf("https://127.0.0.1:%d", ports[0]), PeerURL: fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
		TLS: &store.TLSFiles{CA: filepath.Join(pd, pki.CACert), Cert: filepath.Join(pd, "etcd.crt"), Key: filepath.Join(pd, "etcd.key")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close) // runs after the agent's cleanup below (LIFO)

	d, err := testbed.NewDev(testbed.DevOptions{Bin: ferryBin, ImageDir: imageDir, EtcdEndpoints: []string{etcd.ClientURL()},
		EtcdTLS: &store.TLSFiles{CA: filepath.Join(pd, pki.CACert), Cert: filepath.Join(pd, "ferry.crt"), Key: filepath.Join(pd, "ferry.key")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", d.LogTail(40))
		}
		d.Cleanup()
	})
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	f := false
	if _, err := d.Client.CreateVM(ctx, api.VMCreateRequest{Name: "ext", Start: &f}); err != nil {
		t.Fatal(err)
	}
	d.Stop()
	keys, err := d.EtcdKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(keys, store.VMPrefix+"ext") {
		t.Fatalf("the VM is not in the external etcd: %v", keys)
	}
	if _, err := d.Client.GetVM(ctx, "ext"); err == nil {
		t.Fatal("API answered after the agent stopped")
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if vm, err := d.Client.GetVM(ctx, "ext"); err != nil || vm.Spec.Name != "ext" {
		t.Fatalf("after agent restart: %v %v", vm, err)
	}
}
