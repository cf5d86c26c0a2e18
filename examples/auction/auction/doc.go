// Package auction is a small three-tier auction site in the spirit of RUBiS,
// written to be managed by JustRunIt: a front (web) tier, a CPU-heavy
// application tier and a data tier that keeps items, users and bids in an
// embedded SQLite database.
//
// The tiers talk plain HTTP/1.1 with JSON bodies, so the HTTP in-proxy can
// sit before any tier and the HTTP out-proxy after it:
//
//	client -> WebServer -> AppServer -> DataServer (SQLite in a state dir)
//
// WebServer and AppServer serve the same paths (GET /, /browse, /item/{id},
// /item/{id}/bids, /search; POST /bid, /sell), so a load generator can drive
// either; the web tier returns HTML (or JSON on request) and the app tier
// returns a JSON [Page]. The app tier does CPU work proportional to the
// request type, scaled by [AppOptions.Work], and is deterministic: the same
// request with the same data-tier answers gives the same response body apart
// from [Page.GeneratedAt]. Its requests to the data tier depend only on the
// request and on earlier data-tier answers, so an out-proxy can match them.
//
// Every tier serves GET /healthz.
package auction
