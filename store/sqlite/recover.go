package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/justrunit/justrunit"
)

// startSlack absorbs the coarseness of a process's start time as Linux
// reports it (the boot time is whole seconds) and small clock adjustments,
// for owners recorded in the old form "pid@hostname" (see ownerGone).
const startSlack = time.Second

// OwnerID returns what a study records in Owner while this process runs
// it: "pid@hostname;start=TICKS;boot=BOOTID;pidns=NS", where TICKS is when
// this process started, in clock ticks since boot (/proc/self/stat, field
// 22), BOOTID this boot's id (/proc/sys/kernel/random/boot_id) and NS the
// inode of this process's PID namespace (/proc/self/ns/pid). The pid and
// start ticks name this process exactly, however the wall clock is set or
// stepped while it runs, the boot id tells a pid of an earlier boot from
// one of this boot, and the namespace tells whose pid it is: a container
// sharing the host's name (host networking) numbers its processes apart.
// Without a namespace to read, ";pidns=NS" is left out; without start ticks
// or boot id (not Linux, no /proc) it is "pid@hostname", the form older
// versions wrote.
func OwnerID() string {
	o := procOwner{pid: os.Getpid(), host: hostname()}
	if ticks, ok := procStartTicks(o.pid); ok {
		if boot, ok := bootID(); ok {
			o.ticks, o.boot = ticks, boot
			o.pidns, _ = pidNamespace()
		}
	}
	return o.String()
}

// pidNamespace returns the inode number of this process's PID namespace.
func pidNamespace() (string, bool) {
	l, err := os.Readlink("/proc/self/ns/pid")
	ns, ok := strings.CutPrefix(l, "pid:[")
	ns, ok2 := strings.CutSuffix(ns, "]")
	if err != nil || !ok || !ok2 || ns == "" {
		return "", false
	}
	return ns, true
}

// procOwner is a parsed Owner.
type procOwner struct {
	pid  int
	host string
	// ticks and boot identify the process within its host (see OwnerID);
	// boot is empty in the old form "pid@hostname". pidns is its PID
	// namespace, empty where it was not recorded.
	ticks int64
	boot  string
	pidns string
}

// ownerTail separates "pid@hostname" from the fields that identify the
// process; a host name (RFC 1123) holds no ';'.
const ownerTail = ";start="

func (o procOwner) String() string {
	s := strconv.Itoa(o.pid) + "@" + o.host
	if o.boot != "" {
		s += ownerTail + strconv.FormatInt(o.ticks, 10) + ";boot=" + o.boot
		if o.pidns != "" {
			s += ";pidns=" + o.pidns
		}
	}
	return s
}

// parseOwner parses "pid@hostname" or
// "pid@hostname;start=TICKS;boot=BOOTID[;pidns=NS]".
func parseOwner(s string) (procOwner, bool) {
	head, tail, long := strings.Cut(s, ownerTail)
	p, h, ok := strings.Cut(head, "@")
	pid, err := strconv.Atoi(p)
	if !ok || err != nil || pid <= 0 || h == "" {
		return procOwner{}, false
	}
	o := procOwner{pid: pid, host: h}
	if long {
		t, rest, ok := strings.Cut(tail, ";boot=")
		ticks, err := strconv.ParseInt(t, 10, 64)
		boot, ns, hasNS := strings.Cut(rest, ";pidns=")
		if !ok || err != nil || ticks < 0 || boot == "" || strings.ContainsAny(boot, ";@") ||
			hasNS && (ns == "" || strings.ContainsAny(ns, ";@")) {
			return procOwner{}, false
		}
		o.ticks, o.boot, o.pidns = ticks, boot, ns
	}
	return o, true
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// RecoverInterrupted marks as justrunit.StudyInterrupted every study left in
// state running by a process that is gone, and every study left pending
// (waiting to run) by an owner that is gone, sets its Finished and Error, adds
// an justrunit.EventStudyInterrupted event for it, and returns how many it marked.
//
// A running study's owner is gone when Owner is empty, or names a process on
// this host that ran before the host last booted, no longer exists, is a
// zombie, or is not the process its pid now names (the pid was reused —
// e.g. a restarted daemon that is again pid 1 in its container, when the
// container's PID namespace is the same again; see ownerGone; a host
// renamed since counts as this host when the owner's boot id and PID
// namespace are this process's). An owner in another PID namespace of this
// host and boot (a container restarted with the same name, in a new PID
// namespace) is gone when it no longer holds its owner lock (see
// Store.claim); without a lock file to tell, it is left alone. A study
// whose owner is alive, on another host, or written in a form other than
// OwnerID's or "pid@hostname" is left alone: this process cannot tell that
// its owner is gone.
//
// A daemon calls RecoverInterrupted when it starts, before it runs studies
// of its own. Calling it at any other time is safe (live owners are left
// alone), and a study that changes state meanwhile is not touched.
func (s *Store) RecoverInterrupted(ctx context.Context) (int, error) {
	type candidate struct{ id, owner, state, why string }
	var gone []candidate
	rows, err := s.r.QueryContext(ctx,
		`SELECT id, owner, state, COALESCE(started_ns, created_ns) FROM studies WHERE state IN (?, ?)`,
		string(justrunit.StudyRunning), string(justrunit.StudyPending))
	if err != nil {
		return 0, fmt.Errorf("recover interrupted studies: %w", err)
	}
	host := hostname()
	for rows.Next() {
		var c candidate
		var since sql.NullInt64
		if err := rows.Scan(&c.id, &c.owner, &c.state, &since); err != nil {
			rows.Close()
			return 0, fmt.Errorf("recover interrupted studies: %w", err)
		}
		if c.state == string(justrunit.StudyPending) && c.owner == "" {
			continue // nobody said they would run it: it may still be picked up
		}
		if why, ok := ownerGone(c.owner, host, s.locks, fromNanos(since)); ok {
			c.why = why
			if c.state == string(justrunit.StudyPending) {
				c.why = "before it ran, " + why
			}
			gone = append(gone, c)
		}
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return 0, fmt.Errorf("recover interrupted studies: %w", err)
	}
	rows.Close()
	if len(gone) == 0 {
		sweepOwnerLocks(s.locks, s.settled(ctx))
		return 0, nil
	}

	n := 0
	now := time.Now().UTC()
	err = s.write(ctx, func(tx *sql.Tx) error {
		n = 0
		for _, c := range gone {
			msg := "interrupted: " + c.why
			// Only if nothing changed since we looked: the owner may have
			// finished the study, or another process recovered it.
			res, err := tx.ExecContext(ctx, `UPDATE studies
				SET state = ?, finished_ns = ?,
					error = CASE WHEN error = '' THEN ? ELSE error || '; ' || ? END
				WHERE id = ? AND state = ? AND owner = ?`,
				string(justrunit.StudyInterrupted), now.UnixNano(), msg, msg, c.id, c.state, c.owner)
			if err != nil {
				return err
			}
			if k, err := res.RowsAffected(); err != nil || k == 0 {
				if err != nil {
					return err
				}
				continue
			}
			data, err := json.Marshal(map[string]string{"owner": c.owner})
			if err != nil {
				return err
			}
			if _, err := insertEvent(ctx, tx, now, c.id, justrunit.EventStudyInterrupted, "warn",
				"study "+c.id+" "+msg, string(data)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("recover interrupted studies: %w", err)
	}
	// Only once the studies of the owners found gone by their locks are
	// marked may their lock files go; an owner that died after the scan
	// keeps its file, its studies still running.
	sweepOwnerLocks(s.locks, s.settled(ctx))
	return n, nil
}

// settled returns a function that reports whether the store holds no
// pending or running study of owner (false when it cannot tell): once
// owner has exited, its lock file then tells nothing more.
func (s *Store) settled(ctx context.Context) func(owner string) bool {
	return func(owner string) bool {
		var n int
		err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM studies WHERE owner = ? AND state IN (?, ?)`,
			owner, string(justrunit.StudyRunning), string(justrunit.StudyPending)).Scan(&n)
		return err == nil && n == 0
	}
}

// ownerGone reports whether the process that owns a running study since
// since is gone, and why, from this host's point of view. An owner on
// another host is left alone, unless its boot id and PID namespace are
// this process's: then this host was renamed, and it is judged as here.
//
// An owner recorded with its start ticks and boot id (see OwnerID) is gone
// when it ran in an earlier boot of this host, or its pid no longer
// exists, is a zombie or belongs to a process that started at another
// tick: exact comparisons that no step of the wall clock can upset. An
// owner in another PID namespace of this boot, whose pid says nothing
// here, is gone when its lock file in the directory locks can be locked
// (ownerLockFree): a live owner holds it (Store.claim). An
// owner in the old form "pid@hostname" is compared by wall clock instead:
// it is gone when its pid started more than startSlack after since; a
// clock stepped meanwhile can make that misfire, which is why OwnerID
// records more.
func ownerGone(owner, host, locks string, since time.Time) (why string, gone bool) {
	if owner == "" {
		return "no owner process was recorded", true
	}
	o, ok := parseOwner(owner)
	if !ok {
		return "", false
	}
	if o.host != host {
		// Another host, or this one renamed since: only the same boot id
		// and PID namespace say it is this kernel's process table.
		boot, ok := bootID()
		ns, nsOK := pidNamespace()
		if o.boot == "" || !ok || boot != o.boot || o.pidns == "" || !nsOK || ns != o.pidns {
			return "", false
		}
	}
	if o.boot != "" {
		// Only a boot id of this host tells that the owner's boot is over;
		// without it, a pid that exists may be one of an earlier boot.
		boot, ok := bootID()
		if !ok {
			return "", false
		}
		if boot != o.boot {
			return "owner process " + owner + " ran before this host restarted (boot " + boot + " now)", true
		}
		// Its pid is another PID namespace's: what it names here is
		// another process, or none. Only its lock can tell (a daemon
		// whose container restarted with the same name, in a new PID
		// namespace).
		if ns, ok := pidNamespace(); o.pidns != "" && (!ok || ns != o.pidns) {
			if free, known := ownerLockFree(locks, owner); known && free {
				return "owner process " + owner + " no longer holds its lock (in " + locks + "): it has exited", true
			}
			return "", false
		}
	}
	st := processStatus(o.pid)
	switch {
	case !st.known:
		return "", false
	case !st.exists:
		return "owner process " + owner + " no longer exists", true
	case st.zombie:
		return "owner process " + owner + " has exited", true
	case o.boot != "":
		ticks, ok := procStartTicks(o.pid)
		if ok && ticks != o.ticks {
			return "owner process " + owner + " is gone; its pid now belongs to a process started at tick " +
				strconv.FormatInt(ticks, 10) + " of this boot", true
		}
	case !st.started.IsZero() && !since.IsZero() && st.started.After(since.Add(startSlack)):
		return "owner process " + owner + " is gone; its pid now belongs to a process started after the study", true
	}
	return "", false
}

// procStartTicks reads when process pid started, in clock ticks since boot
// (field 22 of /proc/PID/stat); false where that cannot be read.
func procStartTicks(pid int) (int64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	_, ticks, ok := parseStat(string(b))
	return ticks, ok
}

// parseStat parses a /proc/PID/stat line, "pid (comm) state ppid ...", for
// the process's state (field 3) and start time in clock ticks since boot
// (field 22): comm may hold spaces and parentheses, so the fields are split
// after the last ')'.
func parseStat(stat string) (state string, ticks int64, ok bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 20 {
		return "", 0, false
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64)
	return f[0], ticks, err == nil && ticks >= 0
}

// bootID reads the id the kernel drew for this boot; false where it cannot
// be read.
func bootID() (string, bool) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", false
	}
	id := strings.TrimSpace(string(b))
	return id, id != "" && !strings.ContainsAny(id, ";@ ")
}

// procStatus is what this host can tell about a process.
type procStatus struct {
	known   bool      // false: this platform cannot tell
	exists  bool      // a process with the pid exists
	zombie  bool      // it has exited and waits to be reaped
	started time.Time // when it started (Linux only; zero when unknown)
}
