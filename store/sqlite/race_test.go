//go:build race

package sqlite

// raceEnabled is true when the tests run under the race detector, which
// slows the store several times over; timing checks are relaxed then.
const raceEnabled = true
