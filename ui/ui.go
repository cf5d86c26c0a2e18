// Package ui is JustRunIt's web dashboard: static files (HTML, CSS and plain
// ES modules drawing SVG, no build step) embedded in the binary (with
// the go:embed directive) and served by the daemon at /. The dashboard reads everything
// through the REST API with the bearer token the user pastes in (or passes
// once in the address as #token=...), and follows the daemon's event stream
// for live updates.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// FS returns the dashboard's files, rooted at the directory holding
// index.html.
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return sub
}

// Handler serves the dashboard. Paths that are not files answer 404; the
// dashboard routes with the URL fragment (#/studies/ID), so it never needs
// a fallback to index.html.
func Handler() http.Handler {
	files := http.FileServerFS(FS())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// The files change with the binary; let the browser revalidate.
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
