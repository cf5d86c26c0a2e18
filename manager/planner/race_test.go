//go:build race

package planner

// timeFactor stretches time limits under the race detector, which slows
// this code about tenfold.
const timeFactor = 10
