//! The store's schema, its migrations and how connections are opened.
//!
//! The version is `SQLite`'s `user_version`. [`MIGRATIONS`]`[i]` takes a database from version
//! `i` to `i + 1`, each in one transaction, on the writer's start; a database of a newer
//! version than this build knows is refused, never rewritten. Every table has a `host` column
//! so that one schema holds a single host's history and, later, a fleet's.
//!
//! Addresses are 16-byte keys ([`super::addr`]), times are Unix milliseconds (`*_ms`) or
//! Unix minutes (`minute`). docs/store.md describes every table.

use std::{fs, os::unix::fs::OpenOptionsExt as _, path::Path, time::Duration};

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// The schema this build writes and reads.
pub const VERSION: i64 = 2;

/// How long a connection waits for another one's lock before failing (the writer and
/// `vigil query` share the file).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Version 0 (empty) to 1.
const V1: &str = "
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    event_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    severity INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source BLOB,
    destination BLOB,
    destination_port INTEGER,
    score REAL,
    model_sha256 TEXT NOT NULL,
    model_phase TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'new',
    message TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE UNIQUE INDEX alerts_event ON alerts (host, event_id);
CREATE INDEX alerts_time ON alerts (time_ms);
CREATE INDEX alerts_source ON alerts (source, time_ms);
CREATE INDEX alerts_destination ON alerts (destination, time_ms);

CREATE TABLE actions (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    source BLOB,
    prefix TEXT,
    origin TEXT,
    expires_ms INTEGER,
    reason TEXT,
    message TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX actions_time ON actions (time_ms);
CREATE INDEX actions_source ON actions (source, time_ms);

CREATE TABLE flow_minutes (
    id INTEGER PRIMARY KEY,
    minute INTEGER NOT NULL,
    host TEXT NOT NULL,
    source BLOB NOT NULL,
    destination BLOB NOT NULL,
    protocol INTEGER NOT NULL,
    port INTEGER NOT NULL,
    flows INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    anomalous INTEGER NOT NULL
);
CREATE UNIQUE INDEX flow_minutes_key ON flow_minutes (minute, host, source, destination, protocol, port);
CREATE INDEX flow_minutes_source ON flow_minutes (source, minute);
CREATE INDEX flow_minutes_destination ON flow_minutes (destination, minute);

CREATE TABLE models (
    host TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    phase TEXT NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (host, sha256)
);

CREATE TABLE health (
    host TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    malformed INTEGER NOT NULL,
    blocklist_drops INTEGER NOT NULL,
    flows_tracked INTEGER NOT NULL,
    flow_capacity INTEGER NOT NULL,
    harvest_ms REAL NOT NULL,
    scoring_ms REAL NOT NULL,
    flows_scored INTEGER NOT NULL,
    alerts INTEGER NOT NULL,
    rules_active INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_phase TEXT NOT NULL,
    store_dropped INTEGER NOT NULL,
    PRIMARY KEY (host, time_ms)
);
CREATE INDEX health_time ON health (time_ms);
";

/// Version 1 to 2: the flow batches a collector stored, so that a batch delivered again adds
/// nothing to `flow_minutes`.
const V2: &str = "
CREATE TABLE fleet_batches (
    host TEXT NOT NULL,
    batch TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (host, batch)
);
CREATE INDEX fleet_batches_time ON fleet_batches (time_ms);
";

/// Each step's SQL, in order.
pub const MIGRATIONS: &[&str] = &[V1, V2];

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite { path: path.to_owned(), source }
}

/// Opens the database for the agent's writer, creating it (mode 0600: alerts name hosts and
/// what they did) and migrating it to [`VERSION`].
///
/// # Errors
/// The file cannot be created or opened, is not a database, or has a newer schema; a
/// migration fails (it is rolled back).
pub fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    let io = |source| StoreError::Io { path: path.to_owned(), source };
    // SQLite gives the -wal and -shm files the main file's mode: create it 0600 first.
    fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io)?;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sql(path))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(path))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql(path))?;
    if version > VERSION {
        return Err(StoreError::NewerSchema { path: path.to_owned(), version });
    }
    if version == 0 {
        // Only takes effect before the first table exists: freed pages can then be given back
        // to the file system after retention deletes rows.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL").map_err(sql(path))?;
    }
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).map_err(sql(path))?;
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA cache_size = -8000; PRAGMA temp_store = MEMORY;")
        .map_err(sql(path))?;
    migrate(&conn, version).map_err(sql(path))?;
    Ok(conn)
}

/// Runs the migrations from `version` up to [`VERSION`].
fn migrate(conn: &Connection, version: i64) -> rusqlite::Result<()> {
    for (step, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(usize::MAX)) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", i64::try_from(step + 1).unwrap_or(i64::MAX))?;
        tx.commit()?;
    }
    Ok(())
}

/// Opens the database read-only (`vigil query`, the console), while the agent may be writing.
///
/// # Errors
/// The file is missing or not a database, or its schema is not [`VERSION`].
pub fn open_for_reading(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing { path: path.to_owned() });
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sql(path))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(path))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql(path))?;
    match version {
        VERSION => Ok(conn),
        v if v > VERSION => Err(StoreError::NewerSchema { path: path.to_owned(), version: v }),
        v => Err(StoreError::OlderSchema { path: path.to_owned(), version: v }),
    }
}

/// Opens an existing database to change what analysts change (an alert's status), while the
/// agent may be writing.
///
/// # Errors
/// As [`open_for_reading`].
pub fn open_for_update(path: &Path) -> Result<Connection, StoreError> {
    drop(open_for_reading(path)?);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sql(path))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(path))?;
    Ok(conn)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_new_database_is_private_migrated_and_readable() {
        let dir = tempfile_dir();
        let path = dir.join("vigil.db");
        let conn = open_for_writing(&path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, VERSION);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(conn);
        // Opening again changes nothing; a reader sees the same version.
        drop(open_for_writing(&path).unwrap());
        drop(open_for_reading(&path).unwrap());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_version_1_store_is_migrated_with_its_rows() {
        let dir = tempfile_dir();
        let path = dir.join("v1.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute("INSERT INTO models (host, sha256, name, phase, first_ms, last_ms) VALUES ('h', 'ab', 'default', 'fixed', 1, 2)", [])
            .unwrap();
        drop(conn);
        let conn = open_for_writing(&path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 2);
        let kept: i64 = conn.query_row("SELECT count(*) FROM models", [], |r| r.get(0)).unwrap();
        let batches: i64 = conn.query_row("SELECT count(*) FROM fleet_batches", [], |r| r.get(0)).unwrap();
        assert_eq!((kept, batches), (1, 0));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn newer_schemas_and_files_that_are_not_databases_are_refused_untouched() {
        let dir = tempfile_dir();
        let newer = dir.join("newer.db");
        drop(open_for_writing(&newer).unwrap());
        Connection::open(&newer).unwrap().pragma_update(None, "user_version", VERSION + 1).unwrap();
        let e = open_for_writing(&newer).unwrap_err().to_string();
        assert!(e.contains("newer") && e.contains(&format!("{}", VERSION + 1)), "{e}");
        let e = open_for_reading(&newer).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");

        let garbage = dir.join("garbage.db");
        let junk = vec![0x5a_u8; 8192];
        fs::write(&garbage, &junk).unwrap();
        let e = open_for_writing(&garbage).unwrap_err().to_string();
        assert!(e.contains("garbage.db") && e.contains("not a database"), "{e}");
        assert_eq!(fs::read(&garbage).unwrap(), junk, "a file that is not ours is left as it was");

        let e = open_for_reading(&dir.join("none.db")).unwrap_err().to_string();
        assert!(e.contains("none.db") && e.contains("no store"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }

    pub(crate) fn tempfile_dir() -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vigil-store-{}-{}", std::process::id(), getrandom::u64().unwrap()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
