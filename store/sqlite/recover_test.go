package sqlite

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/store/storetest"
)

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if _, err := exec.LookPath("true"); err != nil {
		cmd = exec.Command(os.Args[0], "-test.run=^$") // this test binary, running no test
	}
	if err := cmd.Run(); err != nil {
		t.Fatalf("run a short process: %v", err)
	}
	pid := cmd.Process.Pid
	if st := processStatus(pid); st.exists {
		t.Skipf("pid %d of an exited process was reused at once", pid)
	}
	return pid
}

// selfOwner returns this process's owner as OwnerID records it, or skips
// the test where start ticks and boot ids cannot be read.
func selfOwner(t *testing.T) procOwner {
	t.Helper()
	o, ok := parseOwner(OwnerID())
	if !ok {
		t.Fatalf("parseOwner(OwnerID() = %q) failed", OwnerID())
	}
	if o.boot == "" {
		t.Skip("no start ticks or boot id here (/proc/self/stat, /proc/sys/kernel/random/boot_id); owners are pid@host")
	}
	return o
}

func TestOwnerID(t *testing.T) {
	want := strconv.Itoa(os.Getpid()) + "@" + hostname()
	got := OwnerID()
	if !strings.HasPrefix(got, want) {
		t.Fatalf("OwnerID() = %q, want it to start with %s", got, want)
	}
	if got != OwnerID() {
		t.Errorf("OwnerID() changes between calls: %q, then %q", got, OwnerID())
	}
	o := selfOwner(t)
	ticks, _ := procStartTicks(os.Getpid())
	boot, _ := bootID()
	if o.pid != os.Getpid() || o.host != hostname() || o.ticks != ticks || o.boot != boot {
		t.Errorf("OwnerID() = %q, parsed %+v; want pid %d, host %s, start ticks %d, boot %s", got, o, os.Getpid(), hostname(), ticks, boot)
	}
	want = fmt.Sprintf("%d@%s;start=%d;boot=%s", os.Getpid(), hostname(), ticks, boot)
	if ns, ok := pidNamespace(); ok {
		want += ";pidns=" + ns
	}
	if got != want {
		t.Errorf("OwnerID() = %q, want %q", got, want)
	}
}

func TestParseOwner(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want procOwner
		ok   bool
	}{
		{"12@box", procOwner{pid: 12, host: "box"}, true},
		{"12@box.example.com;start=4401445;boot=e0713c18-85a7-4829-b90f-f10832e8312b",
			procOwner{pid: 12, host: "box.example.com", ticks: 4401445, boot: "e0713c18-85a7-4829-b90f-f10832e8312b"}, true},
		{"12@box;start=0;boot=b", procOwner{pid: 12, host: "box", boot: "b"}, true},
		{"daemon", procOwner{}, false},
		{"", procOwner{}, false},
		{"0@box", procOwner{}, false},
		{"-3@box", procOwner{}, false},
		{"12@", procOwner{}, false},
		{"12@box;start=x;boot=b", procOwner{}, false},
		{"12@box;start=-1;boot=b", procOwner{}, false},
		{"12@box;start=5", procOwner{}, false},
		{"12@box;start=5;boot=", procOwner{}, false},
		{"12@box;start=5;boot=a;b", procOwner{}, false},
		{"12@box;start=5;boot=b;pidns=4026531836", procOwner{pid: 12, host: "box", ticks: 5, boot: "b", pidns: "4026531836"}, true},
		{"12@box;start=5;boot=b;pidns=", procOwner{}, false},
		{"12@box;start=5;boot=b;pidns=1;x", procOwner{}, false},
	} {
		got, ok := parseOwner(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseOwner(%q) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
		if ok && got.String() != tt.in {
			t.Errorf("parseOwner(%q).String() = %q, want it back", tt.in, got.String())
		}
	}
}

func TestParseStat(t *testing.T) {
	for _, tt := range []struct {
		stat, state string
		ticks       int64
		ok          bool
	}{
		{"42 (sleep) S 1 42 42 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 4401445 2240512 128 18446744073709551615", "S", 4401445, true},
		// A command name with spaces and parentheses.
		{"42 (a) b (c) Z 1 42 42 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 77 2240512 128", "Z", 77, true},
		{"42 (sleep) S 1 42", "", 0, false},
		{"42 sleep S 1 42 42 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 77 2240512 128", "", 0, false},
		{"42 (sleep) S 1 42 42 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 x 2240512 128", "S", 0, false},
	} {
		state, ticks, ok := parseStat(tt.stat)
		if state != tt.state || ticks != tt.ticks || ok != tt.ok {
			t.Errorf("parseStat(%q) = %q, %d, %v; want %q, %d, %v", tt.stat, state, ticks, ok, tt.state, tt.ticks, tt.ok)
		}
	}
}

// TestOwnerGone checks that an owner recorded with its start ticks and boot
// id is judged by those alone, whatever the wall clock says, and that the
// old form "pid@host" is still judged by wall clock.
func TestOwnerGone(t *testing.T) {
	self := selfOwner(t)
	host := hostname()
	with := func(f func(*procOwner)) string {
		o := self
		f(&o)
		return o.String()
	}
	dead := deadPID(t)
	old := fmt.Sprintf("%d@%s", os.Getpid(), host)
	now := time.Now()
	for _, tt := range []struct {
		name  string
		owner string
		since time.Time
		gone  bool
		why   string // in the reason, when gone
	}{
		{"alive", self.String(), now, false, ""},
		// A wall clock stepped after the study started (forward: the study
		// seems to have started long before this process; back: after it)
		// changes nothing.
		{"alive, clock stepped forward", self.String(), now.Add(-24 * time.Hour), false, ""},
		{"alive, clock stepped back", self.String(), now.Add(24 * time.Hour), false, ""},
		{"alive, no start recorded", self.String(), time.Time{}, false, ""},
		{"pid reused", with(func(o *procOwner) { o.ticks++ }), now, true, "now belongs to a process started at tick"},
		{"pid reused, started earlier", with(func(o *procOwner) { o.ticks-- }), now.Add(-24 * time.Hour), true, "now belongs"},
		{"earlier boot", with(func(o *procOwner) { o.boot = "00000000-0000-0000-0000-000000000000" }), now, true, "restarted"},
		{"earlier boot, dead pid", with(func(o *procOwner) { o.boot, o.pid = "other", dead }), now, true, "restarted"},
		{"dead pid", with(func(o *procOwner) { o.pid = dead }), now, true, "no longer exists"},
		{"other host", with(func(o *procOwner) { o.host, o.boot = "not-"+host, "other"; o.ticks++ }), now, false, ""},
		{"other host, dead pid", with(func(o *procOwner) { o.host, o.boot, o.pid = "not-"+host, "other", dead }), now, false, ""},
		// This host renamed since (same boot, same PID namespace).
		{"renamed host, alive", with(func(o *procOwner) { o.host = "old-" + host }), now, false, ""},
		{"renamed host, dead pid", with(func(o *procOwner) { o.host, o.pid = "old-"+host, dead }), now, true, "no longer exists"},
		{"renamed host, pid reused", with(func(o *procOwner) { o.host = "old-" + host; o.ticks++ }), now, true, "now belongs"},
		// Same kernel, another name and no PID namespace recorded: a
		// container with a name of its own may have its own pids.
		{"other name, no pid namespace recorded", with(func(o *procOwner) { o.host, o.pidns, o.pid = "not-"+host, "", dead }), now, false, ""},
		// Another PID namespace on this host (a container with the host's
		// name): its pids say nothing here, alive or not.
		{"other pid namespace, dead pid", with(func(o *procOwner) { o.pidns, o.pid = "1", dead }), now, false, ""},
		{"other pid namespace, pid reused", with(func(o *procOwner) { o.pidns = "1"; o.ticks++ }), now, false, ""},
		{"other pid namespace, earlier boot", with(func(o *procOwner) { o.pidns, o.boot = "1", "other" }), now, true, "restarted"},
		{"no pid namespace recorded, dead pid", with(func(o *procOwner) { o.pidns, o.pid = "", dead }), now, true, "no longer exists"},
		{"malformed", self.String() + ";more", now, false, ""},
		{"no owner", "", now, true, "no owner"},
		// The old form: wall clock against the study's start.
		{"old form alive", old, now, false, ""},
		{"old form pid reused", old, now.Add(-24 * time.Hour), true, "started after the study"},
		{"old form dead pid", fmt.Sprintf("%d@%s", dead, host), now, true, "no longer exists"},
		{"old form other host", fmt.Sprintf("%d@not-%s", dead, host), now, false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			why, gone := ownerGone(tt.owner, host, "", tt.since)
			if gone != tt.gone || !strings.Contains(why, tt.why) {
				t.Errorf("ownerGone(%q, since %v) = %q, %v; want gone %v saying %q", tt.owner, tt.since, why, gone, tt.gone, tt.why)
			}
		})
	}
}

func TestRecoverInterrupted(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	dead := strconv.Itoa(deadPID(t)) + "@" + hostname()
	self := OwnerID()
	recent := time.Now().Add(-time.Millisecond) // after this test process started
	tests := []struct {
		id      string
		state   justrunit.StudyState
		owner   string
		started time.Time
		want    justrunit.StudyState
	}{
		{"dead-owner", justrunit.StudyRunning, dead, recent, justrunit.StudyInterrupted},
		{"no-owner", justrunit.StudyRunning, "", recent, justrunit.StudyInterrupted},
		{"alive-owner", justrunit.StudyRunning, self, recent, justrunit.StudyRunning},
		{"other-host", justrunit.StudyRunning, strconv.Itoa(deadPID(t)) + "@not-" + hostname(), recent, justrunit.StudyRunning},
		{"malformed-owner", justrunit.StudyRunning, "daemon", recent, justrunit.StudyRunning},
		{"done-dead-owner", justrunit.StudyDone, dead, recent, justrunit.StudyDone},
		{"pending-no-owner", justrunit.StudyPending, "", time.Time{}, justrunit.StudyPending},
		{"pending-dead-owner", justrunit.StudyPending, dead, time.Time{}, justrunit.StudyInterrupted},
		{"pending-alive-owner", justrunit.StudyPending, self, time.Time{}, justrunit.StudyPending},
	}
	type testCase = struct {
		id      string
		state   justrunit.StudyState
		owner   string
		started time.Time
		want    justrunit.StudyState
	}
	if processStatus(os.Getpid()).started.IsZero() {
		t.Log("no process start times here (/proc); not testing pid reuse")
	} else {
		// This process's pid in the old form, but the study started long
		// before this process did: the pid was reused (a restarted daemon
		// in a container).
		old := strconv.Itoa(os.Getpid()) + "@" + hostname()
		tests = append(tests, testCase{"reused-pid-old-form", justrunit.StudyRunning, old, time.Now().Add(-24 * time.Hour), justrunit.StudyInterrupted})
	}
	if o, ok := parseOwner(self); !ok || o.boot == "" {
		t.Log("no start ticks or boot id here; not testing owners recorded with them")
	} else {
		reused, earlier := o, o
		reused.ticks++
		earlier.boot = "00000000-0000-0000-0000-000000000000"
		tests = append(tests,
			testCase{"reused-pid", justrunit.StudyRunning, reused.String(), recent, justrunit.StudyInterrupted},
			testCase{"earlier-boot", justrunit.StudyRunning, earlier.String(), recent, justrunit.StudyInterrupted},
			// The wall clock stepped forward since this process started:
			// by the clock, the study started a day before its owner.
			testCase{"alive-owner-clock-stepped", justrunit.StudyRunning, self, time.Now().Add(-24 * time.Hour), justrunit.StudyRunning},
		)
	}
	wantN := 0
	for _, tt := range tests {
		st := storetest.Study(t)
		st.ID, st.State, st.Owner, st.Started = tt.id, tt.state, tt.owner, tt.started
		if err := s.CreateStudy(ctx, st); err != nil {
			t.Fatal(err)
		}
		if tt.want == justrunit.StudyInterrupted {
			wantN++
		}
	}

	n, err := s.RecoverInterrupted(ctx)
	if err != nil || n != wantN {
		t.Fatalf("RecoverInterrupted() = %d, %v; want %d, nil", n, err, wantN)
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			st, err := s.Study(ctx, tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != tt.want {
				t.Errorf("state = %s, want %s", st.State, tt.want)
			}
			evs, err := s.Events(ctx, justrunit.EventFilter{StudyID: tt.id, Kind: justrunit.EventStudyInterrupted})
			if err != nil {
				t.Fatal(err)
			}
			if tt.want != justrunit.StudyInterrupted {
				if len(evs) != 0 || !st.Finished.IsZero() || st.Error != "" {
					t.Errorf("untouched study got events %v, Finished %v, Error %q", evs, st.Finished, st.Error)
				}
				return
			}
			if st.Finished.IsZero() || time.Since(st.Finished) > time.Minute {
				t.Errorf("Finished = %v, want about now", st.Finished)
			}
			if !strings.Contains(st.Error, "interrupted") {
				t.Errorf("Error = %q, want it to say the study was interrupted", st.Error)
			}
			if len(evs) != 1 || evs[0].Level != "warn" || evs[0].Data["owner"] != tt.owner {
				t.Errorf("events = %+v, want one warning naming owner %q", evs, tt.owner)
			}
			t.Logf("Error: %s", st.Error)
		})
	}

	if n, err := s.RecoverInterrupted(ctx); err != nil || n != 0 {
		t.Errorf("second RecoverInterrupted() = %d, %v; want 0, nil", n, err)
	}
}
