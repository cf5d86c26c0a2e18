package httpproxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/justrunit/justrunit"
)

// Log keys used by the proxies.
const (
	logKeyClone  = "clone"
	logKeyErr    = "err"
	logKeyAddr   = "addr"
	logKeyMethod = "method"
	logKeyURI    = "uri"
)

// hopHeaders are the hop-by-hop headers (RFC 9110, section 7.6.1) that a
// copy must not carry.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// copyHeader returns h without its hop-by-hop headers, for a copy whose
// body is already in hand (so no Expect either). A request without
// User-Agent keeps none (the transport would add Go's).
func copyHeader(h http.Header) http.Header {
	out := h.Clone()
	if out == nil {
		out = http.Header{}
	}
	for _, f := range out["Connection"] {
		for _, sf := range strings.Split(f, ",") {
			if sf = strings.TrimSpace(sf); sf != "" {
				out.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		out.Del(k)
	}
	out.Del("Expect")
	if _, ok := out["User-Agent"]; !ok {
		out["User-Agent"] = []string{""}
	}
	return out
}

// forwardingHeaders are the headers httputil.ReverseProxy strips before
// Rewrite; a transparent proxy puts them back.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// rewriteTo returns a ReverseProxy Rewrite that sends the request to target
// unchanged: same Host, same query string (ReverseProxy would drop
// parameters it cannot parse), same forwarding headers, none added.
func rewriteTo(target *url.URL) func(*httputil.ProxyRequest) {
	return func(pr *httputil.ProxyRequest) {
		pr.SetURL(target)
		pr.Out.Host = pr.In.Host
		pr.Out.URL.RawQuery = pr.In.URL.RawQuery
		for _, k := range forwardingHeaders {
			if v, ok := pr.In.Header[k]; ok {
				pr.Out.Header[k] = v
			}
		}
	}
}

// ParseUpstream parses and checks the URL of an upstream (the on-line
// instance, a clone, the next tier): an http URL with a host. field names
// it in the error.
func ParseUpstream(field, s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, justrunit.Invalid(field, s, "not a URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, justrunit.Invalid(field, s, "want an http:// or https:// URL")
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, justrunit.Invalid(field, s, "missing host")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, justrunit.Invalid(field, s, "must not have a query or fragment")
	}
	return u, nil
}

// checkResolves fails when u's host does not resolve, so that an unknown
// upstream is a configuration error at start, not a stream of 502s.
func checkResolves(ctx context.Context, field string, u *url.URL) error {
	host := u.Hostname()
	if net.ParseIP(host) != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := net.DefaultResolver.LookupHost(ctx, host); err != nil {
		return justrunit.Invalid(field, u.String(), "unknown host: %v", err)
	}
	return nil
}

// newTransport returns a transport tuned for a proxy talking HTTP/1.1 to
// one upstream: a large keep-alive pool, no compression (bodies pass
// unchanged), no proxy from the environment.
func newTransport(maxConns int) *http.Transport {
	return &http.Transport{
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   1024,
		MaxConnsPerHost:       maxConns,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		ReadBufferSize:        32 << 10,
		WriteBufferSize:       32 << 10,
	}
}

// setDefault sets *v to d when *v is the zero value: a configuration
// field left out takes its default.
func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// bufferPool is an httputil.BufferPool of 32 KiB buffers.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// server is an http.Server with its listener: a proxy's on-line or clone
// endpoint, or its control API.
type server struct {
	srv    *http.Server
	ln     net.Listener
	served chan struct{} // closed once Serve has returned
	log    *slog.Logger
	// handlerWait bounds how long close waits for the handlers still
	// running once every connection is closed (serverHandlerWait).
	handlerWait time.Duration

	mu       sync.Mutex
	handlers int           // requests being handled
	closing  bool          // close has closed the connections: no handler starts
	idle     chan struct{} // closed when handlers falls to 0 while closing
}

// serverHandlerWait is how long a server's close waits for handlers cut
// off at the grace's end. They end with their request's context, which
// closing the connection cancels (a clone's call waiting for its match or
// its recorded latency), so this is a bound on a stuck one, not a wait
// anyone should see.
const serverHandlerWait = 5 * time.Second

// listenTCP listens on addr (host:port; port 0 picks one); field names it
// in the error.
func listenTCP(field, addr string) (net.Listener, error) {
	if addr == "" {
		return nil, justrunit.Invalid(field, addr, "missing listen address (host:port; port 0 picks one)")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, justrunit.Invalid(field, addr, "cannot listen: %v", err)
	}
	return ln, nil
}

// listen listens on addr and serves h there. field names the address in a
// configuration error.
func listen(field, addr string, h http.Handler, log *slog.Logger) (*server, error) {
	ln, err := listenTCP(field, addr)
	if err != nil {
		return nil, err
	}
	return serveOn(ln, h, log), nil
}

// serveOn serves h on ln until closed.
func serveOn(ln net.Listener, h http.Handler, log *slog.Logger) *server {
	s := &server{
		ln:          ln,
		served:      make(chan struct{}),
		log:         log,
		handlerWait: serverHandlerWait,
	}
	s.srv = &http.Server{
		Handler:           s.track(h),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serve", logKeyAddr, ln.Addr().String(), logKeyErr, err)
		}
	}()
	return s
}

// track counts the requests h handles, so that close can wait for them; a
// request whose handler would start once close has closed the
// connections is not handled (its connection is closed already).
func (s *server) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		s.handlers++
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			s.handlers--
			if s.handlers == 0 && s.idle != nil {
				close(s.idle)
				s.idle = nil
			}
			s.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// close stops s: it stops accepting at once, lets requests in progress end
// for up to grace, then closes every connection and waits for the
// handlers cut off to return (handlerWait at most), so that none of them
// runs on once close has returned.
func (s *server) close(grace time.Duration) error {
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	// Serve runs in a goroutine that may not have started yet: close the
	// listener here so that the port is free when close returns, and wait
	// for that goroutine (Serve returns at once on a server shut down),
	// so that none is left when close returns.
	_ = s.ln.Close()
	<-s.served
	s.mu.Lock()
	s.closing = true
	var idle chan struct{}
	if s.handlers > 0 {
		idle = make(chan struct{})
		s.idle = idle
	}
	n := s.handlers
	s.mu.Unlock()
	if idle != nil {
		t := time.NewTimer(s.handlerWait)
		defer t.Stop()
		select {
		case <-idle:
		case <-t.C:
			s.log.Warn("handlers still running after their connections were closed; not waiting for them", logKeyAddr, s.ln.Addr().String(), "handlers", n, "waited", s.handlerWait)
		}
	}
	return err
}

// closeAll closes servers, ignoring nils.
func closeAll(grace time.Duration, ss ...*server) error {
	var errs []error
	for _, s := range ss {
		if err := s.close(grace); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// joinURL returns base with path and rawQuery of a request appended.
func joinURL(base *url.URL, path, rawPath, rawQuery string) *url.URL {
	u := *base
	if base.Path == "" || base.Path == "/" {
		u.Path, u.RawPath = path, rawPath
	} else {
		u.Path = strings.TrimSuffix(base.Path, "/") + "/" + strings.TrimPrefix(path, "/")
		u.RawPath = ""
	}
	u.RawQuery = rawQuery
	return &u
}

// discardLogger is used when a config gives no logger.
var discardLogger = slog.New(slog.DiscardHandler)

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return discardLogger
	}
	return l
}
