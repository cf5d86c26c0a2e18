package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// readmeFlag finds the flags on a command reference line: --long or -s.
var readmeFlag = regexp.MustCompile(`(?:^|[\s\[|])(--?[a-zA-Z][a-zA-Z0-9-]*)`)

// TestREADMECommands checks the README's command reference against the
// commands: every runnable command has a line, every flag a line names
// exists, and every flag of a command is named on one of its lines.
func TestREADMECommands(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	start := strings.Index(readme, "## Commands\n\n```sh\n")
	if start < 0 {
		t.Fatal("README.md has no command reference (## Commands, then a sh block)")
	}
	block := readme[start+len("## Commands\n\n```sh\n"):]
	block = block[:strings.Index(block, "```")]

	root := newRootCmd()
	named := map[*cobra.Command]map[string]bool{} // command → flags its lines name
	for _, line := range strings.Split(block, "\n") {
		line, _, _ = strings.Cut(line, "#")
		words := strings.Fields(line)
		if len(words) == 0 {
			continue
		}
		if words[0] != "justrunit" {
			t.Errorf("command reference line %q does not start with justrunit", line)
			continue
		}
		c, _, err := root.Find(words[1:])
		if err != nil || c == root {
			t.Errorf("command reference line %q: no such command (%v)", line, err)
			continue
		}
		if named[c] == nil {
			named[c] = map[string]bool{}
		}
		for _, m := range readmeFlag.FindAllStringSubmatch(line, -1) {
			name := m[1]
			var f *pflag.Flag
			if long, ok := strings.CutPrefix(name, "--"); ok {
				f = c.Flags().Lookup(long)
			} else {
				f = c.Flags().ShorthandLookup(strings.TrimPrefix(name, "-"))
			}
			if f == nil {
				t.Errorf("README: %q names %s, which %q does not have", strings.TrimSpace(line), name, c.CommandPath())
				continue
			}
			named[c][f.Name] = true
		}
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.Hidden || !c.Runnable() || c == root {
			return
		}
		flags, ok := named[c]
		if !ok {
			t.Errorf("README's command reference has no line for %q", c.CommandPath())
			return
		}
		var missing []string
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && f.Name != "help" && !flags[f.Name] {
				missing = append(missing, "--"+f.Name)
			}
		})
		slices.Sort(missing)
		if len(missing) > 0 {
			t.Errorf("README's lines for %q lack %s (see %s --help)", c.CommandPath(), strings.Join(missing, ", "), c.CommandPath())
		}
	}
	walk(root)
}
