package auction

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
)

// WebOptions configures a [WebServer].
type WebOptions struct {
	// Client calls the app tier; nil means NewClient(DefaultTimeout).
	Client *http.Client
	// Logger receives errors; nil discards them.
	Logger *slog.Logger
}

// WebServer is the front tier. It serves the same paths as [AppServer],
// forwards each request to the app tier (GET with the same path and query,
// POST with the form re-encoded as JSON), and wraps the app tier's [Page]
// in the site layout. It answers HTML, or the app tier's JSON page
// unchanged when the client asks for JSON (Accept: application/json, or
// ?format=json). It also serves GET /sell, a form to list an item, and
// GET /healthz.
type WebServer struct {
	app    *url.URL
	client *http.Client
	log    *slog.Logger
	mux    *http.ServeMux
}

var _ http.Handler = (*WebServer)(nil)

// NewWebServer returns the web tier calling the app tier at appURL (or an
// in-proxy in front of it).
func NewWebServer(appURL string, opts WebOptions) (*WebServer, error) {
	u, err := url.Parse(appURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("new web tier: app URL %q: want http://host:port", appURL)
	}
	s := &WebServer{app: u, client: opts.Client, log: opts.Logger}
	if s.client == nil {
		s.client = NewClient(DefaultTimeout)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", handleHealthz)
	for _, p := range []string{"GET /{$}", "GET /browse", "GET /item/{id}", "GET /item/{id}/bids", "GET /search"} {
		mux.HandleFunc(p, s.handleGet)
	}
	mux.HandleFunc("GET /sell", s.handleSellForm)
	mux.HandleFunc("POST /bid", func(w http.ResponseWriter, r *http.Request) {
		var f BidForm
		if readForm(w, r, &f) {
			s.forward(w, r, http.MethodPost, f)
		}
	})
	mux.HandleFunc("POST /sell", func(w http.ResponseWriter, r *http.Request) {
		var f SellRequest
		if readForm(w, r, &f) {
			s.forward(w, r, http.MethodPost, f)
		}
	})
	s.mux = mux
	return s, nil
}

// ServeHTTP serves the web tier.
func (s *WebServer) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Close closes idle connections to the app tier.
func (s *WebServer) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

func (s *WebServer) handleGet(w http.ResponseWriter, r *http.Request) {
	s.forward(w, r, http.MethodGet, nil)
}

// forward calls the app tier and answers with its page.
func (s *WebServer) forward(w http.ResponseWriter, r *http.Request, method string, body any) {
	u := *s.app
	u.Path = strings.TrimSuffix(u.Path, "/") + r.URL.Path
	if method == http.MethodGet {
		u.RawQuery = r.URL.RawQuery
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "encode: %v", err)
			return
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(r.Context(), method, u.String(), rd)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		if r.Context().Err() == nil {
			s.log.Error("app tier call failed", "path", r.URL.Path, "err", err)
			s.page(w, r, http.StatusBadGateway, Page{Kind: "error", Title: "Bad gateway"}, nil, "app tier unavailable")
		}
		return
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		s.page(w, r, http.StatusBadGateway, Page{Kind: "error", Title: "Bad gateway"}, nil, "reading app tier answer")
		return
	}
	var p Page
	if json.Unmarshal(raw, &p) != nil || p.Kind == "" {
		var eb errorBody
		_ = json.Unmarshal(raw, &eb)
		if eb.Error == "" {
			eb.Error = http.StatusText(resp.StatusCode)
		}
		if resp.StatusCode/100 == 2 {
			resp.StatusCode = http.StatusBadGateway
		}
		s.page(w, r, resp.StatusCode, Page{Kind: "error", Title: http.StatusText(resp.StatusCode)}, raw, eb.Error)
		return
	}
	s.page(w, r, resp.StatusCode, p, raw, "")
}

// wantsJSON reports whether the client asked for JSON rather than HTML.
func wantsJSON(r *http.Request) bool {
	if r.URL.Query().Get("format") == "json" {
		return true
	}
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "application/json") && !strings.Contains(accept, "text/html")
}

// page answers with p in the layout, or with raw (the app tier's JSON)
// when the client wants JSON. msg is an error message for error pages.
func (s *WebServer) page(w http.ResponseWriter, r *http.Request, status int, p Page, raw []byte, msg string) {
	if wantsJSON(r) {
		if raw == nil {
			writeError(w, status, "%s", msg)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(raw)
		return
	}
	var buf bytes.Buffer
	err := layout.Execute(&buf, map[string]any{
		"title": p.Title, "body": template.HTML(p.HTML), // the app tier's fragment is escaped by its templates
		"error": msg, "generated_at": p.GeneratedAt, "signature": p.Signature,
	})
	if err != nil {
		s.log.Error("render layout", "err", err)
		writeError(w, http.StatusInternalServerError, "render: %v", err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func (s *WebServer) handleSellForm(w http.ResponseWriter, r *http.Request) {
	var opts strings.Builder
	for i, c := range Categories {
		fmt.Fprintf(&opts, `<option value="%d">%s</option>`, i+1, template.HTMLEscapeString(c))
	}
	s.page(w, r, http.StatusOK, Page{Kind: "sell-form", Title: "Sell an item", HTML: `<h1>Sell an item</h1>
<form method="post" action="/sell">
<p>seller user id <input name="seller_id" size="6"></p>
<p>name <input name="name" size="40"></p>
<p>description<br><textarea name="description" rows="4" cols="60"></textarea></p>
<p>category <select name="category">` + opts.String() + `</select></p>
<p>start price in cents <input name="start_price" size="10"></p>
<p><button>List it</button></p></form>`}, []byte(`{"kind":"sell-form"}`), "")
}

var layout = template.Must(template.New("layout").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>{{.title}} · JustRunIt auction</title>
<style>body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left}
header{border-bottom:1px solid #ccc;padding-bottom:4px}footer{color:#888;font-size:small;margin-top:2em}</style></head>
<body><header><a href="/">Auction</a> · <a href="/sell">Sell</a>
<form action="/search" style="display:inline"><input name="q" placeholder="search"></form></header>
<main>{{if .error}}<h1>{{.title}}</h1><p class="error">{{.error}}</p>{{end}}{{.body}}</main>
<footer>{{if .generated_at}}generated at {{.generated_at}} · work {{.signature}}{{end}}</footer>
</body></html>
`))
