package local

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/testutil"
)

// fakeCriu writes an executable named criu in a new directory that passes
// `criu check` or fails it with a message, and returns its path.
func fakeCriu(t *testing.T, passes bool) string {
	t.Helper()
	body := "#!/bin/sh\necho 'Error (criu/kerndat.c:1): no vDSO here' >&2\nexit 1\n"
	if passes {
		body = "#!/bin/sh\n[ \"$1\" = check ] && echo 'Looks good.'\n"
	}
	path := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestFindCriu checks which criu live clones use: $JUSTRUNIT_CRIU alone
// when set, else the one on PATH, then the installed one; and that the
// error says why each failed and how to get one that works.
func TestFindCriu(t *testing.T) {
	good, bad := fakeCriu(t, true), fakeCriu(t, false)
	missing := filepath.Join(t.TempDir(), "none", "criu")
	for _, tt := range []struct {
		name, env, path, installed string
		want                       string // the criu chosen, or "" for an error
		wantErr                    []string
	}{
		{name: "env alone", env: good, path: bad, installed: bad, want: good},
		{name: "env that fails is not passed over", env: bad, path: good, installed: good, wantErr: []string{CriuEnv + "=" + bad, "no vDSO here"}},
		{name: "PATH first", path: good, installed: bad, want: good},
		{name: "installed when PATH's fails", path: bad, installed: good, want: good},
		{name: "none works", path: bad, installed: bad, wantErr: []string{bad + ": criu check fails here: Error (criu/kerndat.c:1): no vDSO here", "scripts/install-criu"}},
		{name: "none installed", path: t.TempDir(), installed: missing, wantErr: []string{"criu is not installed", "scripts/install-criu"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.path
			if filepath.Base(dir) == "criu" {
				dir = filepath.Dir(dir)
			}
			t.Setenv("PATH", dir)
			got, err := findCriu(tt.env, tt.installed)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("findCriu = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("findCriu = %q, want an error", got)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestLiveCloneMPTCP clones an instance that listens with MPTCP, which
// criu cannot dump: its clones are cold and say why, and only the first
// clone freezes it for a dump (the listener stays as long as it runs);
// where live clones are asked for (Config.LiveClones), the clone fails.
func TestLiveCloneMPTCP(t *testing.T) {
	var warn countingHandler
	p := newPlatform(t, func(c *Config) { c.Logger = slog.New(&warn) })
	testutil.NeedLiveClones(t, p.criuErr)
	if b, err := os.ReadFile("/proc/sys/net/mptcp/enabled"); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Skip("the kernel has no MPTCP enabled (/proc/sys/net/mptcp/enabled): Go listens with plain TCP here")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	launchServer(t, p, serverOpts{id: "mptcp", args: []string{"-mptcp"}})
	var because string
	for i := range 2 {
		cl, err := p.Clone(ctx, "mptcp", "sandbox", justrunit.CloneOptions{})
		if err != nil {
			t.Fatalf("Clone() %d error: %v", i+1, err)
		}
		info, _ := p.Info(cl.ID)
		if cl.Mode != justrunit.CloneCold || !strings.Contains(info.ColdBecause, "MPTCP") || !strings.Contains(info.ColdBecause, "GODEBUG=multipathtcp=0") {
			t.Errorf("clone %d: mode %q, cold because %q; want cold, naming MPTCP and the fix", i+1, cl.Mode, info.ColdBecause)
		}
		if i == 1 && info.ColdBecause != because {
			t.Errorf("clone 2 cold because %q, want the first's %q", info.ColdBecause, because)
		}
		because = info.ColdBecause
		waitHTTP(t, "http://"+cl.Endpoint+"/health", 10*time.Second)
		if err := p.Destroy(ctx, cl.ID); err != nil {
			t.Fatal(err)
		}
	}
	if n := warn.count("cloning cold: the original cannot be dumped"); n != 1 {
		t.Errorf("%d dumps tried, want 1 (the second clone knows the first failed)", n)
	}

	// With live clones asked for, such a clone fails instead, and leaves
	// nothing of itself.
	pl := newPlatform(t, func(c *Config) { c.LiveClones = true })
	launchServer(t, pl, serverOpts{id: "mptcp", args: []string{"-mptcp"}})
	if _, err := pl.Clone(ctx, "mptcp", "sandbox", justrunit.CloneOptions{}); err == nil || !strings.Contains(err.Error(), "live clones asked for") || !strings.Contains(err.Error(), "MPTCP") {
		t.Errorf("Clone() with LiveClones = %v, want an error saying it would be cold and why", err)
	}
	if is, _ := pl.Instances(ctx); len(is) != 1 {
		t.Errorf("Instances() = %v after a refused clone, want the original only", is)
	}
	if _, err := New(Config{StateDir: t.TempDir(), ColdClones: true, LiveClones: true}); err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Errorf("New(ColdClones and LiveClones) = %v, want an error", err)
	}
}

// countingHandler is a slog handler that counts messages.
type countingHandler struct {
	mu   sync.Mutex
	msgs map[string]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.msgs == nil {
		h.msgs = map[string]int{}
	}
	h.msgs[r.Message]++
	return nil
}

func (h *countingHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.msgs[msg]
}
