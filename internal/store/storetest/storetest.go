// Package storetest starts a real embedded etcd for unit tests of packages
// that work through the store.
package storetest

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/store"
)

// New starts an embedded single-member etcd on loopback for one test and
// returns a store opened on it; both are closed when the test ends.
func New(t testing.TB) *store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := store.Open(ctx, Etcd(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Etcd starts an embedded single-member etcd on loopback for one test and
// returns its client URLs; it is closed when the test ends.
func Etcd(t testing.TB) []string {
	t.Helper()
	ports := Ports(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{Dir: t.TempDir(), Name: "t",
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", ports[1])})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return []string{e.ClientURL()}
}

// Ports returns n free TCP ports on 127.0.0.1 (for an embedded etcd's
// client and peer URLs).
func Ports(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	return ports
}

// Nodes registers hosts bound to lease, as their agents would.
func Nodes(t testing.TB, st *store.Store, lease store.LeaseID, nodes ...api.Node) {
	t.Helper()
	for _, n := range nodes {
		if err := st.PutNode(context.Background(), n, lease); err != nil {
			t.Fatal(err)
		}
	}
}

// Placed records a VM and places it on node, as the scheduler would.
func Placed(t testing.TB, st *store.Store, spec api.VMSpec, node string) {
	t.Helper()
	ctx := context.Background()
	// Created and placed at once: a running scheduler would otherwise
	// place it elsewhere between the two.
	if err := st.CreateVMOn(ctx, &spec, node); err != nil {
		t.Fatal(err)
	}
}
