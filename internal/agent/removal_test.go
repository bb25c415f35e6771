package agent

import (
	"errors"
	"fmt"
	"testing"

	"github.com/ferryvm/ferry/internal/errdefs"
)

// Only etcd refusing one of this host's own certificates means it was
// removed; an outage, or another caller's certificate, does not.
func TestRefused(t *testing.T) {
	a := &Agent{}
	a.SetCertSerials([]string{"abc1", "def2"})
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("%w: etcd: certificate \"h4\" (serial def2) has been revoked", errdefs.ErrUnauthenticated), true},
		{fmt.Errorf("%w: etcd: certificate \"h5\" (serial 99) has been revoked", errdefs.ErrUnauthenticated), false},
		{fmt.Errorf("%w: etcd: certificate \"h4\" (serial def2) has been revoked", errdefs.ErrUnavailable), false},
		{errors.New("connection refused"), false},
	} {
		if got := a.refused(c.err); got != c.want {
			t.Errorf("refused(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
