package guest

import (
	"context"
	"os"
	"testing"
	"time"
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
