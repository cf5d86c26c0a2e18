package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit/internal/testutil"
)

func TestLocalURL(t *testing.T) {
	for _, tt := range []struct {
		scheme string
		addr   net.Addr
		want   string
	}{
		{"https", &net.TCPAddr{IP: net.IPv4zero, Port: 7443}, "https://127.0.0.1:7443"},
		{"https", &net.TCPAddr{IP: net.IPv6unspecified, Port: 7443}, "https://127.0.0.1:7443"},
		{"http", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7070}, "http://127.0.0.1:7070"},
		{"http", &net.TCPAddr{IP: net.IPv6loopback, Port: 7070}, "http://[::1]:7070"},
		{"https", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 7443}, "https://10.0.0.5:7443"},
	} {
		if got := LocalURL(tt.scheme, tt.addr); got != tt.want {
			t.Errorf("LocalURL(%q, %v) = %q, want %q", tt.scheme, tt.addr, got, tt.want)
		}
	}
}

// TestDiscoverTLS checks that the CLI on the daemon's machine finds a TLS
// daemon through its state file, written as serve writes it: listening on
// an unspecified address (which no certificate names), or with a
// certificate that names neither the URL's host nor loopback, only a
// wildcard among them.
func TestDiscoverTLS(t *testing.T) {
	clearClientEnv(t)
	d := newDaemon(t, daemonOpts{noRunner: true})
	seedStudy(t, d.store)
	for _, tt := range []struct {
		name   string
		listen string
		dns    []string
		ips    []net.IP
	}{
		{"on 0.0.0.0", "0.0.0.0:0", nil, []net.IP{net.IPv4(127, 0, 0, 1)}},
		{"on ::", "[::]:0", nil, []net.IP{net.IPv4(127, 0, 0, 1)}},
		{"certificate for a DNS name only", "0.0.0.0:0", []string{"*.example.test", "justrunit.example.test"}, nil},
		{"certificate for a wildcard name only", "0.0.0.0:0", []string{"*.example.test"}, nil},
		{"certificate for a wildcard name, on a specific address", "127.0.0.1:0", []string{"*.example.test"}, nil},
		{"certificate for another address", "127.0.0.1:0", nil, []net.IP{net.IPv4(10, 0, 0, 5)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cert, caFile, _ := testutil.SelfSigned(t, dir, tt.dns, tt.ips)
			ln, err := net.Listen("tcp", tt.listen)
			if err != nil {
				t.Skipf("cannot listen on %s here: %v", tt.listen, err)
			}
			hs := &http.Server{Handler: d.srv, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
			go hs.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
			defer hs.Close()

			url := LocalURL("https", ln.Addr())
			tokFile := filepath.Join(dir, "token")
			os.WriteFile(tokFile, []byte(testToken+"\n"), 0o600)
			if _, err := WriteState(dir, DaemonState{URL: url, PID: os.Getpid(), TokenFile: tokFile,
				CAFile: caFile, ServerName: ServerName(cert.Leaf, url)}); err != nil {
				t.Fatal(err)
			}
			c, err := Discover(context.Background(), DiscoverOptions{DataDir: dir})
			if err != nil {
				t.Fatalf("Discover of a daemon on %s at %s: %v", tt.listen, url, err)
			}
			if studies, err := c.Studies(context.Background()); err != nil || len(studies) != 1 {
				t.Errorf("Studies through the discovered daemon = %d, %v", len(studies), err)
			}
		})
	}
}

// TestHealthProof checks GET /healthz's answer to a challenge: the proof
// that the daemon holds its token, bound to the Host the client sent and
// given only for a Host of the daemon's own (its address, a name it was
// given), none from a daemon without a token, and a challenge too long
// refused.
func TestHealthProof(t *testing.T) {
	for _, tt := range []struct {
		name      string
		noAuth    bool
		names     []string
		host      string // the request's Host; "": the daemon's address
		challenge string
		status    int
		proof     bool
	}{
		{name: "no challenge", status: 200},
		{name: "challenge", challenge: "c0ffee", status: 200, proof: true},
		{name: "no token", noAuth: true, challenge: "c0ffee", status: 200},
		{name: "challenge too long", challenge: strings.Repeat("c", maxChallenge+1), status: 400},
		{name: "another server's Host", host: "relay.example.test:7070", challenge: "c0ffee", status: 200},
		{name: "localhost, daemon on 127.0.0.1", host: "localhost:PORT", challenge: "c0ffee", status: 200},
		{name: "its address, another port", host: "127.0.0.1:1", challenge: "c0ffee", status: 200},
		{name: "a name it was given", names: []string{"JRI.example.test"}, host: "jri.example.test.:443", challenge: "c0ffee", status: 200, proof: true},
		{name: "a name and port it was given", names: []string{"tunnel.test:9000"}, host: "tunnel.test:9000", challenge: "c0ffee", status: 200, proof: true},
		{name: "a name on another port than given", names: []string{"tunnel.test:9000"}, host: "tunnel.test:9001", challenge: "c0ffee", status: 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDaemon(t, daemonOpts{noRunner: true, noAuth: tt.noAuth, names: tt.names})
			path := "/healthz"
			if tt.challenge != "" {
				path += "?challenge=" + tt.challenge
			}
			hd := http.Header{}
			host := strings.TrimPrefix(d.hs.URL, "http://")
			if tt.host != "" {
				_, port, _ := net.SplitHostPort(host)
				host = strings.Replace(tt.host, "PORT", port, 1)
				hd.Set("Host", host)
			}
			code, body := d.callWith("GET", path, "", hd, nil)
			if code != tt.status {
				t.Fatalf("GET %s = %d %s, want %d", path, code, body, tt.status)
			}
			if code != 200 {
				return
			}
			var h Health
			if err := json.Unmarshal(body, &h); err != nil {
				t.Fatal(err)
			}
			want := ""
			if tt.proof {
				want = HealthProof(testToken, d.srv.ID(), host, tt.challenge)
			}
			refused := tt.challenge != "" && !tt.noAuth && !tt.proof
			if h.Daemon != d.srv.ID() || h.Proof != want || (h.ProofRefused != "") != refused {
				t.Errorf("GET %s (Host %s) = %+v, want daemon %q, proof %q, refused %v", path, host, h, d.srv.ID(), want, refused)
			}
		})
	}
}

// TestHostNames checks which Host values a daemon takes for its own, by
// the address it listens on.
func TestHostNames(t *testing.T) {
	local := func() ([]net.IP, error) {
		return []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 0, 0, 5), net.ParseIP("fd00::5")}, nil
	}
	for _, tt := range []struct {
		listen  string
		names   []string
		own     []string
		foreign []string
	}{
		{listen: "127.0.0.1:7070",
			own:     []string{"127.0.0.1:7070", "[::ffff:127.0.0.1]:7070"},
			foreign: []string{"localhost:7070", "[::1]:7070", "127.0.0.1:7071", "127.0.0.1", "10.0.0.5:7070", "evil.test:7070"}},
		{listen: "[::]:7070",
			own:     []string{"127.0.0.1:7070", "[::1]:7070", "localhost:7070", "LOCALHOST.:7070", "10.0.0.5:7070", "[fd00::5]:7070"},
			foreign: []string{"10.0.0.6:7070", "10.0.0.5:80", "10.0.0.5", "host.test:7070"}},
		{listen: "0.0.0.0:7070",
			own:     []string{"127.0.0.1:7070", "10.0.0.5:7070"},
			foreign: []string{"[::1]:7070", "localhost:7070", "[fd00::5]:7070"}},
		{listen: "10.0.0.5:80",
			own:     []string{"10.0.0.5:80", "10.0.0.5"},
			foreign: []string{"127.0.0.1:80"}},
		{listen: "127.0.0.1:7070", names: []string{"jri.example.test", "Tunnel.test:9000", "[::1]:9001"},
			own:     []string{"jri.example.test", "jri.example.test:8443", "tunnel.TEST:9000", "[::1]:9001"},
			foreign: []string{"tunnel.test:7070", "tunnel.test", "[::1]:7070", "other.example.test:7070"}},
	} {
		ta, err := net.ResolveTCPAddr("tcp", tt.listen)
		if err != nil {
			t.Fatal(err)
		}
		h, err := newHostNames(ta, tt.names)
		if err != nil {
			t.Fatalf("newHostNames(%s, %q): %v", tt.listen, tt.names, err)
		}
		h.localIPs = local
		for _, host := range tt.own {
			if !h.owns(host, "80") {
				t.Errorf("a daemon on %s (names %q) does not own Host %q", tt.listen, tt.names, host)
			}
		}
		for _, host := range tt.foreign {
			if h.owns(host, "80") {
				t.Errorf("a daemon on %s (names %q) owns Host %q", tt.listen, tt.names, host)
			}
		}
	}
	for _, bad := range []string{"", "http://jri.example.test", "jri.example.test/api", "jri.example.test:", "jri.example.test:0",
		"jri.example.test:http", "[::1]:65536", "user@host", ":7070"} {
		if err := CheckName(bad); err == nil {
			t.Errorf("CheckName(%q) = nil, want an error", bad)
		}
	}
	for _, good := range []string{"jri.example.test", "jri.example.test:8443", "10.0.0.5", "[::1]:7070", "::1"} {
		if err := CheckName(good); err != nil {
			t.Errorf("CheckName(%q) = %v", good, err)
		}
	}
	d := newDaemon(t, daemonOpts{noRunner: true})
	if _, err := New(Config{Store: d.store, Token: testToken, Names: []string{"jri.example.test"}}); err == nil {
		t.Error("New with Names but no Listen succeeded")
	}
}

// TestDiscoverRefusesRelay checks that a server that passes the CLI's
// calls on to the daemon (found where a state file says the daemon is)
// never gets the token: passing the CLI's Host on, it gets no proof from
// the daemon; sending the daemon's own, a proof for a Host the CLI did not
// dial, which the CLI refuses. Given a name (serve --name), the daemon
// proves itself through the same relay, now a tunnel its operator set up;
// named by the user with the token, the relay is sent the token without a
// proof: the user vouches for it.
func TestDiscoverRefusesRelay(t *testing.T) {
	clearClientEnv(t)
	var sawToken tokenSeen
	for _, tt := range []struct {
		name        string
		rewriteHost bool
		asName      bool // the daemon was given the relay's address as a name
		named       bool // $JUSTRUNIT_SERVER and $JUSTRUNIT_TOKEN name the relay and the token: the user vouches
		wantErr     string
	}{
		{name: "relay passing the Host on", wantErr: "not a name of this daemon"},
		{name: "relay sending the daemon's Host", rewriteHost: true, wantErr: "does not hold"},
		{name: "a tunnel the daemon was told of", asName: true},
		{name: "a tunnel named with the token given", named: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sawToken.Store(false)
			// The relay's address first, so that the daemon can be given it.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			relayAddr := ln.Addr().String()
			var names []string
			if tt.asName {
				names = []string{relayAddr}
			}
			d := newDaemon(t, daemonOpts{noRunner: true, names: names, wrap: sawToken.watch})
			seedStudy(t, d.store)
			relay := httptest.NewUnstartedServer(nil)
			relay.Listener.Close()
			relay.Listener = ln
			u, _ := url.Parse(d.hs.URL)
			rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(u)
				if !tt.rewriteHost {
					pr.Out.Host = pr.In.Host
				}
			}, ErrorLog: log.New(io.Discard, "", 0)}
			relay.Config.Handler = rp
			relay.Start()
			t.Cleanup(relay.Close)

			dir := t.TempDir()
			tokFile := filepath.Join(dir, "token")
			os.WriteFile(tokFile, []byte(testToken+"\n"), 0o600)
			if _, err := WriteState(dir, DaemonState{URL: relay.URL, PID: os.Getpid(), TokenFile: tokFile, Daemon: d.srv.ID()}); err != nil {
				t.Fatal(err)
			}
			t.Setenv(EnvServer, "")
			t.Setenv(EnvToken, "")
			if tt.named {
				t.Setenv(EnvServer, relay.URL)
				t.Setenv(EnvToken, testToken)
			}
			c, err := Discover(context.Background(), DiscoverOptions{DataDir: dir})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Discover through a relay = %v, want an error saying %q", err, tt.wantErr)
				}
				if sawToken.Load() {
					t.Error("the token went through the relay")
				}
				return
			}
			if err != nil {
				t.Fatalf("Discover through a tunnel: %v", err)
			}
			if studies, err := c.Studies(context.Background()); err != nil || len(studies) != 1 {
				t.Errorf("Studies through the tunnel = %d, %v", len(studies), err)
			}
		})
	}
}

// TestDiscoverSendsTokenOnlyToTheDaemon checks that the CLI sends its token
// to no server that has not proved it holds it and, found through the
// state file, that it is the daemon that wrote it: whatever now listens
// where a dead daemon did never sees the token.
func TestDiscoverSendsTokenOnlyToTheDaemon(t *testing.T) {
	clearClientEnv(t)
	// A squatter mimics /healthz, with a proof it cannot make, or none.
	squatter := func(proof string) (string, *tokenSeen) {
		s := &tokenSeen{}
		hs := httptest.NewServer(s.watch(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, Health{Status: "ok", Service: "justrunit", Daemon: "d1", Proof: proof})
		})))
		t.Cleanup(hs.Close)
		return hs.URL, s
	}
	daemon := func() (url, id string, s *tokenSeen) {
		s = &tokenSeen{}
		d := newDaemon(t, daemonOpts{noRunner: true, wrap: s.watch})
		return d.hs.URL, d.srv.ID(), s
	}
	forging, forgingSaw := squatter("0123abcd")
	silent, silentSaw := squatter("")
	ours, oursID, oursSaw := daemon()
	other, _, otherSaw := daemon() // another daemon with the same token
	for _, tt := range []struct {
		name      string
		url, id   string
		saw       *tokenSeen
		wantErr   error // nil: found
		wantToken bool
	}{
		// A proof for another token may be the daemon's, its token
		// changed: it is said, not taken for no daemon.
		{"squatter with a forged proof", forging, "d1", forgingSaw, ErrUnauthorized, false},
		{"squatter that says it needs no token", silent, "d1", silentSaw, nil, false},
		{"another daemon with the same token", other, oursID, otherSaw, ErrNoDaemon, false},
		{"the daemon", ours, oursID, oursSaw, nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tokFile := filepath.Join(dir, "token")
			os.WriteFile(tokFile, []byte(testToken+"\n"), 0o600)
			if _, err := WriteState(dir, DaemonState{URL: tt.url, PID: os.Getpid(), TokenFile: tokFile, Daemon: tt.id}); err != nil {
				t.Fatal(err)
			}
			c, err := Discover(context.Background(), DiscoverOptions{DataDir: dir})
			if (tt.wantErr == nil) != (err == nil) || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Discover = %v, want %v", err, tt.wantErr)
			}
			if c != nil {
				c.Studies(context.Background())
			}
			if got := tt.saw.Load(); got != tt.wantToken {
				t.Errorf("the server saw a token: %v, want %v", got, tt.wantToken)
			}
		})
	}
}

// olderDaemon makes h answer GET /healthz as a daemon from before token
// proofs did: without its ID or a proof, whatever the challenge.
func olderDaemon(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "service": "justrunit"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// TestDiscoverOlderDaemon checks a daemon started before token proofs (the
// CLI upgraded first): it is sent a token the user gives, who vouches for
// it, and calls through it work; the token from its token file, found
// through its state file, is not sent, and Discover says why rather than
// every call answering 401.
func TestDiscoverOlderDaemon(t *testing.T) {
	var sawToken tokenSeen
	d := newDaemon(t, daemonOpts{noRunner: true, wrap: func(h http.Handler) http.Handler { return olderDaemon(sawToken.watch(h)) }})
	seedStudy(t, d.store)
	for _, tt := range []struct {
		name      string
		named     bool   // $JUSTRUNIT_SERVER, else the state file
		env       string // $JUSTRUNIT_TOKEN
		envFile   bool   // $JUSTRUNIT_TOKEN_FILE names the token file
		opt       string // DiscoverOptions.Token
		wantErr   string // in Discover's error
		callErr   string // in the error of a call through the client
		wantToken bool
	}{
		{name: "named, token given", named: true, opt: testToken, wantToken: true},
		{name: "named, $JUSTRUNIT_TOKEN", named: true, env: testToken, wantToken: true},
		{name: "named, $JUSTRUNIT_TOKEN_FILE", named: true, envFile: true, wantToken: true},
		{name: "state file, $JUSTRUNIT_TOKEN", env: testToken, wantToken: true},
		{name: "named, wrong $JUSTRUNIT_TOKEN", named: true, env: "not-the-token", callErr: "$JUSTRUNIT_TOKEN", wantToken: true},
		{name: "state file, its token file", wantErr: "restart it"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sawToken.Store(false)
			dir := t.TempDir()
			tokFile := filepath.Join(dir, "token")
			os.WriteFile(tokFile, []byte(testToken+"\n"), 0o600)
			// A state file as such a daemon wrote it: no daemon ID.
			if _, err := WriteState(dir, DaemonState{URL: d.hs.URL, PID: os.Getpid(), TokenFile: tokFile}); err != nil {
				t.Fatal(err)
			}
			t.Setenv(EnvServer, "")
			if tt.named {
				t.Setenv(EnvServer, d.hs.URL)
			}
			t.Setenv(EnvToken, tt.env)
			t.Setenv(EnvTokenFile, "")
			if tt.envFile {
				t.Setenv(EnvTokenFile, tokFile)
			}
			t.Setenv(EnvCAFile, "")
			c, err := Discover(context.Background(), DiscoverOptions{DataDir: dir, Token: tt.opt})
			if tt.wantErr != "" {
				if err == nil || errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Discover = %v, want an error saying %q (not ErrNoDaemon)", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("Discover: %v", err)
			}
			if c != nil {
				_, err := c.Studies(context.Background())
				switch {
				case tt.callErr == "" && err != nil:
					t.Errorf("Studies through the older daemon: %v", err)
				case tt.callErr != "" && (err == nil || !strings.Contains(err.Error(), tt.callErr)):
					t.Errorf("Studies through the older daemon: %v, want an error saying %q", err, tt.callErr)
				}
			}
			if got := sawToken.Load(); got != tt.wantToken {
				t.Errorf("the older daemon saw a token: %v, want %v", got, tt.wantToken)
			}
		})
	}
}

// TestDiscoverWrongToken checks that a daemon that proves it holds another
// token than the CLI's (a wrong one, or the daemon's token changed since)
// is an error that says where the token came from, not "no daemon", which
// would make "study list" read the store file under the running daemon;
// and that the token is not sent.
func TestDiscoverWrongToken(t *testing.T) {
	var sawToken tokenSeen
	d := newDaemon(t, daemonOpts{noRunner: true, wrap: sawToken.watch})
	for _, tt := range []struct {
		name  string
		named bool // $JUSTRUNIT_SERVER and $JUSTRUNIT_TOKEN, else the state file and its token file
		want  string
	}{
		{"state file, its token file", false, "token file"},
		{"named, $JUSTRUNIT_TOKEN", true, "$JUSTRUNIT_TOKEN"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sawToken.Store(false)
			dir := t.TempDir()
			tokFile := filepath.Join(dir, "token")
			os.WriteFile(tokFile, []byte("rotated-token\n"), 0o600)
			if _, err := WriteState(dir, DaemonState{URL: d.hs.URL, PID: os.Getpid(), TokenFile: tokFile, Daemon: d.srv.ID()}); err != nil {
				t.Fatal(err)
			}
			t.Setenv(EnvServer, "")
			t.Setenv(EnvToken, "")
			if tt.named {
				t.Setenv(EnvServer, d.hs.URL)
				t.Setenv(EnvToken, "wrong-token")
			}
			t.Setenv(EnvTokenFile, "")
			t.Setenv(EnvCAFile, "")
			_, err := Discover(context.Background(), DiscoverOptions{DataDir: dir})
			if !errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Discover with a wrong token = %v, want ErrUnauthorized naming %q", err, tt.want)
			}
			if sawToken.Load() {
				t.Error("the daemon was sent a token it does not hold")
			}
		})
	}
}

// TestDiscoverTokenOnlyOverProvedConnections checks that a client Discover
// returns, kept through a daemon's death ("study run" polls its study
// through a restart), does not send its token to whatever listens at the
// daemon's address next, and that its calls go on once a daemon holding
// the token listens there again.
func TestDiscoverTokenOnlyOverProvedConnections(t *testing.T) {
	clearClientEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	// The daemon serves at addr too, which it is told of.
	d := newDaemon(t, daemonOpts{noRunner: true, names: []string{addr}})
	seedStudy(t, d.store)
	serve := func(ln net.Listener, h http.Handler) *http.Server {
		hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
		go hs.Serve(ln)
		t.Cleanup(func() { hs.Close() })
		return hs
	}
	relisten := func() net.Listener {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("cannot listen again on %s: %v", addr, err)
		}
		return ln
	}
	daemon := serve(ln, d.srv)
	c, err := Discover(context.Background(), DiscoverOptions{Server: "http://" + addr, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Studies(context.Background()); err != nil {
		t.Fatalf("Studies through the daemon: %v", err)
	}

	daemon.Close() // the daemon dies, and another server takes its address
	var sawToken tokenSeen
	squatter := serve(relisten(), sawToken.watch(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, Health{Status: "ok", Service: "justrunit", Daemon: "d1"})
	})))
	if _, err := c.Study(context.Background(), "s1"); err == nil {
		t.Error("Study through the server that took the dead daemon's address succeeded")
	}
	if sawToken.Load() {
		t.Error("the server that took the dead daemon's address got the token")
	}

	squatter.Close() // a daemon with the token listens there again
	serve(relisten(), d.srv)
	if _, err := c.Studies(context.Background()); err != nil {
		t.Errorf("Studies through the restarted daemon: %v", err)
	}
}
