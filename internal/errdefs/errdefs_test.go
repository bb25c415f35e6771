package errdefs

import (
	"errors"
	"fmt"
	"testing"
)

func TestMapping(t *testing.T) {
	cases := []struct {
		err    error
		kind   error
		code   string
		status int
	}{
		{Invalid("x"), ErrInvalidArgument, "invalid_argument", 400},
		{fmt.Errorf("wrapped: %w", ErrNotFound), ErrNotFound, "not_found", 404},
		{New(ErrAlreadyExists, "dup"), ErrAlreadyExists, "already_exists", 409},
		{New(ErrFailedPrecondition, "p"), ErrFailedPrecondition, "failed_precondition", 412},
		{ErrUnavailable, ErrUnavailable, "unavailable", 503},
		{errors.New("plain"), ErrInternal, "internal", 500},
	}
	for _, c := range cases {
		if Code(c.err) != c.code || HTTPStatus(c.err) != c.status {
			t.Errorf("%v: got %s/%d, want %s/%d", c.err, Code(c.err), HTTPStatus(c.err), c.code, c.status)
		}
		if !errors.Is(FromCode(c.code), c.kind) {
			t.Errorf("FromCode(%s) does not round-trip", c.code)
		}
	}
	if New(ErrNotFound, "vm x not found").Error() != "vm x not found" {
		t.Error("message must be the human text alone")
	}
}
