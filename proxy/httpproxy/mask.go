package httpproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/justrunit/justrunit"
)

// Masked is what a mask puts in place of the value it hides.
const Masked = "<masked>"

// Masks hide the values that legitimately differ between the on-line
// instance and a clone (timestamps, generated ids, session tokens), so that
// the out-proxy can match a clone's call to the on-line one and the in-proxy
// can compare a clone's answer with the on-line answer.
//
// The zero Masks hides nothing. Build one with ParseMasks.
type Masks struct {
	// Regexps are applied to the request target (path and canonical query)
	// and to bodies. A regexp without capture groups masks the whole match;
	// one with groups masks only the groups, so `ts=(\d+)` keeps "ts=".
	Regexps []*regexp.Regexp
	// JSONPaths are applied to bodies that parse as JSON; see ParseJSONPath
	// for the syntax. When any is set, JSON bodies are also re-encoded with
	// sorted keys, so key order does not matter either.
	JSONPaths []JSONPath
}

// ParseMasks compiles regexps and JSON paths into Masks. An error names the
// offending mask ("mask_regex[1]", "mask_json[0]") and unwraps to
// justrunit.ErrInvalid.
func ParseMasks(regexps, jsonPaths []string) (Masks, error) {
	var m Masks
	for i, s := range regexps {
		re, err := regexp.Compile(s)
		if err != nil {
			return Masks{}, justrunit.Invalid(fmt.Sprintf("mask_regex[%d]", i), s, "not a regular expression: %v", err)
		}
		m.Regexps = append(m.Regexps, re)
	}
	for i, s := range jsonPaths {
		p, err := ParseJSONPath(s)
		if err != nil {
			return Masks{}, justrunit.Invalid(fmt.Sprintf("mask_json[%d]", i), s, "%v", err)
		}
		m.JSONPaths = append(m.JSONPaths, p)
	}
	return m, nil
}

// Empty reports whether m masks nothing.
func (m Masks) Empty() bool { return len(m.Regexps) == 0 && len(m.JSONPaths) == 0 }

// Body returns b with the masks applied: JSON paths first (when b is JSON),
// then the regexps. b is not modified.
func (m Masks) Body(b []byte) []byte {
	if len(m.JSONPaths) > 0 && len(b) > 0 {
		b = m.maskJSON(b)
	}
	for _, re := range m.Regexps {
		b = maskRegexp(re, b)
	}
	return b
}

// Target returns the normalised request target: the path, then "?" and the
// query with its parameters sorted, with the regexps applied.
func (m Masks) Target(path, rawQuery string) string {
	t := path
	if rawQuery != "" {
		q := rawQuery
		if v, err := url.ParseQuery(rawQuery); err == nil {
			q = v.Encode()
		}
		t += "?" + q
	}
	if len(m.Regexps) == 0 {
		return t
	}
	b := []byte(t)
	for _, re := range m.Regexps {
		b = maskRegexp(re, b)
	}
	return string(b)
}

// RouteOf returns the route of a request: its method, its path with every
// segment that looks like an id in place of "*", and the names of its query
// parameters, sorted, without their values; "GET /items/*?category&q" for
// "GET /items/42?q=lamp&category=3". Calls of one route ask the same kind
// of thing of the next tier, of other items.
//
// A segment looks like an id when it holds a digit (a number, a date, a
// version), a masked value (Masked; see Masks.Route), or is a hexadecimal
// token of at least 16 characters, dashes allowed (a digest, an object id,
// a UUID), which no word is. Other ids (slugs, names) are kept; a mask
// that hides them (Masks.Route) makes them "*" too.
func RouteOf(method, path, rawQuery string) string {
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		if idSegment(seg) {
			segs[i] = "*"
		}
	}
	r := method + " " + strings.Join(segs, "/")
	if rawQuery == "" {
		return r
	}
	var names []string
	for _, kv := range strings.Split(rawQuery, "&") {
		name, _, _ := strings.Cut(kv, "=")
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if name != "" && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return r + "?" + strings.Join(names, "&")
}

// minHexID is the length from which a hexadecimal token with no digit is
// taken for an id rather than a word ("facade", "decade").
const minHexID = 16

// idSegment reports whether a path segment looks like an id (RouteOf).
func idSegment(seg string) bool {
	if strings.ContainsAny(seg, "0123456789") || strings.Contains(seg, Masked) {
		return true
	}
	if len(seg) < minHexID {
		return false
	}
	for _, c := range seg {
		if !strings.ContainsRune("abcdefABCDEF-", c) {
			return false
		}
	}
	return true
}

// Route is RouteOf after the regexps are applied to the path, so that a
// segment they hide (a slug, a user name) is "*" in the route too.
func (m Masks) Route(method, path, rawQuery string) string {
	if len(m.Regexps) > 0 {
		b := []byte(path)
		for _, re := range m.Regexps {
			b = maskRegexp(re, b)
		}
		path = string(b)
	}
	return RouteOf(method, path, rawQuery)
}

// Key returns the normalised key of a request: method, masked target and a
// digest of the masked body. Two requests with the same key are taken to be
// the same call.
func (m Masks) Key(method, path, rawQuery string, body []byte) string {
	sum := sha256.Sum256(m.Body(body))
	return method + " " + m.Target(path, rawQuery) + " " + hex.EncodeToString(sum[:16])
}

func maskRegexp(re *regexp.Regexp, b []byte) []byte {
	locs := re.FindAllSubmatchIndex(b, -1)
	if len(locs) == 0 {
		return b
	}
	var out bytes.Buffer
	last := 0
	for _, loc := range locs {
		if len(loc) == 2 { // no groups: the whole match
			out.Write(b[last:loc[0]])
			out.WriteString(Masked)
			last = loc[1]
			continue
		}
		for g := 2; g+1 < len(loc); g += 2 {
			if loc[g] < 0 || loc[g] < last {
				continue // group did not take part, or nested in one already masked
			}
			out.Write(b[last:loc[g]])
			out.WriteString(Masked)
			last = loc[g+1]
		}
	}
	out.Write(b[last:])
	return out.Bytes()
}

func (m Masks) maskJSON(b []byte) []byte {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil || d.More() {
		return b // not (one) JSON document: leave it to the regexps
	}
	for _, p := range m.JSONPaths {
		v = p.apply(v)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return b
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n"))
}

// JSONPath selects values in a JSON document. The syntax is a small subset
// of JSONPath: an optional leading "$", then segments ".name", "['name']",
// "[3]" (array index), "[*]" or ".*" (every element or member) and "..name"
// (a member called name at any depth). A leading name may omit the dot:
// "items[*].id" is "$.items[*].id".
type JSONPath []pathSeg

type pathSeg struct {
	name      string // member name; "" with index or wild
	index     int    // array index when isIndex
	isIndex   bool
	wild      bool
	recursive bool // "..name": name at any depth below
}

// ParseJSONPath parses s (see JSONPath).
func ParseJSONPath(s string) (JSONPath, error) {
	orig := s
	s = strings.TrimPrefix(s, "$")
	var p JSONPath
	first := true
	for s != "" {
		switch {
		case strings.HasPrefix(s, ".."):
			name, rest := splitName(s[2:])
			if name == "" {
				return nil, fmt.Errorf("json path %q: want a member name after \"..\"", orig)
			}
			p = append(p, pathSeg{name: name, recursive: true, wild: name == "*"})
			s = rest
		case s[0] == '.':
			name, rest := splitName(s[1:])
			if name == "" {
				return nil, fmt.Errorf("json path %q: want a member name after \".\"", orig)
			}
			p = append(p, pathSeg{name: name, wild: name == "*"})
			s = rest
		case s[0] == '[':
			end := strings.IndexByte(s, ']')
			if end < 0 {
				return nil, fmt.Errorf("json path %q: unclosed \"[\"", orig)
			}
			in := s[1:end]
			s = s[end+1:]
			switch {
			case in == "*":
				p = append(p, pathSeg{wild: true})
			case len(in) >= 2 && (in[0] == '\'' || in[0] == '"') && in[len(in)-1] == in[0]:
				p = append(p, pathSeg{name: in[1 : len(in)-1]})
			default:
				n, err := strconv.Atoi(in)
				if err != nil || n < 0 {
					return nil, fmt.Errorf("json path %q: %q is not an index, '*' or a quoted name", orig, in)
				}
				p = append(p, pathSeg{index: n, isIndex: true})
			}
		case first:
			name, rest := splitName(s)
			p = append(p, pathSeg{name: name, wild: name == "*"})
			s = rest
		default:
			return nil, fmt.Errorf("json path %q: unexpected %q", orig, s)
		}
		first = false
	}
	if len(p) == 0 {
		return nil, fmt.Errorf("json path %q: empty (masking the whole body would match every body)", orig)
	}
	return p, nil
}

func splitName(s string) (name, rest string) {
	i := strings.IndexAny(s, ".[")
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}

// String returns the path in canonical form.
func (p JSONPath) String() string {
	var b strings.Builder
	b.WriteString("$")
	for _, s := range p {
		switch {
		case s.recursive:
			b.WriteString("..")
			b.WriteString(s.name)
		case s.isIndex:
			fmt.Fprintf(&b, "[%d]", s.index)
		case s.wild:
			b.WriteString("[*]")
		default:
			b.WriteString(".")
			b.WriteString(s.name)
		}
	}
	return b.String()
}

// apply returns v with every value p selects replaced by Masked.
func (p JSONPath) apply(v any) any {
	if len(p) == 0 {
		return Masked
	}
	s, rest := p[0], p[1:]
	if s.recursive {
		return applyRecursive(s, rest, v)
	}
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s.wild || (!s.isIndex && k == s.name) {
				x[k] = rest.apply(e)
			}
		}
	case []any:
		for i, e := range x {
			if s.wild || (s.isIndex && i == s.index) {
				x[i] = rest.apply(e)
			}
		}
	}
	return v
}

func applyRecursive(s pathSeg, rest JSONPath, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s.wild || k == s.name {
				x[k] = rest.apply(e)
			} else {
				x[k] = applyRecursive(s, rest, e)
			}
		}
	case []any:
		for i, e := range x {
			x[i] = applyRecursive(s, rest, e)
		}
	}
	return v
}
