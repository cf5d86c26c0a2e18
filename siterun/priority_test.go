package siterun_test

import (
	"context"
	"testing"
	"time"

	"github.com/justrunit/justrunit/internal/prio"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/internal/testutil/sitetest"
	"github.com/justrunit/justrunit/siterun"
)

// TestSiteRaisesItsAutogroup: where the process is scheduled in its
// session's autogroup, a site gives the autogroup nice AutogroupNice while it
// is up (its threads' own nice counts only within it), and gives it its
// nice value back when it closes.
func TestSiteRaisesItsAutogroup(t *testing.T) {
	testutil.NeedRoot(t)
	in, old, err := prio.Autogroup()
	if err != nil {
		t.Fatal(err)
	}
	if !in {
		t.Skip("this process is not scheduled in an autogroup (a CPU cgroup of its own, or autogroups off)")
	}
	if err := prio.SetAutogroupNice(0); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := prio.SetAutogroupNice(old); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	up := sitetest.Up(t, ctx, sitetest.Config{
		Addrs: []string{"web", "appIn", "app", "dataOut", "data"},
		File:  auctionFile,
	})
	if _, got, err := prio.Autogroup(); err != nil || got != siterun.AutogroupNice {
		t.Errorf("autogroup nice with the site up = %d, %v; want %d", got, err, siterun.AutogroupNice)
	}
	if err := up.Site.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, got, err := prio.Autogroup(); err != nil || got != 0 {
		t.Errorf("autogroup nice after the site closed = %d, %v; want 0, as before", got, err)
	}
}
