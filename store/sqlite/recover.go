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
// reports it (the boot time is whole seconds) and small clock adjustments.
const startSlack = time.Second

// OwnerID returns "pid@hostname" for the current process: what a study
// records in Owner while this process runs it.
func OwnerID() string { return strconv.Itoa(os.Getpid()) + "@" + hostname() }

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
// this host that no longer exists, is a zombie, or started after the study
// did (its pid was reused — e.g. a restarted daemon that is again pid 1 in
// its container). A study whose owner is alive, on another host, or written
// in a form other than "pid@hostname" is left alone: this process cannot
// tell that its owner is gone.
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
		if why, ok := ownerGone(c.owner, host, fromNanos(since)); ok {
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
	return n, nil
}

// ownerGone reports whether the process that owns a running study since
// since is gone, and why, from this host's point of view.
func ownerGone(owner, host string, since time.Time) (why string, gone bool) {
	if owner == "" {
		return "no owner process was recorded", true
	}
	p, h, ok := strings.Cut(owner, "@")
	pid, err := strconv.Atoi(p)
	if !ok || err != nil || pid <= 0 || h != host {
		return "", false
	}
	st := processStatus(pid)
	switch {
	case !st.known:
		return "", false
	case !st.exists:
		return "owner process " + owner + " no longer exists", true
	case st.zombie:
		return "owner process " + owner + " has exited", true
	case !st.started.IsZero() && !since.IsZero() && st.started.After(since.Add(startSlack)):
		return "owner process " + owner + " is gone; its pid now belongs to a process started after the study", true
	}
	return "", false
}

// procStatus is what this host can tell about a process.
type procStatus struct {
	known   bool      // false: this platform cannot tell
	exists  bool      // a process with the pid exists
	zombie  bool      // it has exited and waits to be reaped
	started time.Time // when it started (Linux only; zero when unknown)
}
