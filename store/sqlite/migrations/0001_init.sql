-- 0001_init: studies and everything a study produces.
--
-- Times are INTEGER Unix nanoseconds (UTC), NULL when unset. Durations are
-- INTEGER nanoseconds. Nested values (space, metrics, SLA, matrices,
-- observations, check results, event data) are JSON text in the shape the
-- root package's types marshal to, so `sqlite3 justrunit.db` and json_extract
-- can read them.

CREATE TABLE studies (
	id              TEXT    PRIMARY KEY,
	name            TEXT    NOT NULL DEFAULT '',
	target          TEXT    NOT NULL,
	space           TEXT    NOT NULL,            -- JSON justrunit.Space
	metrics         TEXT    NOT NULL,            -- JSON []justrunit.Metric
	sla             TEXT,                        -- JSON justrunit.SLA, NULL when none
	time_bound_ns   INTEGER NOT NULL,
	warm_up_ns      INTEGER NOT NULL,
	window_ns       INTEGER NOT NULL,
	slots           INTEGER NOT NULL,
	strategy        TEXT    NOT NULL DEFAULT '',
	interpolator    TEXT    NOT NULL DEFAULT '',
	check_threshold REAL    NOT NULL,
	state           TEXT    NOT NULL,
	owner           TEXT    NOT NULL DEFAULT '', -- "pid@hostname"
	created_ns      INTEGER NOT NULL,
	started_ns      INTEGER,
	finished_ns     INTEGER,
	error           TEXT    NOT NULL DEFAULT '',
	experiments     INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Studies are listed newest first; RecoverInterrupted looks for running ones.
CREATE INDEX studies_by_created ON studies (created_ns DESC, id DESC);
CREATE INDEX studies_by_state ON studies (state);

-- One matrix per study, replaced on every save.
CREATE TABLE matrices (
	study_id   TEXT    PRIMARY KEY REFERENCES studies (id) ON DELETE CASCADE,
	data       TEXT    NOT NULL,                 -- JSON justrunit.Matrix
	updated_ns INTEGER NOT NULL
) STRICT;

-- Observations in the order added; seq counts from 1 per study.
CREATE TABLE observations (
	study_id TEXT    NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
	seq      INTEGER NOT NULL,
	data     TEXT    NOT NULL,                   -- JSON justrunit.Observation
	PRIMARY KEY (study_id, seq)
) STRICT, WITHOUT ROWID;

-- Check results in the order added.
CREATE TABLE checks (
	id       INTEGER PRIMARY KEY AUTOINCREMENT,
	study_id TEXT    NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
	time_ns  INTEGER,
	metric   TEXT    NOT NULL,
	passed   INTEGER NOT NULL,                   -- 0 or 1
	data     TEXT    NOT NULL                    -- JSON justrunit.CheckResult
) STRICT;

CREATE INDEX checks_by_study ON checks (study_id, id);

-- Events are a log: study_id is not a foreign key, so an event about a study
-- that was never stored (or one not about a study at all, NULL) is still kept.
-- AUTOINCREMENT keeps IDs increasing forever, so a reader polling with
-- AfterID never misses or repeats one.
CREATE TABLE events (
	id       INTEGER PRIMARY KEY AUTOINCREMENT,
	time_ns  INTEGER NOT NULL,
	study_id TEXT,
	kind     TEXT    NOT NULL,
	level    TEXT    NOT NULL,
	message  TEXT    NOT NULL DEFAULT '',
	data     TEXT                                -- JSON object, NULL when none
) STRICT;

CREATE INDEX events_by_study ON events (study_id, id);
CREATE INDEX events_by_kind ON events (kind, id);
