// Package yamlfile reads the YAML files JustRunIt takes (site and study
// files) strictly — an unknown field is an error, since a typo must not be
// ignored — and places validation errors at the line of the field they name.
package yamlfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/justrunit/justrunit"
)

// File is a decoded YAML file: its path and node tree, for locating fields.
type File struct {
	Path string
	Root *yaml.Node
}

// Load reads path and decodes it into v with unknown fields refused.
func Load(path string, v any) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Decode(path, b, v)
}

// Decode decodes b (named path in errors) into v with unknown fields refused.
func Decode(path string, b []byte, v any) (*File, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &File{Path: path, Root: &root}, nil
}

// Locate prefixes err with the file's path and, for a justrunit.FieldError
// whose field exists in the file, the line: "site.yaml:12: hosts[1].cores: ...".
func (f *File) Locate(err error) error {
	if err == nil {
		return nil
	}
	var fe *justrunit.FieldError
	if errors.As(err, &fe) {
		if line := f.Line(fe.Field); line > 0 {
			return fmt.Errorf("%s:%d: %w", f.Path, line, err)
		}
	}
	return fmt.Errorf("%s: %w", f.Path, err)
}

// Line finds the line of a field path like "services[0].tiers[1].name" or
// "parameters[1] (parameter cpu.step)"; the longest prefix of the path that
// exists gives the line; 0 when nothing matches.
func (f *File) Line(field string) int {
	if f == nil || f.Root == nil {
		return 0
	}
	field, _, _ = strings.Cut(field, " ")
	n := f.Root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(field, ".") {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			name = part[:i]
			idx, _ = strconv.Atoi(part[i+1 : len(part)-1])
		}
		next := mapValue(n, name)
		if next == nil {
			return line
		}
		line, n = next.Line, next
		if idx >= 0 && n.Kind == yaml.SequenceNode && idx < len(n.Content) {
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// Rename puts a FieldError under a file's field name, keeping the parser's
// own field in parentheses ("parameters[0] (parameter cpu.step)").
func Rename(err error, field string) error {
	var fe *justrunit.FieldError
	if errors.As(err, &fe) {
		return &justrunit.FieldError{Field: field + " (" + fe.Field + ")", Value: fe.Value, Msg: fe.Msg}
	}
	return fmt.Errorf("%s: %w", field, err)
}
