package guest

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

func TestBuildCached(t *testing.T) {
	if err := Requirements(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	cfg := Config{CacheDir: dir, Services: map[string]string{"true": "/bin/true"}}
	start := time.Now()
	im, err := Build(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := time.Since(start)
	start = time.Now()
	im2, err := Build(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if im2.Dir != im.Dir {
		t.Errorf("second Build = %s, want cached %s", im2.Dir, im.Dir)
	}
	t.Logf("built %s in %v (modules %v), cached in %v", im.Dir, first, im.Modules, time.Since(start))
	for _, p := range []string{im.Kernel(), im.Initrd(), im.Disk()} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
}

func TestCheckServiceName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"app", true},
		{"guestserver", true},
		{"true", true}, // an applet /init does not run
		{"", false},
		{"a/b", false},
		{"a b", false},
		{".", false},
		{"..", false},
		{"sh", false},
		{"busybox", false},
		{"mount", false},
		{"ip", false},
		{"insmod", false},
		{"usleep", false},
		{"[", false},
	} {
		err := CheckServiceName(tc.name)
		if tc.ok {
			if err != nil {
				t.Errorf("CheckServiceName(%q) = %v, want nil", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "--service") {
			t.Errorf("CheckServiceName(%q) = %v, want an ErrInvalid naming --service", tc.name, err)
		}
	}
}

// TestBootCommandsCoverInit checks that every command the init script
// runs is a reserved service name, so that an edit of the script cannot
// forget one.
func TestBootCommandsCoverInit(t *testing.T) {
	keywords := map[string]bool{"if": true, "then": true, "else": true, "fi": true, "for": true, "in": true,
		"do": true, "done": true, "while": true, "!": true}
	sep := strings.NewReplacer("$((", "", ";", " ; ", "&&", " ; ", "||", " ; ", "|", " ; ", "$(", " ; ", ")", " ", "&", " ")
	var cmds []string
	for _, line := range strings.Split(initScript, "\n") {
		if strings.HasPrefix(line, "#!") {
			continue
		}
		start := true // the next word is in command position
		for _, w := range strings.Fields(sep.Replace(line)) {
			switch {
			case w == ";":
				start = true
			case !start:
			case keywords[w]:
				// A keyword is followed by a command (or, after for, a name).
				start = w != "for" && w != "in" && w != "fi" && w != "done"
			case strings.Contains(w, "=") || strings.HasPrefix(w, "$") || strings.HasPrefix(w, `"`):
				start = strings.Contains(w, "=") // an assignment may precede a command
			default:
				cmds = append(cmds, strings.TrimPrefix(w, "/bin/"))
				start = false
			}
		}
	}
	if len(cmds) < 10 {
		t.Fatalf("found only the commands %v in the init script; the parser is wrong", cmds)
	}
	for _, c := range cmds {
		if err := CheckServiceName(c); err == nil {
			t.Errorf("the init script runs %q, but a service may take that name", c)
		}
	}
	t.Logf("the init script runs %v", cmds)
}

// TestBuildRefusesBootNames checks that Build refuses a reserved service
// name before it looks for a kernel or writes anything.
func TestBuildRefusesBootNames(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"sh", "mount", ".."} {
		_, err := Build(context.Background(), Config{CacheDir: dir, Services: map[string]string{"app": "/bin/true", n: "/bin/true"}})
		if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "--service") {
			t.Errorf("Build(service %q) = %v, want an ErrInvalid naming --service", n, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("Build wrote %v after refusing", ents)
	}
}
