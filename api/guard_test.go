package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// TestCrossOriginRefused: a page from another site cannot act on the
// daemon, with or without a token — its POST is refused before the handler
// runs — while the daemon's own pages and programs (no Origin) can.
func TestCrossOriginRefused(t *testing.T) {
	for _, noAuth := range []bool{true, false} {
		t.Run(map[bool]string{true: "no-auth", false: "token"}[noAuth], func(t *testing.T) {
			d := newDaemon(t, daemonOpts{noAuth: noAuth, hold: time.Hour}) // experiments end only by cancellation
			tok := testToken
			if noAuth {
				tok = ""
			}
			c := NewClient(d.hs.URL, tok)
			ctx := context.Background()
			st, err := c.CreateStudy(ctx, StudyRequest{Target: "app0", Parameters: []string{"cpu=20..100 step 20"},
				TimeBound: "10h", Window: "1h", WarmUp: "0s", Strategy: "grid"})
			if err != nil {
				t.Fatal(err)
			}
			d.waitState(st.ID, justrunit.StudyRunning)
			cancelPath := Prefix + "/studies/" + st.ID + "/cancel"
			for _, hd := range []http.Header{
				{"Sec-Fetch-Site": {"cross-site"}},
				{"Sec-Fetch-Site": {"same-site"}},
				{"Origin": {"http://evil.example"}},
			} {
				code, body := d.callWith("POST", cancelPath, tok, hd, nil)
				if code != http.StatusForbidden || decodeError(t, body).Code != CodeForbidden {
					t.Errorf("POST cancel with %v = %d %s, want 403 forbidden", hd, code, body)
				}
				// A form another site posts, with a JSON-looking body.
				hd.Set("Content-Type", "text/plain")
				code, body = d.callWith("POST", Prefix+"/studies", tok, hd, `{"target":"app0","parameters":["cpu=20..100 step 20"],"time_bound":"1m"}`)
				if code != http.StatusForbidden {
					t.Errorf("POST /studies with %v = %d %s, want 403", hd, code, body)
				}
			}
			if got, _ := d.store.Study(ctx, st.ID); got.State != justrunit.StudyRunning {
				t.Fatalf("study %s is %s after cross-origin cancels, want still running", st.ID, got.State)
			}
			if all, _ := d.store.Studies(ctx); len(all) != 1 {
				t.Errorf("cross-origin creates stored %d studies, want only the first", len(all)-1)
			}
			// Reads pass (a browser keeps another site from reading the
			// answer); so does the daemon's own page, and a program.
			if code, body := d.callWith("GET", Prefix+"/studies", tok, http.Header{"Origin": {"http://evil.example"}}, nil); code != http.StatusOK {
				t.Errorf("GET /studies with a foreign Origin = %d %s, want 200", code, body)
			}
			if code, body := d.callWith("POST", cancelPath, tok, http.Header{"Sec-Fetch-Site": {"same-origin"}, "Origin": {d.hs.URL}}, nil); code != http.StatusAccepted {
				t.Errorf("POST cancel from the daemon's own origin = %d %s, want 202", code, body)
			}
			d.waitState(st.ID, justrunit.StudyCancelled)
		})
	}
}

// TestNoAuthHostCheck: a daemon without a token answers only calls naming a
// loopback host, so that a page cannot reach it through a name of its own
// (DNS rebinding); a daemon with a token answers any Host.
func TestNoAuthHostCheck(t *testing.T) {
	d := newDaemon(t, daemonOpts{noAuth: true, noRunner: true})
	_, port, _ := net.SplitHostPort(d.hs.Listener.Addr().String())
	port = ":" + port
	for host, want := range map[string]int{
		"127.0.0.1" + port: http.StatusOK, "localhost" + port: http.StatusOK, "LOCALHOST": http.StatusOK,
		"[::1]" + port: http.StatusOK, "127.0.0.2" + port: http.StatusOK,
		"evil.example" + port: http.StatusForbidden, "evil.example": http.StatusForbidden, "localhost.evil.example" + port: http.StatusForbidden,
		"10.0.0.5" + port: http.StatusForbidden, "0.0.0.0" + port: http.StatusForbidden,
	} {
		for _, path := range []string{Prefix + "/studies", "/healthz", "/"} {
			code, body := d.callWith("GET", path, "", http.Header{"Host": {host}}, nil)
			if code != want {
				t.Errorf("GET %s with Host %q = %d, want %d", path, host, code, want)
			}
			if want == http.StatusForbidden && path != "/" {
				if e := decodeError(t, body); e.Code != CodeForbidden || !strings.Contains(e.Message, "--no-auth") {
					t.Errorf("GET %s with Host %q: error %+v, want forbidden naming --no-auth", path, host, e)
				}
			}
		}
	}
	tok := newDaemon(t, daemonOpts{noRunner: true})
	if code, body := tok.callWith("GET", Prefix+"/studies", testToken, http.Header{"Host": {"justrunit.example:7070"}}, nil); code != http.StatusOK {
		t.Errorf("daemon with a token, Host justrunit.example = %d %s, want 200", code, body)
	}
}

// TestBodyMustBeJSON: a body not sent as application/json is refused with
// 415 before it is read, one over 1 MiB with 413; neither stores anything.
func TestBodyMustBeJSON(t *testing.T) {
	d := newDaemon(t, daemonOpts{hold: 10 * time.Millisecond, site: &fakeVerifier{}})
	seeded, _ := seedStudy(t, d.store)
	good := `{"target":"app0","parameters":["cpu=60..100 step 20"],"time_bound":"20s","window":"10ms","warm_up":"0s","strategy":"grid"}`
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx"} {
		hd := http.Header{}
		if ct != "" {
			hd.Set("Content-Type", ct)
		}
		code, body := d.callWith("POST", Prefix+"/studies", testToken, hd, good)
		if code != http.StatusUnsupportedMediaType {
			t.Errorf("POST /studies with Content-Type %q = %d %s, want 415", ct, code, body)
			continue
		}
		if e := decodeError(t, body); e.Code != CodeMediaType || !strings.Contains(e.Message, "application/json") {
			t.Errorf("Content-Type %q: error %+v, want code %s saying application/json", ct, e, CodeMediaType)
		}
		code, body = d.callWith("POST", Prefix+"/studies/"+seeded.ID+"/verify", testToken, hd, `{"points":["cpu=40"]}`)
		if code != http.StatusUnsupportedMediaType {
			t.Errorf("POST verify with Content-Type %q = %d %s, want 415", ct, code, body)
		}
	}
	huge := `{"name":"` + strings.Repeat("x", maxBody) + `",` + good[1:]
	code, body := d.call("POST", Prefix+"/studies", testToken, huge)
	if code != http.StatusRequestEntityTooLarge || decodeError(t, body).Code != CodeTooLarge {
		t.Errorf("POST /studies with a %d-byte body = %d %.200s, want 413", len(huge), code, body)
	}
	code, body = d.call("POST", Prefix+"/studies", testToken, good+strings.Repeat(" ", maxBody))
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("POST /studies with 1 MiB of trailing space = %d %.200s, want 413", code, body)
	}
	if all, _ := d.store.Studies(context.Background()); len(all) != 1 {
		t.Fatalf("refused bodies stored %d studies", len(all)-1)
	}
	if len(d.srv.cfg.Site.(*fakeVerifier).calls()) != 0 {
		t.Errorf("a refused verify reached the verifier")
	}
	// The same body as JSON, with a charset, is taken.
	code, body = d.callWith("POST", Prefix+"/studies", testToken, http.Header{"Content-Type": {"application/json; charset=utf-8"}}, good)
	if code != http.StatusCreated {
		t.Errorf("POST /studies as application/json; charset=utf-8 = %d %s, want 201", code, body)
	}
	// The client's errors unwrap to ErrInvalid (the request is at fault).
	if err := (&Error{Status: 415, Code: CodeMediaType}); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("errors.Is(415 error, ErrInvalid) = false")
	}
}

// blockingVerifier measures until its context ends, then takes restore to
// put the on-line instance back.
type blockingVerifier struct {
	staticSite
	restore  time.Duration
	started  chan struct{}
	returned atomic.Bool
	cause    atomic.Value
}

func (b *blockingVerifier) Verify(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, spec VerifySpec) ([]Verification, error) {
	close(b.started)
	<-ctx.Done()
	b.cause.Store(context.Cause(ctx))
	time.Sleep(b.restore)
	b.returned.Store(true)
	return nil, ctx.Err()
}

// TestCloseCancelsVerifyAndWaits: closing the server cancels an on-line
// verification under way, and Wait returns only once it has returned (so
// the daemon stops the site after it, never under it); when the bound ends
// first, Wait says what is still running.
func TestCloseCancelsVerifyAndWaits(t *testing.T) {
	for _, tt := range []struct {
		name    string
		restore time.Duration
		bound   time.Duration
		wantErr bool
	}{
		{"stops in time", 200 * time.Millisecond, 10 * time.Second, false},
		{"outlasts the bound", 2 * time.Second, 300 * time.Millisecond, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := &blockingVerifier{restore: tt.restore, started: make(chan struct{})}
			d := newDaemon(t, daemonOpts{noRunner: true, site: v})
			st, _ := seedStudy(t, d.store)
			errc := make(chan error, 1)
			go func() {
				_, err := d.client().Verify(context.Background(), st.ID, VerifyRequest{Points: []string{"cpu=40"}})
				errc <- err
			}()
			select {
			case <-v.started:
			case err := <-errc:
				t.Fatalf("verify returned before it started: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("verify did not start")
			}
			if err := d.srv.Wait(ctxTimeout(t, 50*time.Millisecond)); err == nil {
				t.Fatalf("Wait with a verification running = nil, want an error")
			}
			d.srv.Close()
			err := d.srv.Wait(ctxTimeout(t, tt.bound))
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "verification of study "+st.ID) {
					t.Errorf("Wait past the bound = %v, want an error naming the verification of %s", err, st.ID)
				}
				if v.returned.Load() {
					t.Errorf("the verification returned before its restore ended")
				}
				waitFor(t, 10*time.Second, "the verification to return", v.returned.Load)
				return
			}
			if err != nil {
				t.Fatalf("Wait = %v", err)
			}
			if !v.returned.Load() {
				t.Errorf("Wait returned while the verification was still restoring the instance")
			}
			if c, _ := v.cause.Load().(error); !errors.Is(c, errClosing) {
				t.Errorf("the verification's context ended with %v, want %v", c, errClosing)
			}
			if err := <-errc; !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "shutting down") {
				t.Errorf("the client's verify = %v, want 503 saying the daemon is shutting down", err)
			}
			// New calls that would act on the site are refused.
			_, err = d.client().Verify(context.Background(), st.ID, VerifyRequest{Points: []string{"cpu=40"}})
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("verify after Close = %v, want ErrUnavailable", err)
			}
		})
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
