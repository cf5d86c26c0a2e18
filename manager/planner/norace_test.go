//go:build !race

package planner

// timeFactor stretches time limits under the race detector; 1 without it.
const timeFactor = 1
