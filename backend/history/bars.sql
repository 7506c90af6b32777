-- Candlewire bar store (owned by backend/store.py): bars per series, and the spans of open
-- times known to be complete as the provider answered them (empty spans included: a
-- weekend, a halt, before listing). Applied with IF NOT EXISTS at every start; the file is
-- in WAL mode (set by the code).

-- One row per (source, name, interval); exhausted_before: nothing older exists upstream.
CREATE TABLE IF NOT EXISTS bar_series (
    id               INTEGER PRIMARY KEY,
    source           TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    interval         TEXT    NOT NULL,
    exhausted_before INTEGER,
    UNIQUE (source, name, interval)
);

-- Bars by open time (UTC seconds); forming = 1 for a bar that may still change.
CREATE TABLE IF NOT EXISTS bars (
    series  INTEGER NOT NULL,
    t       INTEGER NOT NULL,
    o       REAL,
    h       REAL,
    l       REAL,
    c       REAL,
    v       REAL,
    forming INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (series, t)
) WITHOUT ROWID;

-- Inclusive spans [a, b] of open times known complete, disjoint per series.
CREATE TABLE IF NOT EXISTS bar_coverage (
    series INTEGER NOT NULL,
    a      INTEGER NOT NULL,
    b      INTEGER NOT NULL,
    PRIMARY KEY (series, a)
) WITHOUT ROWID;
