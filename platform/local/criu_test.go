package local

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
