package measure

import "math"

// Z95 is the standard normal quantile for a two-sided 95% interval.
const Z95 = 1.959963984540054

// RankInterval returns the 1-based ranks, among n sorted samples, that bound
// the q-quantile with the confidence given by z (Z95 for 95%). It is the
// distribution-free order-statistic interval: the number of samples below
// the true q-quantile is Binomial(n, q), which for large n is close to a
// normal with mean n·q and standard deviation sqrt(n·q·(1−q)), so the ranks
// n·q ± z·sqrt(n·q·(1−q)) — rounded outwards and clamped to [1, n] — bound
// the quantile. No assumption is made about the shape of the response-time
// distribution.
//
// With few samples the upper rank is clamped to n (the maximum). For the
// p95 that happens below about 73 samples, and below 59 the interval then
// covers less than it says: the true p95 lies above the largest of n
// samples with probability 0.95^n (0.36 for 20). Studies therefore need at
// least 60 responses per window (justrunit.MinStudySamples). It returns 0,
// 0 when n is 0.
func RankInterval(n int64, q, z float64) (lo, hi int64) {
	if n <= 0 {
		return 0, 0
	}
	nf := float64(n)
	mid := nf * q
	half := z * math.Sqrt(nf*q*(1-q))
	lo = int64(math.Floor(mid - half))
	hi = int64(math.Ceil(mid + half))
	return min(max(lo, 1), n), min(max(hi, 1), n)
}

// P95Interval returns RankInterval(n, 0.95, Z95): the ranks whose values
// bound p95 at 95% confidence, as Summary.RT.P95Low and P95High report.
func P95Interval(n int64) (lo, hi int64) { return RankInterval(n, 0.95, Z95) }
