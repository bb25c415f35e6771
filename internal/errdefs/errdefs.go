// Package errdefs holds the few kinds of error Ferry distinguishes. Code
// anywhere wraps one of these with %w; the API boundary maps the kind to an
// HTTP status and a stable machine-readable code in one place (HTTPStatus, Code).
package errdefs

import (
	"errors"
	"net/http"
)

// The error kinds. Compare with errors.Is.
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrConflict           = errors.New("conflict")
	ErrUnavailable        = errors.New("unavailable")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrInternal           = errors.New("internal error")
)

var kinds = []struct {
	err    error
	code   string
	status int
}{
	{ErrInvalidArgument, "invalid_argument", http.StatusBadRequest},
	{ErrNotFound, "not_found", http.StatusNotFound},
	{ErrAlreadyExists, "already_exists", http.StatusConflict},
	{ErrFailedPrecondition, "failed_precondition", http.StatusPreconditionFailed},
	{ErrConflict, "conflict", http.StatusConflict},
	{ErrUnavailable, "unavailable", http.StatusServiceUnavailable},
	{ErrUnauthenticated, "unauthenticated", http.StatusUnauthorized},
	{ErrPermissionDenied, "permission_denied", http.StatusForbidden},
	{ErrInternal, "internal", http.StatusInternalServerError},
}

// Code returns the stable wire code for err's kind ("internal" if it has none).
func Code(err error) string {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.code
		}
	}
	return "internal"
}

// HTTPStatus returns the HTTP status for err's kind (500 if it has none).
func HTTPStatus(err error) int {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.status
		}
	}
	return http.StatusInternalServerError
}

// FromCode returns the kind for a wire code, so clients can use errors.Is.
func FromCode(code string) error {
	for _, k := range kinds {
		if k.code == code {
			return k.err
		}
	}
	return ErrInternal
}

// Wrap is a kinded error whose message is msg alone (the kind is not repeated
// in the text, so API messages read as plain sentences).
type kinded struct {
	kind error
	msg  string
}

func (e *kinded) Error() string { return e.msg }
func (e *kinded) Unwrap() error { return e.kind }

// New returns an error of the given kind with a human message.
func New(kind error, msg string) error { return &kinded{kind: kind, msg: msg} }

// Invalid is shorthand for New(ErrInvalidArgument, msg).
func Invalid(msg string) error { return New(ErrInvalidArgument, msg) }
