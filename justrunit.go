// Package justrunit is the vocabulary of JustRunIt, an infrastructure for
// experiment-based management of data centres: parameters, spaces and points,
// observations, matrices whose cells remember how they were obtained, studies,
// and the small interfaces (Platform, Runner, Strategy, Interpolator, Store)
// that the experimenter, the drivers, the interpolators and the platforms
// implement.
//
// The root package imports none of its implementations, so another management
// system can import it to read JustRunIt's results or to plug in a backend.
package justrunit

import (
	"errors"
	"fmt"
)

// Error categories. Callers check them with errors.Is; the API maps them to
// HTTP statuses.
var (
	// ErrNotFound means the named study, instance, host or point does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalid means the input breaks a rule; it is wrapped in a FieldError
	// that names the field where one can be named.
	ErrInvalid = errors.New("invalid")
	// ErrUnsupported means the platform or backend cannot do what was asked.
	ErrUnsupported = errors.New("unsupported")
	// ErrExists means something with that name or identity already exists.
	ErrExists = errors.New("already exists")
	// ErrNotImplemented means the capability is planned but not built yet.
	ErrNotImplemented = errors.New("not implemented yet")
	// ErrNotRestored means an on-line instance that was set to another
	// allocation on purpose (a fidelity check's point) could not be set back:
	// it serves live traffic at that allocation until someone does. The
	// error wrapping it names the instance, the allocation it is left at and
	// the one it should have; unlike other failures, it is not over when the
	// call returns.
	ErrNotRestored = errors.New("on-line allocation not restored")
	// ErrTooFewSamples means a measurement window ended with too few
	// successful responses to measure anything (measure.MeasureWindow).
	ErrTooFewSamples = errors.New("too few samples")
)

// FieldError is a validation error that names the offending field, the value
// it had and what is allowed instead. It unwraps to ErrInvalid.
type FieldError struct {
	Field string // dotted path, e.g. "parameters[0].step"
	Value any    // the offending value; nil when absent
	Msg   string // what is wrong and what is allowed
}

func (e *FieldError) Error() string {
	if e.Value == nil {
		return fmt.Sprintf("%s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("%s: %s (got %v)", e.Field, e.Msg, e.Value)
}

// Unwrap makes errors.Is(err, ErrInvalid) true for every FieldError.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// Invalid returns a *FieldError for field.
func Invalid(field string, value any, format string, args ...any) error {
	return &FieldError{Field: field, Value: value, Msg: fmt.Sprintf(format, args...)}
}
