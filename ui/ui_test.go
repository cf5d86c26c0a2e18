package ui

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// TestModulesResolve checks that every file the page and its modules
// import is embedded, so the dashboard cannot ship with a broken import.
func TestModulesResolve(t *testing.T) {
	files := FS()
	ref := regexp.MustCompile(`(?:from|src=|href=)\s*["']\.?/?([\w./-]+\.(?:js|css))["']`)
	for _, name := range []string{"index.html", "app.js", "api.js", "svg.js", "heatmap.js", "chart.js"} {
		b, err := fs.ReadFile(files, name)
		if err != nil {
			t.Fatalf("%s not embedded: %v", name, err)
		}
		for _, m := range ref.FindAllStringSubmatch(string(b), -1) {
			if _, err := fs.Stat(files, m[1]); err != nil {
				t.Errorf("%s refers to %s, which is not embedded", name, m[1])
			}
		}
	}
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	tests := []struct {
		method, path string
		code         int
		ctype        string
	}{
		{"GET", "/", 200, "text/html"},
		{"GET", "/app.js", 200, "javascript"},
		{"GET", "/style.css", 200, "text/css"},
		{"GET", "/nope.js", 404, ""},
		{"POST", "/", 405, ""},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code || !strings.Contains(resp.Header.Get("Content-Type"), tt.ctype) {
			t.Errorf("%s %s = %d %q, want %d %q", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), tt.code, tt.ctype)
		}
	}
}
