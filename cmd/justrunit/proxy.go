package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/proxy/httpproxy"
)

func init() { addCommand(newProxyCmd) }

func newProxyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the HTTP in-proxy or out-proxy in front of or behind a real tier",
		Long: `Run one of JustRunIt's HTTP/1.1 workload-duplication proxies.

"proxy in" sits before a tier: it forwards every request to the on-line
instance unchanged and copies it, at its arrival time, to the clones attached
to it; a slow, hung or dead clone never delays or drops an on-line request.

"proxy out" sits after a tier: it forwards the on-line instance's calls to the
real next tier, records them, and answers a clone's calls from that record.

Both print one JSON line on stdout once listening ({"listen": ...}) and their
final statistics as JSON on stdout when stopped (SIGINT or SIGTERM).`,
	}
	cmd.AddCommand(newProxyInCmd(g), newProxyOutCmd(g))
	return cmd
}

// tuneGC trades a little memory for CPU: a proxy's live heap is small (a
// few MiB plus the bounded copies and record), so collecting at 4x instead
// of 2x of it costs little memory and saves collector work on the on-line
// path. GOGC in the environment wins.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}

// flagError renames the field of a configuration error after the flag
// that sets it ("clone_listen" → "--clone-listen").
func flagError(err error) error {
	var fe *justrunit.FieldError
	if errors.As(err, &fe) && !strings.HasPrefix(fe.Field, "--") {
		fe.Field = "--" + strings.ReplaceAll(fe.Field, "_", "-")
	}
	return err
}

// maskFlags are the masks both proxies take.
type maskFlags struct {
	regexps, jsonPaths []string
}

func (m *maskFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&m.regexps, "mask-regex", nil,
		"regexp whose matches (or capture groups, if it has any) are masked in targets and bodies; repeatable")
	cmd.Flags().StringArrayVar(&m.jsonPaths, "mask-json", nil,
		`JSON path masked in JSON bodies, e.g. '$.ts', 'items[*].id', '$..token'; repeatable`)
}

func (m *maskFlags) parse() (httpproxy.Masks, error) {
	masks, err := httpproxy.ParseMasks(m.regexps, m.jsonPaths)
	return masks, flagError(err)
}

// parseBytes parses a size: a number of bytes with an optional suffix
// KiB, MiB, GiB (or K, M, G, taken as binary too). A size that does not fit
// in an int64 is refused, as is 0: the proxies would take it for "the
// default", which is not what a size of 0 says.
func parseBytes(flag, s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if errors.Is(err, strconv.ErrRange) || (err == nil && n > math.MaxInt64/mult) {
		return 0, justrunit.Invalid(flag, s, "too large: at most %d bytes (8 EiB)", int64(math.MaxInt64))
	}
	if err != nil || n < 0 {
		return 0, justrunit.Invalid(flag, s, "want a size in bytes, e.g. 1048576, 512KiB or 64MiB")
	}
	if n == 0 {
		return 0, justrunit.Invalid(flag, s, "must be > 0")
	}
	return n * mult, nil
}

// checkDuration checks a duration flag: d must be > 0, or ≥ 0 when zero
// is allowed (zeroOK, the flag's documented "never" or "none").
func checkDuration(flag string, d time.Duration, zeroOK bool) error {
	switch {
	case d < 0:
		return justrunit.Invalid(flag, d, "must not be negative")
	case d == 0 && !zeroOK:
		return justrunit.Invalid(flag, d, "must be > 0")
	}
	return nil
}

// printJSONLine writes v as one JSON line.
func printJSONLine(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintln(w, string(b))
}

// logStats calls f every d until ctx ends; d ≤ 0 does nothing.
func logStats(ctx context.Context, d time.Duration, f func()) {
	if d <= 0 {
		return
	}
	go func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f()
			}
		}
	}()
}

func newProxyInCmd(g *globals) *cobra.Command {
	var (
		listen, online, control              string
		clones                               []string
		maxCopyBody, maxCloneBytes           string
		maxInFlight                          int
		copyTimeout, statsInterval, cloneLag time.Duration
		compare                              bool
		masks                                maskFlags
	)
	cmd := &cobra.Command{
		Use:   "in",
		Short: "Forward requests to the on-line instance and copy them to clones",
		Long: `Forward every request to the on-line instance unchanged and copy it, at the
moment it arrived, to each attached clone. Copies are sent asynchronously and
bounded per clone (copies and bytes in flight); a copy that cannot be sent is
dropped and counted, never waited for. The proxy measures each clone's
response time and throughput as the previous tier would see them, and the
on-line instance's too.

Clones are given with --clone NAME=URL and can be attached and detached at run
time through the control API (--control, a loopback address; no
authentication):

  GET    /clones            list the attached clones
  PUT    /clones/NAME       attach: body {"url": "http://host:port"}
  DELETE /clones/NAME       detach; answers the clone's final statistics
  GET    /stats             statistics of the current window
  POST   /stats/reset       end the window and answer its statistics

Statistics per clone: sent, dropped, skipped_large, in_flight, compared,
mismatched, mismatch_rate and the response-time summary; 5xx answers and
transport errors count as errors. A clone that has answered no copy for a whole
--copy-timeout while copies timed out is shown not_answering: it is sent one copy
at a time (the others dropped) until it answers, so that a hung clone is not
dialled --max-in-flight times over every copy timeout.`,
		Example: `  justrunit proxy in --listen 127.0.0.1:8080 --online http://127.0.0.1:9000 \
      --clone c1=http://127.0.0.1:9100 --control 127.0.0.1:8079

  curl -X PUT -d '{"url":"http://127.0.0.1:9200"}' http://127.0.0.1:8079/clones/c2
  curl -X POST http://127.0.0.1:8079/stats/reset`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			defer func() { err = flagError(err) }()
			tuneGC()
			// Check every flag before listening anywhere.
			cfg := httpproxy.InConfig{MaxInFlight: maxInFlight, CopyTimeout: copyTimeout, Compare: compare, CloneLag: cloneLag, Logger: g.logger}
			if cfg.Online, err = httpproxy.ParseUpstream("--online", online); err != nil {
				return err
			}
			if cfg.MaxCopyBody, err = parseBytes("--max-copy-body", maxCopyBody); err != nil {
				return err
			}
			if cfg.MaxCloneBytes, err = parseBytes("--max-clone-bytes", maxCloneBytes); err != nil {
				return err
			}
			if maxInFlight < 1 {
				return justrunit.Invalid("--max-in-flight", maxInFlight, "must be ≥ 1")
			}
			if err := checkDuration("--copy-timeout", copyTimeout, false); err != nil {
				return err
			}
			if err := checkDuration("--clone-lag", cloneLag, true); err != nil {
				return err
			}
			if err := checkDuration("--stats-interval", statsInterval, true); err != nil {
				return err
			}
			if cfg.Masks, err = masks.parse(); err != nil {
				return err
			}
			type cloneArg struct{ name, url string }
			var parsed []cloneArg
			for i, c := range clones {
				name, u, ok := strings.Cut(c, "=")
				if !ok || name == "" {
					return justrunit.Invalid(fmt.Sprintf("--clone[%d]", i), c, "want NAME=URL")
				}
				if _, err := httpproxy.ParseUpstream(fmt.Sprintf("--clone[%d]", i), u); err != nil {
					return err
				}
				parsed = append(parsed, cloneArg{name, u})
			}
			p, err := httpproxy.NewInProxy(cfg)
			if err != nil {
				return err
			}
			defer p.Close()
			ctx := cmd.Context()
			for _, c := range parsed {
				u, _ := httpproxy.ParseUpstream("--clone", c.url)
				if err := p.AddClone(ctx, c.name, u); err != nil {
					return err
				}
			}
			ready := map[string]string{}
			var ctl *httpproxy.Control
			if control != "" {
				if ctl, err = httpproxy.ServeControl(control, p.ControlHandler()); err != nil {
					return err
				}
				defer ctl.Close()
				ready["control"] = ctl.Addr().String()
			}
			addr, err := p.Start(ctx, listen)
			if err != nil {
				return err
			}
			ready["listen"] = addr.String()
			g.logger.Info("in-proxy listening", "addr", addr.String(), "online", cfg.Online.String(), "clones", p.Clones())
			printJSONLine(cmd.OutOrStdout(), ready)
			logStats(ctx, statsInterval, func() { logInStats(g.logger, p.Reset()) })
			<-ctx.Done()
			st := p.Stats()
			printJSONLine(cmd.OutOrStdout(), st)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:8080", "address to serve the on-line path on (host:port; port 0 picks one)")
	f.StringVar(&online, "online", "", "URL of the on-line instance (required)")
	f.StringArrayVar(&clones, "clone", nil, "clone to copy requests to, NAME=URL; repeatable")
	f.StringVar(&control, "control", "", "loopback address for the control API (empty: none)")
	f.StringVar(&maxCopyBody, "max-copy-body", "1MiB", "largest request body copied; larger ones are counted as skipped_large")
	f.IntVar(&maxInFlight, "max-in-flight", httpproxy.DefaultMaxInFlight, "copies in flight per clone; beyond, copies are dropped")
	f.StringVar(&maxCloneBytes, "max-clone-bytes", "64MiB", "bytes held per clone (copies in flight or lagged, and with --compare the response bodies kept to compare its answers, its own and the on-line ones); beyond, copies are dropped and answers not compared")
	f.DurationVar(&copyTimeout, "copy-timeout", httpproxy.DefaultCopyTimeout, "limit on one copy; a copy that takes longer is an error")
	f.DurationVar(&cloneLag, "clone-lag", 0, "delay every copy by this much after the on-line arrival (inter-arrival times kept): behind an out-proxy, lets the on-line calls be recorded before a clone makes them")
	f.BoolVar(&compare, "compare", false, "compare each clone answer with the on-line one (status and masked body)")
	f.DurationVar(&statsInterval, "stats-interval", 0, "log statistics (and start a new window) this often; 0: never")
	masks.add(cmd)
	_ = cmd.MarkFlagRequired("online")
	return cmd
}

func logInStats(l *slog.Logger, st httpproxy.InStats) {
	l.Info("on-line", "count", st.Online.Count, "errors", st.Online.Errors, "unobserved", st.Unobserved,
		"rps", fmt.Sprintf("%.1f", st.Online.Throughput), "p95_ms", st.Online.RT.P95, "p99_ms", st.Online.RT.P99)
	for _, c := range st.Clones {
		l.Info("clone", "clone", c.Name, "sent", c.Sent, "dropped", c.Dropped, "skipped_large", c.SkippedLarge,
			"in_flight", c.InFlight, "not_answering", c.NotAnswering, "errors", c.Response.Errors, "p95_ms", c.Response.RT.P95, "mismatch_rate", c.MismatchRate)
	}
}

func newProxyOutCmd(g *globals) *cobra.Command {
	var (
		listen, cloneListen, upstream, control string
		maxRecordBytes, maxBody                string
		window, matchWait, statsInterval       time.Duration
		fallbackStatus                         int
		passThrough                            []string
		masks                                  maskFlags
		reuseReads, standIn                    bool
	)
	cmd := &cobra.Command{
		Use:   "out",
		Short: "Record the on-line instance's next-tier calls and answer clones from the record",
		Long: `Sit between a tier and its next tier. On --listen, the on-line instance's calls
are forwarded to --upstream unchanged and each exchange is recorded. On
--clone-listen, a clone's calls are answered from that record: matched by
normalised key (method, path, sorted query, body, with the masks applied),
consumed in order within --window, answered after the latency the next tier
showed. A clone's call that arrives before the matching on-line call has
ended waits up to --match-wait for it. With --reuse-reads, a read (a safe
method) is answered at once with the latest exchange of the same key instead;
with --stand-in, a read nothing matches is answered with the latest exchange
of its route (method, path with its numeric segments as *, query names): the
same kind of call about another item, counted as unmatched (stood_in). Both
keep a clone faster than an overloaded on-line instance from being held to
its pace.

Which callers are clones is decided by the listener they reach: point the
on-line instance at --listen and the clones at --clone-listen (the sandbox's
NAT does this for clones). Unmatched clone calls are answered with
--fallback-status (header X-Justrunit-Unmatched: 1), or passed through to the
real next tier for the safe methods named in --pass-through (GET, HEAD,
OPTIONS, TRACE only): a clone's writes never reach the on-line next tier.

The record is bounded by --window and --max-record-bytes; its size is in the
statistics (match_rate, matched, unmatched, stood_in, passed_through, recorded,
not_recorded, record.bytes). Control API (--control, loopback only):
GET /stats, POST /stats/reset.`,
		Example: `  justrunit proxy out --listen 127.0.0.1:5433 --clone-listen 127.0.0.1:5434 \
      --upstream http://127.0.0.1:5432 --mask-json '$.ts' --pass-through GET,HEAD`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			defer func() { err = flagError(err) }()
			tuneGC()
			cfg := httpproxy.OutConfig{Window: window, MatchWait: matchWait, FallbackStatus: fallbackStatus, ReuseReads: reuseReads, StandIn: standIn, Logger: g.logger}
			if cfg.Upstream, err = httpproxy.ParseUpstream("--upstream", upstream); err != nil {
				return err
			}
			if cfg.MaxRecordBytes, err = parseBytes("--max-record-bytes", maxRecordBytes); err != nil {
				return err
			}
			if cfg.MaxBody, err = parseBytes("--max-body", maxBody); err != nil {
				return err
			}
			if err := checkDuration("--window", window, false); err != nil {
				return err
			}
			if matchWait == 0 {
				cfg.MatchWait = -1 // the config's 0 is its default; the flag's is "not at all"
			}
			if fallbackStatus < 200 || fallbackStatus > 599 {
				return justrunit.Invalid("--fallback-status", fallbackStatus, "want an HTTP status 200..599")
			}
			if cloneListen == "" {
				return justrunit.Invalid("--clone-listen", cloneListen, "want the address the clones' calls come to (host:port)")
			}
			if err := checkDuration("--stats-interval", statsInterval, true); err != nil {
				return err
			}
			if cfg.Masks, err = masks.parse(); err != nil {
				return err
			}
			for _, m := range passThrough {
				for _, s := range strings.Split(m, ",") {
					if s = strings.TrimSpace(s); s != "" {
						cfg.PassThrough = append(cfg.PassThrough, s)
					}
				}
			}
			p, err := httpproxy.NewOutProxy(cfg)
			if err != nil {
				return err
			}
			defer p.Close()
			ctx := cmd.Context()
			ready := map[string]string{}
			if control != "" {
				ctl, err := httpproxy.ServeControl(control, p.ControlHandler())
				if err != nil {
					return err
				}
				defer ctl.Close()
				ready["control"] = ctl.Addr().String()
			}
			on, cl, err := p.Start(ctx, listen, cloneListen)
			if err != nil {
				return err
			}
			ready["listen"], ready["clone_listen"] = on.String(), cl.String()
			g.logger.Info("out-proxy listening", "online", on.String(), "clones", cl.String(), "upstream", cfg.Upstream.String())
			printJSONLine(cmd.OutOrStdout(), ready)
			logStats(ctx, statsInterval, func() {
				st := p.Reset()
				g.logger.Info("out-proxy", "recorded", st.Recorded, "matched", st.Matched, "unmatched", st.Unmatched,
					"stood_in", st.StoodIn, "passed_through", st.PassedThrough, "match_rate", st.MatchRate, "record_bytes", st.Record.Bytes)
			})
			<-ctx.Done()
			printJSONLine(cmd.OutOrStdout(), p.Stats())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:8081", "address for the on-line instance's calls")
	f.StringVar(&cloneListen, "clone-listen", "127.0.0.1:8082", "address for the clones' calls")
	f.StringVar(&upstream, "upstream", "", "URL of the real next tier (required)")
	f.StringVar(&control, "control", "", "loopback address for the control API (empty: none)")
	f.DurationVar(&window, "window", httpproxy.DefaultWindow, "how long an exchange is kept and can be matched")
	f.StringVar(&maxRecordBytes, "max-record-bytes", "64MiB", "memory bound of the record; oldest evicted first")
	f.StringVar(&maxBody, "max-body", "1MiB", "largest request or response body recorded")
	f.DurationVar(&matchWait, "match-wait", httpproxy.DefaultMatchWait, "how long a clone call waits for its on-line match; 0 or negative: not at all")
	f.IntVar(&fallbackStatus, "fallback-status", httpproxy.DefaultFallbackStatus, "status answered to unmatched clone calls")
	f.StringSliceVar(&passThrough, "pass-through", nil, "safe methods whose unmatched clone calls go to the real next tier, e.g. GET,HEAD")
	f.BoolVar(&reuseReads, "reuse-reads", false, "answer a clone's read with the latest exchange of the same key when none is left to take")
	f.BoolVar(&standIn, "stand-in", false, "answer a clone's read that nothing matches with the latest exchange of its route")
	f.DurationVar(&statsInterval, "stats-interval", 0, "log statistics (and start a new window) this often; 0: never")
	masks.add(cmd)
	_ = cmd.MarkFlagRequired("upstream")
	return cmd
}
