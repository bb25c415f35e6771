package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
)

// Users are told, in the last third of their certificate's life, when it
// expires and how to renew it; before that, nothing.
func TestWarnExpiry(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.EnsureUserCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Issue(dir, "u.crt", "u.key", "alice", pki.RoleViewer, nil, 90*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	c, err := pki.LoadCert(filepath.Join(dir, "u.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   time.Time
		want string
	}{
		{c.NotBefore.Add(24 * time.Hour), ""},
		{c.NotAfter.Add(-10 * 24 * time.Hour), "expires on"},
		{c.NotAfter.Add(time.Hour), "expired on"},
	} {
		var b strings.Builder
		warnExpiry(&b, filepath.Join(dir, "u.crt"), "/home/alice/.ferry", tc.at)
		if tc.want == "" && b.Len() > 0 || !strings.Contains(b.String(), tc.want) {
			t.Errorf("at %s: %q, want %q", tc.at, b.String(), tc.want)
		}
		if tc.want == "expires on" && !strings.Contains(b.String(), "ferry --credentials /home/alice/.ferry user renew") {
			t.Errorf("no renewal hint: %q", b.String())
		}
	}
	if got := certState(c.NotBefore, c.NotAfter, c.NotAfter.Add(-5*24*time.Hour)); !strings.Contains(got, "renew") {
		t.Errorf("user list state near expiry: %q", got)
	}
	if got := certState(c.NotBefore, c.NotAfter, c.NotBefore.Add(time.Hour)); strings.Contains(got, "renew") {
		t.Errorf("user list state when fresh: %q", got)
	}
}
