package api

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/justrunit/justrunit"
)

// readerOnly hides its store's Export: a Reader that is not an Exporter,
// which LoadExport reads part by part.
type readerOnly struct{ Reader }

// TestLoadExport: the store (one read transaction), the client (the export
// endpoint, answered from the store's Export) and a Reader that is neither
// give the same export; a study with nothing recorded has no matrix and
// empty lists (JSON [], not null); an unknown study is ErrNotFound.
func TestLoadExport(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true})
	ctx := context.Background()
	st, m := seedStudy(t, d.store)
	bare := &justrunit.Study{Target: "auction0/app", Space: st.Space, Metrics: st.Metrics}
	if err := d.store.CreateStudy(ctx, bare); err != nil {
		t.Fatal(err)
	}
	if _, ok := Reader(readerOnly{d.store}).(Exporter); ok {
		t.Fatal("readerOnly is an Exporter; the fallback is not tested")
	}
	for _, tt := range []struct {
		name string
		r    Reader
	}{{"store", d.store}, {"client", d.client()}, {"reader only", readerOnly{d.store}}} {
		t.Run(tt.name, func(t *testing.T) {
			e, err := LoadExport(ctx, tt.r, st.ID)
			if err != nil {
				t.Fatalf("LoadExport(%s) = %v", st.ID, err)
			}
			if e.Study.ID != st.ID || e.Study.Experiments != st.Experiments || e.Matrix == nil ||
				!reflect.DeepEqual(e.Matrix.Counts(), m.Counts()) || len(e.Observations) != 4 || len(e.Events) != 2 ||
				e.Checks == nil || len(e.Checks) != 0 {
				t.Errorf("LoadExport(%s) = study %+v, matrix %v, %d observations, checks %v, %d events; want the seeded study",
					st.ID, e.Study, e.Matrix != nil, len(e.Observations), e.Checks, len(e.Events))
			}
			e, err = LoadExport(ctx, tt.r, bare.ID)
			if err != nil {
				t.Fatalf("LoadExport(%s) = %v", bare.ID, err)
			}
			if e.Matrix != nil || e.Observations == nil || e.Checks == nil || e.Events == nil ||
				len(e.Observations)+len(e.Checks)+len(e.Events) != 0 {
				t.Errorf("LoadExport(study with nothing recorded) = %+v, want no matrix and empty, non-nil lists", e)
			}
			if e, err := LoadExport(ctx, tt.r, "s-nope"); !errors.Is(err, justrunit.ErrNotFound) {
				t.Errorf("LoadExport(unknown) = %+v, %v; want ErrNotFound", e, err)
			}
		})
	}
}
