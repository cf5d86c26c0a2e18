package main

import (
	"context"
	"io"
	"path/filepath"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
)

func init() { startSite = startSiteRuntime }

// startSiteRuntime launches the site file's instances and proxies for the
// daemon and gives it their experimenter and hosts.
func startSiteRuntime(ctx context.Context, g *globals, path string, set *metrics.Set) (*daemonSite, error) {
	f, err := site.Load(path)
	if err != nil {
		return nil, err
	}
	s, err := siterun.Up(ctx, f, siterun.Options{StateDir: filepath.Join(g.dataDir, "platform", f.Platform), Logger: g.logger, Metrics: set})
	if err != nil {
		return nil, err
	}
	return &daemonSite{
		View: s.Platform, // Hosts and Instances
		NewRunner: func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error) {
			x, err := s.PrepareStudy(ctx, st, siterun.StudyOptions{})
			if err != nil {
				return nil, nil, err
			}
			return x.Engine.Runner, closerFunc(func() error { return x.Close(context.Background()) }), nil
		},
		Close: func() error { return s.Close(context.Background()) },
	}, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

var _ api.SiteView = justrunit.Platform(nil)
