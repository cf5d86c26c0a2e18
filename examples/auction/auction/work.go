package auction

import (
	"hash/fnv"
	"math"
	"strconv"
	"time"
)

// Work calibration. The app tier's synthetic CPU work is counted in units;
// a unit is a fixed number of rounds of a 64-bit mixing function, chosen so
// that a unit takes about 0.1 ms of CPU on the development machine (a
// 2-core x86-64 VM). Each request type costs a fixed number of units
// (below), scaled by AppOptions.Work; README.md lists the measured CPU time
// per request type.
const (
	// unitRounds is the number of mixing rounds in one unit of work.
	unitRounds = 30_000

	// DefaultWork is the calibrated default cost factor: about 2–5 ms of CPU
	// per request on one core, depending on the request type.
	DefaultWork = 1.0

	homeUnitsPerCategory = 0.85 // 20 categories: 17 units
	browseUnitsPerRow    = 1.2  // 25 rows: 30 units
	itemUnits            = 18   // description, seller and price history
	itemUnitsPerBid      = 1    // up to 5 bids
	bidsUnitsPerRow      = 0.5  // up to 50 bids
	bidsUnits            = 17
	searchUnitsPerHit    = 0.15 // up to 200 candidates: 30 units
	bidFraudUnits        = 30   // the fraud-score loop of POST /bid
	sellUnits            = 25   // listing checks of POST /sell
)

// NominalUnit is the time a unit of work took on the development machine,
// where the CPU time per request type in README.md was measured. A run
// that needs requests to cost that CPU time on another machine scales its
// work factor by NominalUnit / MeasureUnit().
const NominalUnit = 100 * time.Microsecond

// MeasureUnit returns the time a unit of work takes on this machine: the
// shortest of several runs of a few milliseconds each, so that a run the
// scheduler interrupted does not count. It takes about 20 ms.
func MeasureUnit() time.Duration {
	const units, runs = 20, 7
	best := time.Duration(math.MaxInt64)
	for i := range runs {
		start := time.Now()
		measureSink ^= spin(uint64(i), units*unitRounds)
		best = min(best, time.Since(start))
	}
	return best / units
}

// measureSink keeps MeasureUnit's work from being optimised away.
//
//lint:ignore U1000 written, never read, on purpose
var measureSink uint64

// meter does a request's CPU work and folds every result into a signature,
// so the work cannot be optimised away and shows in the response.
type meter struct {
	work float64 // cost factor
	sig  uint64
}

// burn does units of work seeded with seed and returns the result. The work
// is CPU-bound in this goroutine: no sleeping, no allocation, no I/O.
func (m *meter) burn(seed uint64, units float64) uint64 {
	h := spin(seed^m.sig, int(units*m.work*unitRounds))
	m.sig = m.sig*0x100000001b3 ^ h
	return h
}

// signature is the hex digest of all the work the meter did.
func (m *meter) signature() string { return strconv.FormatUint(m.sig, 16) }

// spin does n rounds of the murmur3 finaliser on h: a dependent chain of
// multiplies and shifts that no compiler or CPU can shortcut.
func spin(h uint64, n int) uint64 {
	h |= 1
	for range n {
		h ^= h >> 33
		h *= 0xff51afd7ed558ccd
		h ^= h >> 33
		h *= 0xc4ceb9fe1a85ec53
		h ^= h >> 33
	}
	return h
}

// hashOf hashes strings and integers into a seed for burn.
func hashOf(parts ...any) uint64 {
	f := fnv.New64a()
	var buf [20]byte
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			f.Write([]byte(v))
		case int:
			f.Write(strconv.AppendInt(buf[:0], int64(v), 10))
		case int64:
			f.Write(strconv.AppendInt(buf[:0], v, 10))
		}
		f.Write([]byte{0})
	}
	return f.Sum64()
}
