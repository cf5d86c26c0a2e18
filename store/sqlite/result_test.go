package sqlite

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/store/storetest"
)

// TestRecordResultRollsBack makes the last write of a result fail inside
// its transaction, where no check made up front can see it coming (a
// trigger refuses its second event), after the study, observation, check,
// matrix and first event were written: none of them may remain. The
// conformance suite's all-or-nothing test fails parts that can be checked
// before writing; this one is the crash between two writes.
func TestRecordResultRollsBack(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	st := storetest.Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ExecContext(ctx, `CREATE TRIGGER refuse_boom BEFORE INSERT ON events
		WHEN NEW.kind = 'boom' BEGIN SELECT RAISE(ABORT, 'boom refused'); END`); err != nil {
		t.Fatal(err)
	}
	r := storetest.Parts(t, st)
	r.Events = append(r.Events, &justrunit.Event{Kind: "boom"})
	if err := s.RecordResult(ctx, st.ID, r); err == nil || !strings.Contains(err.Error(), "boom refused") {
		t.Fatalf("RecordResult with a refused event = %v, want the trigger's error", err)
	}
	for i, ev := range r.Events {
		if ev.ID != 0 || !ev.Time.IsZero() || ev.StudyID != "" {
			t.Errorf("failed RecordResult changed events[%d] to %+v", i, *ev)
		}
	}
	e, err := s.Export(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	storetest.SameStudy(t, e.Study, st)
	if e.Matrix != nil || len(e.Observations)+len(e.Checks)+len(e.Events) > 0 {
		t.Errorf("after a failed RecordResult: matrix %v, %d observations, %d checks, %d events; want none",
			e.Matrix != nil, len(e.Observations), len(e.Checks), len(e.Events))
	}

	// The writer was freed: the same result without the refused event is
	// stored whole.
	r.Events = r.Events[:1]
	if err := s.RecordResult(ctx, st.ID, r); err != nil {
		t.Fatalf("RecordResult after a failed one = %v", err)
	}
	if e, err = s.Export(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	if e.Study.Experiments != 1 || e.Matrix == nil || len(e.Observations) != 1 || len(e.Checks) != 1 || len(e.Events) != 1 {
		t.Errorf("after RecordResult: %d experiments, matrix %v, %d observations, %d checks, %d events; want 1 of each",
			e.Study.Experiments, e.Matrix != nil, len(e.Observations), len(e.Checks), len(e.Events))
	}
}
