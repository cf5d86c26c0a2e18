package httpproxy

import (
	"errors"
	"testing"

	"github.com/justrunit/justrunit"
)

func TestParseJSONPath(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "$.ts", want: "$.ts"},
		{in: "ts", want: "$.ts"},
		{in: "items[*].id", want: "$.items[*].id"},
		{in: "$.a[2].b", want: "$.a[2].b"},
		{in: "$['a b'].c", want: "$.a b.c"},
		{in: "$..token", want: "$..token"},
		{in: "$.*", want: "$[*]"},
		{in: "", bad: true},
		{in: "$", bad: true},
		{in: "$.a[", bad: true},
		{in: "$.a[x]", bad: true},
		{in: "$.a.", bad: true},
		{in: "$..", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := ParseJSONPath(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("ParseJSONPath(%q) = %v, want an error", tt.in, p)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseJSONPath(%q): %v", tt.in, err)
			}
			if got := p.String(); got != tt.want {
				t.Errorf("ParseJSONPath(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestMasksBody(t *testing.T) {
	tests := []struct {
		name      string
		regexps   []string
		jsonPaths []string
		in, want  string
	}{
		{"nothing", nil, nil, `{"b":1,"a":2}`, `{"b":1,"a":2}`},
		{"json member", nil, []string{"$.ts"}, `{"ts":123,"item":"x"}`, `{"item":"x","ts":"<masked>"}`},
		{"json sorts keys", nil, []string{"$.nope"}, `{"b":1,"a":2}`, `{"a":2,"b":1}`},
		{"json wildcard", nil, []string{"items[*].id"}, `{"items":[{"id":1,"n":2},{"id":3}]}`,
			`{"items":[{"id":"<masked>","n":2},{"id":"<masked>"}]}`},
		{"json index", nil, []string{"$[1]"}, `[1,2,3]`, `[1,"<masked>",3]`},
		{"json recursive", nil, []string{"$..token"}, `{"a":{"token":"x","b":[{"token":"y"}]},"token":"z"}`,
			`{"a":{"b":[{"token":"<masked>"}],"token":"<masked>"},"token":"<masked>"}`},
		{"json big numbers kept", nil, []string{"$.x"}, `{"n":12345678901234567890,"x":1}`, `{"n":12345678901234567890,"x":"<masked>"}`},
		{"not json", nil, []string{"$.ts"}, `ts=1`, `ts=1`},
		{"regexp whole", []string{`\d{10}`}, nil, `at 1700000000 ok`, `at <masked> ok`},
		{"regexp group", []string{`ts=(\d+)`}, nil, `a=1&ts=99&b=2`, `a=1&ts=<masked>&b=2`},
		{"regexp two groups", []string{`(\d+)-(\d+)`}, nil, `x 12-34 y`, `x <masked>-<masked> y`},
		{"both", []string{`"id":"[0-9a-f-]{36}"`}, []string{"$.ts"},
			`{"id":"123e4567-e89b-12d3-a456-426614174000","ts":5}`, `{<masked>,"ts":"<masked>"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMasks(tt.regexps, tt.jsonPaths)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(m.Body([]byte(tt.in))); got != tt.want {
				t.Errorf("Body(%s) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestMasksKey(t *testing.T) {
	m, err := ParseMasks([]string{`ts=(\d+)`}, []string{"$.ts", "$.req_id"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		a, b  [4]string // method, path, query, body
		equal bool
	}{
		{"fresh timestamp in body", [4]string{"POST", "/o", "", `{"ts":1,"item":7}`}, [4]string{"POST", "/o", "", `{"item":7,"ts":2}`}, true},
		{"fresh timestamp in query", [4]string{"GET", "/o", "a=1&ts=5", ""}, [4]string{"GET", "/o", "ts=6&a=1", ""}, true},
		{"other item", [4]string{"POST", "/o", "", `{"ts":1,"item":7}`}, [4]string{"POST", "/o", "", `{"ts":1,"item":8}`}, false},
		{"other method", [4]string{"GET", "/o", "", ""}, [4]string{"HEAD", "/o", "", ""}, false},
		{"other path", [4]string{"GET", "/o", "", ""}, [4]string{"GET", "/p", "", ""}, false},
		{"other query", [4]string{"GET", "/o", "a=1", ""}, [4]string{"GET", "/o", "a=2", ""}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka := m.Key(tt.a[0], tt.a[1], tt.a[2], []byte(tt.a[3]))
			kb := m.Key(tt.b[0], tt.b[1], tt.b[2], []byte(tt.b[3]))
			if (ka == kb) != tt.equal {
				t.Errorf("Key(%v) = %s, Key(%v) = %s, want equal = %v", tt.a, ka, tt.b, kb, tt.equal)
			}
		})
	}
}

func TestParseMasksErrors(t *testing.T) {
	for _, tt := range []struct {
		regexps, paths []string
		field          string
	}{
		{[]string{`ok`, `(unclosed`}, nil, "mask_regex[1]"},
		{nil, []string{"$.a[x]"}, "mask_json[0]"},
	} {
		_, err := ParseMasks(tt.regexps, tt.paths)
		var fe *justrunit.FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field || !errors.Is(err, justrunit.ErrInvalid) {
			t.Errorf("ParseMasks(%q, %q) = %v, want a FieldError for %s", tt.regexps, tt.paths, err, tt.field)
		}
	}
}

func TestRouteOf(t *testing.T) {
	for _, tt := range []struct{ method, path, query, want string }{
		{"GET", "/items/42", "q=lamp&category=3", "GET /items/*?category&q"},
		{"GET", "/items/42", "category=3&q=lamp&q=desk", "GET /items/*?category&q"},
		{"GET", "/items", "", "GET /items"},
		{"GET", "/v2/users/u-17/orders/2026-11-26", "", "GET /*/users/*/orders/*"},
		{"GET", "/search", "na%6De=x&", "GET /search?name"},
		{"HEAD", "/", "", "HEAD /"},
		{"GET", "/objects/deadbeefcafebabe", "", "GET /objects/*"},
		{"GET", "/objects/FACE-BEAD-CAFE-DEAF", "", "GET /objects/*"},
		{"GET", "/objects/deadbeefcafebab", "", "GET /objects/deadbeefcafebab"}, // 15: could be a word
		{"GET", "/blobs/facade", "", "GET /blobs/facade"},
		{"GET", "/items/lamp-with-shade", "", "GET /items/lamp-with-shade"},
		{"GET", "/users/" + Masked, "", "GET /users/*"},
	} {
		if got := RouteOf(tt.method, tt.path, tt.query); got != tt.want {
			t.Errorf("RouteOf(%s, %s, %s) = %q, want %q", tt.method, tt.path, tt.query, got, tt.want)
		}
	}
}

// TestMasksRoute: a mask that hides a path segment (a slug) makes it "*"
// in the route; one that only touches the query changes nothing.
func TestMasksRoute(t *testing.T) {
	m, err := ParseMasks([]string{`^/items/([a-z-]+)`, `ts=(\d+)`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, query, want string }{
		{"/items/lamp-with-shade", "", "GET /items/*"},
		{"/items/desk/reviews", "ts=5", "GET /items/*/reviews?ts"},
		{"/users/ann", "ts=5", "GET /users/ann?ts"},
	} {
		if got := m.Route("GET", tt.path, tt.query); got != tt.want {
			t.Errorf("Route(GET, %s, %s) = %q, want %q", tt.path, tt.query, got, tt.want)
		}
	}
	if got := (Masks{}).Route("GET", "/items/lamp", ""); got != "GET /items/lamp" {
		t.Errorf("no masks: Route = %q, want the path unchanged", got)
	}
}
