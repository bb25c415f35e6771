package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/store/storetest"
)

// A log-in opens one session, once; the session holds who asked and its
// role until it is ended; a wrong or spent secret opens nothing.
func TestDashboardSessions(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	who := store.Session{User: "alice", Role: "operator", Serial: "abc"}
	if err := st.PutLogin(ctx, "login-secret", who); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ConsumeLogin(ctx, "wrong", "s0"); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("a wrong log-in secret: %v", err)
	}
	sess, err := st.ConsumeLogin(ctx, "login-secret", "session-secret")
	if err != nil || sess.User != "alice" || sess.Role != "operator" || sess.Serial != "abc" {
		t.Fatalf("log-in: %+v %v", sess, err)
	}
	if _, err := st.ConsumeLogin(ctx, "login-secret", "another"); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("a log-in used twice: %v", err)
	}
	got, err := st.GetSession(ctx, "session-secret")
	if err != nil || got.User != "alice" || got.Role != "operator" {
		t.Fatalf("session: %+v %v", got, err)
	}
	if _, err := st.GetSession(ctx, "another"); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("a session never opened: %v", err)
	}
	if err := st.EndSession(ctx, "session-secret"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetSession(ctx, "session-secret"); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("an ended session: %v", err)
	}
	keys, err := st.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if len(k) > 0 && (strings.Contains(k, "login-secret") || strings.Contains(k, "session-secret")) {
			t.Errorf("a secret is stored in the clear: %s", k)
		}
	}
}
