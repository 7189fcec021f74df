//! The SQLite backend: the embedded store's schema and its migrations, and the functions and
//! bundles not yet written against [`crate::sql`].

use std::path::Path;

use rusqlite::Connection;

use crate::store::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bundles (
    sha256      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    data        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS functions (
    name        TEXT PRIMARY KEY,
    runtime     TEXT NOT NULL,
    handler     TEXT NOT NULL,
    memory_mib  INTEGER NOT NULL,
    timeout_s   INTEGER NOT NULL,
    env         TEXT NOT NULL,
    reuse       INTEGER NOT NULL DEFAULT 0,
    egress      TEXT NOT NULL DEFAULT '[]',
    description TEXT NOT NULL DEFAULT '',
    layers      TEXT NOT NULL DEFAULT '[]',
    image       TEXT,
    code_sha256 TEXT NOT NULL REFERENCES bundles(sha256),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    request_id   TEXT PRIMARY KEY,
    function     TEXT NOT NULL,
    payload      BLOB NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    status       TEXT NOT NULL,
    next_at_ms   INTEGER NOT NULL,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    throttles    INTEGER NOT NULL DEFAULT 0,
    max_age_s    INTEGER,
    lease_owner  TEXT,
    lease_until_ms INTEGER
);
CREATE INDEX IF NOT EXISTS events_due ON events (status, next_at_ms);
CREATE TABLE IF NOT EXISTS logs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    function    TEXT NOT NULL,
    request_id  TEXT NOT NULL UNIQUE,
    at          INTEGER NOT NULL,
    log         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (function, seq);
CREATE TABLE IF NOT EXISTS versions (
    function    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    config      TEXT NOT NULL,
    code_sha256 TEXT NOT NULL REFERENCES bundles(sha256),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (function, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    function    TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    routing_version INTEGER,
    routing_ppm INTEGER,
    PRIMARY KEY (function, name)
);
CREATE TABLE IF NOT EXISTS credentials (
    access_key_id TEXT PRIMARY KEY,
    secret        TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_sha256  TEXT PRIMARY KEY,
    access_key_id TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    seq           INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reserved_concurrency (
    function    TEXT PRIMARY KEY,
    reserved    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    tenant       TEXT NOT NULL,
    name         TEXT NOT NULL,
    definition   TEXT NOT NULL,
    next_fire_ms INTEGER,
    fired        INTEGER NOT NULL DEFAULT 0,
    missed       INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_fire_ms);
CREATE TABLE IF NOT EXISTS event_invoke_configs (
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL DEFAULT '',
    config      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE IF NOT EXISTS provisioned (
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL,
    slots       INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE IF NOT EXISTS policies (
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL,
    sid         TEXT NOT NULL,
    statement   TEXT NOT NULL,
    seq         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (function, qualifier, sid)
);
CREATE TABLE IF NOT EXISTS tags (
    function    TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (function, key)
);
CREATE TABLE IF NOT EXISTS tenant_quotas (
    tenant      TEXT PRIMARY KEY,
    overrides   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS function_urls (
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL DEFAULT '',
    url_id      TEXT NOT NULL UNIQUE,
    auth        TEXT NOT NULL,
    cors        TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE IF NOT EXISTS concurrency_permits (
    scope       TEXT NOT NULL,
    node        TEXT NOT NULL,
    permits     INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    PRIMARY KEY (scope, node)
);
CREATE TABLE IF NOT EXISTS layers (
    name         TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS layer_versions (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    meta        TEXT NOT NULL,
    code_sha256 TEXT NOT NULL REFERENCES bundles(sha256),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
";

/// Opens (creating if needed) `DATA_DIR/ignition.db`, its schema brought up to this build's.
pub(crate) fn open(data_dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    prepare(Connection::open(data_dir.join("ignition.db"))?)
}

/// An in-memory database with the schema.
pub(crate) fn in_memory() -> Result<Connection, StoreError> {
    prepare(Connection::open_in_memory()?)
}

fn prepare(conn: Connection) -> Result<Connection, StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let found = schema_version(&conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    Ok(conn)
}

/// The database's schema version: how many migrations were applied.
pub(crate) fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// The migrations [`migrate`] knows: a database past it was made by a newer version.
const SCHEMA_VERSION: i64 = 12;

/// Brings a database made by an earlier version up to [`SCHEMA`]; `user_version` counts the
/// migrations applied.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        let has_reuse = conn
            .prepare("SELECT 1 FROM pragma_table_info('functions') WHERE name = 'reuse'")?
            .exists([])?;
        if !has_reuse {
            conn.execute_batch(
                "ALTER TABLE functions ADD COLUMN reuse INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        conn.pragma_update(None, "user_version", 1)?;
    }
    if version < 2 {
        let has_egress = conn
            .prepare("SELECT 1 FROM pragma_table_info('functions') WHERE name = 'egress'")?
            .exists([])?;
        if !has_egress {
            conn.execute_batch(
                "ALTER TABLE functions ADD COLUMN egress TEXT NOT NULL DEFAULT '[]'",
            )?;
        }
        conn.pragma_update(None, "user_version", 2)?;
    }
    if version < 3 {
        let has_throttles = conn
            .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'throttles'")?
            .exists([])?;
        if !has_throttles {
            conn.execute_batch(
                "ALTER TABLE events ADD COLUMN throttles INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        conn.pragma_update(None, "user_version", 3)?;
    }
    if version < 4 {
        let has_max_age = conn
            .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'max_age_s'")?
            .exists([])?;
        if !has_max_age {
            conn.execute_batch("ALTER TABLE events ADD COLUMN max_age_s INTEGER")?;
        }
        conn.pragma_update(None, "user_version", 4)?;
    }
    if version < 5 {
        let has_description = conn
            .prepare("SELECT 1 FROM pragma_table_info('functions') WHERE name = 'description'")?
            .exists([])?;
        if !has_description {
            conn.execute_batch(
                "ALTER TABLE functions ADD COLUMN description TEXT NOT NULL DEFAULT ''",
            )?;
        }
        conn.pragma_update(None, "user_version", 5)?;
    }
    if version < 6 {
        let has_routing = conn
            .prepare("SELECT 1 FROM pragma_table_info('aliases') WHERE name = 'routing_version'")?
            .exists([])?;
        if !has_routing {
            conn.execute_batch(
                "ALTER TABLE aliases ADD COLUMN routing_version INTEGER;
                 ALTER TABLE aliases ADD COLUMN routing_ppm INTEGER;",
            )?;
        }
        conn.pragma_update(None, "user_version", 6)?;
    }
    if version < 7 {
        let has_layers = conn
            .prepare("SELECT 1 FROM pragma_table_info('functions') WHERE name = 'layers'")?
            .exists([])?;
        if !has_layers {
            conn.execute_batch(
                "ALTER TABLE functions ADD COLUMN layers TEXT NOT NULL DEFAULT '[]'",
            )?;
        }
        conn.pragma_update(None, "user_version", 7)?;
    }
    if version < 8 {
        let has_image = conn
            .prepare("SELECT 1 FROM pragma_table_info('functions') WHERE name = 'image'")?
            .exists([])?;
        if !has_image {
            conn.execute_batch("ALTER TABLE functions ADD COLUMN image TEXT")?;
        }
        conn.pragma_update(None, "user_version", 8)?;
    }
    if version < 9 {
        let has_seq = conn
            .prepare("SELECT 1 FROM pragma_table_info('console_sessions') WHERE name = 'seq'")?
            .exists([])?;
        if !has_seq {
            conn.execute_batch(
                "ALTER TABLE console_sessions ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
                 UPDATE console_sessions SET seq = rowid;",
            )?;
        }
        conn.pragma_update(None, "user_version", 9)?;
    }
    if version < 10 {
        let has_lease = conn
            .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'lease_owner'")?
            .exists([])?;
        if !has_lease {
            conn.execute_batch(
                "ALTER TABLE events ADD COLUMN lease_owner TEXT;
                 ALTER TABLE events ADD COLUMN lease_until_ms INTEGER;",
            )?;
        }
        conn.pragma_update(None, "user_version", 10)?;
    }
    if version < 11 {
        let has_seq = conn
            .prepare("SELECT 1 FROM pragma_table_info('policies') WHERE name = 'seq'")?
            .exists([])?;
        if !has_seq {
            // The order statements were added in, which rowid gave before.
            conn.execute_batch(
                "ALTER TABLE policies ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
                 UPDATE policies SET seq = rowid;",
            )?;
        }
        conn.pragma_update(None, "user_version", 11)?;
    }
    if version < 12 {
        // The table itself comes with SCHEMA (CREATE TABLE IF NOT EXISTS).
        conn.pragma_update(None, "user_version", 12)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[test]
    fn a_database_made_by_a_newer_version_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("ignition.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        match Store::open(dir.path()) {
            Err(e @ StoreError::NewerSchema { found: 99, .. }) => {
                assert!(e.to_string().contains("newer"), "{e}");
            }
            other => panic!("expected the newer schema refused, got {other:?}"),
        }
        let conn = Connection::open(dir.path().join("ignition.db")).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 99, "left as it was");
        let fresh = Store::in_memory().unwrap();
        let v = fresh.schema_version().unwrap();
        assert_eq!(v, SCHEMA_VERSION, "a migration added bumps SCHEMA_VERSION");
    }

    #[test]
    fn a_database_from_before_reuse_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("ignition.db")).unwrap();
        conn.execute_batch(&SCHEMA.replace(
            "    reuse       INTEGER NOT NULL DEFAULT 0,\n    egress      TEXT NOT NULL DEFAULT '[]',\n    description TEXT NOT NULL DEFAULT '',\n    layers      TEXT NOT NULL DEFAULT '[]',\n",
            "",
        ))
            .unwrap();
        conn.execute("INSERT INTO bundles VALUES ('h', 1, x'00', 0)", [])
            .unwrap();
        conn.execute(
            "INSERT INTO functions (name, runtime, handler, memory_mib, timeout_s, env, code_sha256, created_at, updated_at)
             VALUES ('old', 'python3', 'a.b', 128, 3, '{}', 'h', 0, 0)",
            [],
        )
        .unwrap();
        drop(conn);
        let s = Store::open(dir.path()).unwrap();
        let old = s.get_function("old").unwrap().unwrap();
        assert!(!old.config.reuse);
        assert!(old.config.egress.is_empty());
        assert!(old.config.description.is_empty());
        assert!(old.config.layers.is_empty());
    }
}
