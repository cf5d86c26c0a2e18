// Package httpproxy is JustRunIt's workload duplication for HTTP/1.1: the
// in-proxy, which sits before a tier, forwards every request to the on-line
// instance and copies it, at its arrival time, to the clones under test;
// and the out-proxy, which sits after the tier, records the on-line
// instance's exchanges with the next tier and answers the clones' calls
// from that record.
//
// The on-line path comes first. Copies are sent asynchronously, bounded per
// clone in number and bytes in flight; a copy that cannot be sent is
// dropped and counted, never waited for, so a slow, hung or dead clone
// does not add latency to, or drop, an on-line request. A clone's calls to
// the next tier are answered from the record (or, for the safe methods the
// user allows, passed through); its writes never reach the on-line next
// tier.
//
// Non-determinism (timestamps, generated ids, session tokens) is handled by
// Masks: regexps and JSON paths whose matches are hidden before requests
// are keyed and responses compared.
package httpproxy
