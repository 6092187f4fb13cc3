//! The database schema and its migrations (tracked in `PRAGMA user_version`).
//!
//! Migrations only ever append to [`MIGRATIONS`]; migration `i` (0-based) takes a database from
//! `user_version = i` to `i + 1`, in one transaction.

/// `PRAGMA application_id` of every opha store file ("opha"), so that a foreign SQLite file
/// dropped into the directory is refused instead of being written to.
pub const APPLICATION_ID: i32 = 0x6f70_6861;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

pub const MIGRATIONS: &[&str] = &[
    // 1: records, their indexes, dedupe ranges, latest-state tables.
    r#"
-- Every stored record once. The indexed columns are copies of fields of `frame` so that
-- operators can read and filter with the sqlite3 shell; `frame` is the authority.
CREATE TABLE records (
    id         INTEGER PRIMARY KEY,      -- insertion order; the tie-breaker of keyset paging
    poller     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    kind       INTEGER NOT NULL,         -- wire FrameKind: 1 metrics, 2 event, 3 service,
                                         -- 4 daemon health, 5 peer status
    time_ms    INTEGER NOT NULL,         -- Record::time_ms, unix milliseconds
    vlan       INTEGER,                  -- node, when the record is about one
    addr       TEXT,
    node_name  TEXT,
    event_kind TEXT,                     -- events only: EventKind in snake_case, e.g. node_down
    severity   INTEGER,                  -- events only: 0 info .. 4 critical
    frame      BLOB    NOT NULL,         -- the wire frame of the Sequenced record (postcard)
    UNIQUE (poller, epoch, seq)          -- last line of defence behind received_ranges
);
-- Every index ends in the rowid implicitly, so (.., time_ms, id) orders pages exactly.
CREATE INDEX records_kind_time ON records (kind, time_ms);
CREATE INDEX records_node_time ON records (kind, vlan, addr, time_ms);
CREATE INDEX records_event_kind_time ON records (event_kind, time_ms) WHERE event_kind IS NOT NULL;
CREATE INDEX records_severity_time ON records (severity, time_ms) WHERE severity IS NOT NULL;

-- Dedupe state: the seqs held per (poller, epoch) as half-open ranges [start_seq, end_seq).
-- Rewritten in the same transaction as the records it describes. Retention never deletes it.
CREATE TABLE received_ranges (
    poller     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    start_seq  INTEGER NOT NULL,
    end_seq    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (poller, epoch, start_seq),
    CHECK (start_seq < end_seq)
) WITHOUT ROWID;

-- Latest state per service check (by checked_ms), for the services table.
CREATE TABLE services_latest (
    service    TEXT    NOT NULL,
    vlan       INTEGER NOT NULL,
    addr       TEXT    NOT NULL,
    state      INTEGER NOT NULL,         -- 0 up, 1 degraded, 2 down
    checked_ms INTEGER NOT NULL,
    frame      BLOB    NOT NULL,
    PRIMARY KEY (service, vlan, addr)
) WITHOUT ROWID;

-- Latest heartbeat per peer and health per (peer, daemon), for the Home view's cards.
CREATE TABLE peer_status (
    peer    TEXT    PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    frame   BLOB    NOT NULL
) WITHOUT ROWID;
CREATE TABLE daemon_health (
    peer       TEXT    NOT NULL,
    daemon     TEXT    NOT NULL,
    state      INTEGER NOT NULL,         -- 0 up, 1 down, 2 unknown
    checked_ms INTEGER NOT NULL,
    frame      BLOB    NOT NULL,
    PRIMARY KEY (peer, daemon)
) WITHOUT ROWID;

-- Which scope this file belongs to, checked on every open: a file renamed to another
-- tenant's name is refused rather than served as that tenant's data.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"#,
];
