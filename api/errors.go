package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/justrunit/justrunit"
)

// Error codes of ErrorBody.Code. Each maps to one HTTP status.
const (
	CodeInvalid        = "invalid"         // 400, Field names the field
	CodeUnauthorized   = "unauthorized"    // 401, missing or wrong bearer token
	CodeForbidden      = "forbidden"       // 403, a cross-origin call, or a Host the daemon does not answer
	CodeNotFound       = "not_found"       // 404
	CodeConflict       = "conflict"        // 409, e.g. cancelling a finished study
	CodeTooLarge       = "too_large"       // 413, a request body over 1 MiB
	CodeMediaType      = "media_type"      // 415, a request body that is not sent as application/json
	CodeUnsupported    = "unsupported"     // 422
	CodeNotImplemented = "not_implemented" // 501, planned, not built yet
	CodeUnavailable    = "unavailable"     // 503, e.g. the daemon runs no site
	CodeInternal       = "internal"        // 500
	// CodeNotRestored (500) is a fidelity check that could not set the
	// on-line instance back to its allocation (justrunit.ErrNotRestored):
	// it still runs at the check's, whatever the error's cause; the
	// message says where it is left and what it should have.
	CodeNotRestored = "not_restored"
)

// ErrorBody is the JSON every failed call answers: {"error": {...}}. A
// fidelity check that fails once started adds what it measured before
// (VerifyErrorBody).
type ErrorBody struct {
	Error *Error `json:"error"`
}

// Error is an API error: the HTTP status, a stable code, a message for
// people and, for validation errors, the offending field. It unwraps to the
// justrunit error category of its code, so errors.Is(err,
// justrunit.ErrNotFound) works on what the Client returns.
type Error struct {
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// Error returns the message, with the HTTP status unless it names a field.
func (e *Error) Error() string {
	if e.Field != "" && e.Code == CodeInvalid {
		return e.Message
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// Unwrap returns the justrunit error category of the code (not_restored:
// justrunit.ErrNotRestored), or ErrUnavailable,
// ErrUnauthorized, ErrForbidden or ErrConflict. A body too large or not
// sent as JSON is justrunit.ErrInvalid: the request is at fault.
func (e *Error) Unwrap() error {
	switch e.Code {
	case CodeInvalid, CodeTooLarge, CodeMediaType:
		return justrunit.ErrInvalid
	case CodeNotFound:
		return justrunit.ErrNotFound
	case CodeUnsupported:
		return justrunit.ErrUnsupported
	case CodeNotImplemented:
		return justrunit.ErrNotImplemented
	case CodeConflict:
		return ErrConflict
	case CodeUnauthorized:
		return ErrUnauthorized
	case CodeForbidden:
		return ErrForbidden
	case CodeUnavailable:
		return ErrUnavailable
	case CodeNotRestored:
		return justrunit.ErrNotRestored
	}
	return nil
}

// Errors the API adds to the root package's categories.
var (
	// ErrUnavailable means the daemon lacks the component the call needs
	// (no site, no study runner, no manager): HTTP 503.
	ErrUnavailable = errors.New("unavailable")
	// ErrConflict means the call does not fit the resource's state, e.g.
	// cancelling a study that already finished: HTTP 409.
	ErrConflict = errors.New("conflict")
	// ErrUnauthorized means the bearer token was missing or wrong: HTTP 401.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden means the daemon refused the call whatever its token:
	// a browser sent it from another site's page, or it named a Host a
	// daemon without authentication does not answer: HTTP 403.
	ErrForbidden = errors.New("forbidden")
)

// toError maps an error to its API form. An on-line instance left at a
// check's allocation comes first: that is what the caller must act on,
// whatever made the restore fail (an instance not found, say).
func toError(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	e := &Error{Message: err.Error()}
	var fe *justrunit.FieldError
	switch {
	case errors.Is(err, justrunit.ErrNotRestored):
		e.Status, e.Code = http.StatusInternalServerError, CodeNotRestored
	case errors.As(err, &fe):
		e.Status, e.Code, e.Field = http.StatusBadRequest, CodeInvalid, fe.Field
	case errors.Is(err, justrunit.ErrInvalid):
		e.Status, e.Code = http.StatusBadRequest, CodeInvalid
	case errors.Is(err, justrunit.ErrNotFound):
		e.Status, e.Code = http.StatusNotFound, CodeNotFound
	case errors.Is(err, justrunit.ErrExists), errors.Is(err, ErrConflict):
		e.Status, e.Code = http.StatusConflict, CodeConflict
	case errors.Is(err, justrunit.ErrUnsupported):
		e.Status, e.Code = http.StatusUnprocessableEntity, CodeUnsupported
	case errors.Is(err, justrunit.ErrNotImplemented):
		e.Status, e.Code = http.StatusNotImplemented, CodeNotImplemented
	case errors.Is(err, ErrUnavailable):
		e.Status, e.Code = http.StatusServiceUnavailable, CodeUnavailable
	case errors.Is(err, ErrUnauthorized):
		e.Status, e.Code = http.StatusUnauthorized, CodeUnauthorized
	case errors.Is(err, ErrForbidden):
		e.Status, e.Code = http.StatusForbidden, CodeForbidden
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		e.Status, e.Code = http.StatusServiceUnavailable, CodeUnavailable
	default:
		e.Status, e.Code = http.StatusInternalServerError, CodeInternal
	}
	return e
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := s.answerError(w, r, err)
	writeJSON(w, e.Status, ErrorBody{Error: e})
}

// answerError maps err to its API form, logs it when the daemon is at
// fault and sets the headers its status needs; the caller writes the body.
func (s *Server) answerError(w http.ResponseWriter, r *http.Request, err error) *Error {
	e := toError(err)
	if e.Status >= 500 && (e.Code == CodeInternal || e.Code == CodeNotRestored) {
		s.log.Error("api call failed", keyMethod, r.Method, keyPath, r.URL.Path, keyErr, err)
	}
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="justrunit"`)
	}
	return e
}
