//go:build !race

package sqlite

// raceEnabled is true when the tests run under the race detector.
const raceEnabled = false
