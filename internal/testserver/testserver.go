// Package testserver is a small CPU-bound HTTP server that the local
// platform's tests and "justrunit bench clone" run as an instance: each
// request burns a fixed amount of CPU work, it keeps a request counter in its
// state directory, stores files there on request, and calls a configured
// next tier when asked, so that allocation, cloning, copy-on-write storage
// and out-proxy redirection can be observed from outside.
//
// Endpoints:
//
//	GET  /health          200 "ok"
//	GET  /work?n=N        burns N rounds of SHA-256 (default -work), bumps the counter
//	GET  /counter         the counter
//	GET  /next?path=/p    GET <next>/p and relay the answer (502 when it fails)
//	GET  /fetch?url=U     GET any URL U and relay the answer (to test what a clone may reach)
//	PUT  /file/NAME       store the body in the state directory
//	GET  /file/NAME       read it back (404 when absent)
package testserver

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config is the server's configuration.
type Config struct {
	Addr     string // listen address
	StateDir string // where the counter and files live; empty keeps them in memory
	Next     string // base URL of the next tier; empty disables /next
	Work     int    // default SHA-256 rounds per /work request
	// MPTCP listens with MPTCP where the kernel has it (Go's default),
	// which criu cannot dump; otherwise plain TCP.
	MPTCP bool
}

// Main parses args (flags -addr, -state, -next, -work, -mptcp, -uid) and
// serves until SIGTERM or SIGINT. It returns the process exit code.
func Main(args []string) int {
	fs := flag.NewFlagSet("testserver", flag.ContinueOnError)
	var c Config
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:8080", "listen address")
	fs.StringVar(&c.StateDir, "state", "", "state directory")
	fs.StringVar(&c.Next, "next", "", "base URL of the next tier")
	fs.IntVar(&c.Work, "work", 20000, "SHA-256 rounds per /work request")
	fs.BoolVar(&c.MPTCP, "mptcp", false, "listen with MPTCP where the kernel has it (criu cannot dump it)")
	uid := fs.Int("uid", 0, "drop root for this user and group id before serving, as services such as PostgreSQL do (0: keep)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *uid > 0 {
		// Go sets the ids of every thread (since 1.16).
		if err := errors.Join(syscall.Setgroups(nil), syscall.Setgid(*uid), syscall.Setuid(*uid)); err != nil {
			fmt.Fprintln(os.Stderr, "testserver: drop root:", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := Serve(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "testserver:", err)
		return 1
	}
	return 0
}

// Serve listens on c.Addr and serves until ctx ends.
func Serve(ctx context.Context, c Config) error {
	s := &server{cfg: c, client: &http.Client{Timeout: 3 * time.Second}}
	if err := s.load(); err != nil {
		return err
	}
	// Plain TCP unless asked, as the auction example: criu (3.17 and 4.2
	// alike) cannot dump the MPTCP listeners Go opens by default, and the
	// local platform clones the server live where criu works.
	var lc net.ListenConfig
	lc.SetMultipathTCP(c.MPTCP)
	ln, err := lc.Listen(ctx, "tcp", c.Addr)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type server struct {
	cfg     Config
	client  *http.Client
	mu      sync.Mutex
	counter int64
}

func (s *server) load() error {
	if s.cfg.StateDir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(s.cfg.StateDir, "counter"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	s.counter, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return err
}

// bump increments the counter and persists it atomically (write + rename),
// so a snapshot taken at any instant holds a whole value.
func (s *server) bump() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counter++
	if s.cfg.StateDir == "" {
		return s.counter, nil
	}
	tmp := filepath.Join(s.cfg.StateDir, ".counter.tmp")
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(s.counter, 10)), 0o644); err != nil {
		return 0, err
	}
	return s.counter, os.Rename(tmp, filepath.Join(s.cfg.StateDir, "counter"))
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /work", s.handleWork)
	mux.HandleFunc("GET /counter", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		n := s.counter
		s.mu.Unlock()
		writeJSON(w, map[string]any{"counter": n, "pid": os.Getpid()})
	})
	mux.HandleFunc("GET /next", s.handleNext)
	mux.HandleFunc("GET /fetch", func(w http.ResponseWriter, r *http.Request) { s.relay(w, r.URL.Query().Get("url")) })
	mux.HandleFunc("PUT /file/{name}", s.handlePutFile)
	mux.HandleFunc("GET /file/{name}", s.handleGetFile)
	return mux
}

func (s *server) handleWork(w http.ResponseWriter, r *http.Request) {
	n := s.cfg.Work
	if v := r.URL.Query().Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
	}
	start := time.Now()
	sum := Burn(n)
	c, err := s.bump()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, map[string]any{"counter": c, "pid": os.Getpid(), "sum": fmt.Sprintf("%x", sum[:4]), "took_ms": time.Since(start).Seconds() * 1000})
}

// Burn does n rounds of SHA-256 over its own output.
func Burn(n int) [32]byte {
	var h [32]byte
	for i := 0; i < n; i++ {
		h = sha256.Sum256(h[:])
	}
	return h
}

func (s *server) handleNext(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Next == "" {
		http.Error(w, "no next tier configured", http.StatusNotFound)
		return
	}
	s.relay(w, strings.TrimRight(s.cfg.Next, "/")+r.URL.Query().Get("path"))
}

func (s *server) relay(w http.ResponseWriter, url string) {
	resp, err := s.client.Get(url)
	if err != nil {
		http.Error(w, "next tier: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

func (s *server) filePath(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	if s.cfg.StateDir == "" || name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		http.Error(w, "bad file name or no state directory", http.StatusBadRequest)
		return "", false
	}
	return filepath.Join(s.cfg.StateDir, name), true
}

func (s *server) handlePutFile(w http.ResponseWriter, r *http.Request) {
	p, ok := s.filePath(w, r)
	if !ok {
		return
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err == nil {
		err = os.WriteFile(p, b, 0o644)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) handleGetFile(w http.ResponseWriter, r *http.Request) {
	p, ok := s.filePath(w, r)
	if !ok {
		return
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = w.Write(b)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
