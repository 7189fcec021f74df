//! The SQLite backend: the embedded store's schema and its migrations, and the functions and
//! bundles not yet written against [`crate::sql`].

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{FunctionConfig, FunctionRecord, Runtime};
use crate::store::{now, sha256_hex, Store, StoreError};

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

impl Store {
    /// Creates or replaces a function with its code, atomically.
    pub fn put_function(
        &self,
        config: &FunctionConfig,
        code_tar: &[u8],
    ) -> Result<FunctionRecord, StoreError> {
        put_function_on(&mut *self.lite()?, config, code_tar)
    }

    /// One function.
    pub fn get_function(&self, name: &str) -> Result<Option<FunctionRecord>, StoreError> {
        let conn = self.lite()?;
        let mut stmt = conn.prepare(&format!("{SELECT} WHERE f.name = ?1"))?;
        let row = stmt.query_row(params![name], row_to_record).optional()?;
        row.transpose()
    }

    /// All functions, by name.
    pub fn list_functions(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        let conn = self.lite()?;
        let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY f.name"))?;
        let rows = stmt.query_map([], row_to_record)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|x| x))
            .collect()
    }

    /// Deletes a function; `false` if there was none.
    pub fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.lite()?;
        let tx = conn.transaction()?;
        let latest: Option<(String, String)> = tx
            .query_row(
                "SELECT code_sha256, layers FROM functions WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((hash, layers)) = latest else {
            return Ok(false);
        };
        let mut hashes = vec![hash];
        hashes.extend(layer_hashes(&layers));
        {
            let mut stmt =
                tx.prepare("SELECT code_sha256, config FROM versions WHERE function = ?1")?;
            let rows = stmt.query_map(params![name], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (h, config) = row?;
                hashes.push(h);
                hashes.extend(layer_hashes(&config));
            }
        }
        hashes.sort();
        hashes.dedup();
        tx.execute("DELETE FROM functions WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM versions WHERE function = ?1", params![name])?;
        tx.execute("DELETE FROM aliases WHERE function = ?1", params![name])?;
        tx.execute(
            "DELETE FROM function_urls WHERE function = ?1",
            params![name],
        )?;
        tx.execute("DELETE FROM tags WHERE function = ?1", params![name])?;
        tx.execute("DELETE FROM policies WHERE function = ?1", params![name])?;
        tx.execute("DELETE FROM provisioned WHERE function = ?1", params![name])?;
        tx.execute(
            "DELETE FROM event_invoke_configs WHERE function = ?1",
            params![name],
        )?;
        for h in hashes {
            gc_bundle(&tx, &h)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// A bundle's canonical tar by hash.
    pub fn get_bundle(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.lite()?;
        Ok(conn
            .query_row(
                "SELECT data FROM bundles WHERE sha256 = ?1",
                params![sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Number of stored bundles.
    pub fn bundle_count(&self) -> Result<u64, StoreError> {
        let conn = self.lite()?;
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM bundles", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// [`Store::put_function`] on a connection the caller holds (so that it can check first).
pub(crate) fn put_function_on(
    conn: &mut Connection,
    config: &FunctionConfig,
    code_tar: &[u8],
) -> Result<FunctionRecord, StoreError> {
    let hash = sha256_hex(code_tar);
    let env =
        serde_json::to_string(&config.env).map_err(|_| StoreError::Corrupt(config.name.clone()))?;
    let egress = serde_json::to_string(&config.egress)
        .map_err(|_| StoreError::Corrupt(config.name.clone()))?;
    let layers = serde_json::to_string(&config.layers)
        .map_err(|_| StoreError::Corrupt(config.name.clone()))?;
    let image = config
        .image
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|_| StoreError::Corrupt(config.name.clone()))?;
    let t = now();
    let tx = conn.transaction()?;
    let previous: Option<(String, i64, String)> = tx
        .query_row(
            "SELECT code_sha256, created_at, layers FROM functions WHERE name = ?1",
            params![config.name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    tx.execute(
        "INSERT OR IGNORE INTO bundles (sha256, size, data, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![hash, code_tar.len() as i64, code_tar, t],
    )?;
    let created_at = previous.as_ref().map_or(t, |(_, c, _)| *c);
    tx.execute(
        "INSERT OR REPLACE INTO functions
         (name, runtime, handler, memory_mib, timeout_s, env, code_sha256, created_at, updated_at, reuse, egress, description, layers, image)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            config.name,
            // What the function was made with; a name the runtime parses back from.
            if config.runtime_name.is_empty() {
                config.runtime.as_str()
            } else {
                config.runtime_name.as_str()
            },
            config.handler,
            config.memory_mib,
            config.timeout_s,
            env,
            hash,
            created_at,
            t,
            config.reuse,
            egress,
            config.description,
            layers,
            image
        ],
    )?;
    if let Some((old, _, old_layers)) = previous {
        gc_bundle(&tx, &old)?;
        for h in layer_hashes(&old_layers) {
            gc_bundle(&tx, &h)?;
        }
    }
    tx.commit()?;
    Ok(FunctionRecord {
        config: config.clone(),
        code_sha256: hash,
        code_size: code_tar.len() as u64,
        created_at,
        updated_at: t,
    })
}

/// The migrations [`migrate`] knows: a database past it was made by a newer version.
const SCHEMA_VERSION: i64 = 10;

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
                "ALTER TABLE console_sessions ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
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
    Ok(())
}

const SELECT: &str = "SELECT f.name, f.runtime, f.handler, f.memory_mib, f.timeout_s, f.env,
    f.code_sha256, b.size, f.created_at, f.updated_at, f.reuse, f.egress, f.description, f.layers, f.image
    FROM functions f JOIN bundles b ON b.sha256 = f.code_sha256";

/// Drops the bundle `hash` unless a function, a version or a layer version still refers to
/// it (functions and versions name their layers' bundles in their JSON: a hash is 64 hex
/// digits, which nothing else in it can contain).
pub(crate) fn gc_bundle(tx: &rusqlite::Transaction<'_>, hash: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM bundles WHERE sha256 = ?1
         AND NOT EXISTS (SELECT 1 FROM functions WHERE code_sha256 = ?1 OR instr(layers, ?1) > 0)
         AND NOT EXISTS (SELECT 1 FROM versions WHERE code_sha256 = ?1 OR instr(config, ?1) > 0)
         AND NOT EXISTS (SELECT 1 FROM layer_versions WHERE code_sha256 = ?1)",
        params![hash],
    )?;
    Ok(())
}

/// The bundles of the layers in a stored `layers` column or version configuration.
pub(crate) fn layer_hashes(json: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Layers {
        #[serde(default)]
        layers: Vec<crate::model::LayerRef>,
    }
    serde_json::from_str::<Vec<crate::model::LayerRef>>(json)
        .or_else(|_| serde_json::from_str::<Layers>(json).map(|l| l.layers))
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.code_sha256)
        .collect()
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<FunctionRecord, StoreError>> {
    let name: String = r.get(0)?;
    let runtime_name: String = r.get(1)?;
    let env: String = r.get(5)?;
    let size: i64 = r.get(7)?;
    let egress: String = r.get(11)?;
    let layers: String = r.get(13)?;
    let image: Option<String> = r.get(14)?;
    let (Ok(runtime), Ok(env), Ok(egress), Ok(layers), Ok(image)) = (
        Runtime::parse(&runtime_name),
        serde_json::from_str(&env),
        serde_json::from_str(&egress),
        serde_json::from_str(&layers),
        image.as_deref().map(serde_json::from_str).transpose(),
    ) else {
        return Ok(Err(StoreError::Corrupt(name)));
    };
    Ok(Ok(FunctionRecord {
        config: FunctionConfig {
            name,
            runtime,
            runtime_name,
            handler: r.get(2)?,
            memory_mib: r.get(3)?,
            timeout_s: r.get(4)?,
            env,
            reuse: r.get(10)?,
            egress,
            description: r.get(12)?,
            layers,
            image,
        },
        code_sha256: r.get(6)?,
        code_size: u64::try_from(size).unwrap_or(0),
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

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

    fn config(name: &str) -> FunctionConfig {
        FunctionConfig {
            name: name.into(),
            runtime: Runtime::Python3,
            runtime_name: "python3.11".into(),
            handler: "app.handler".into(),
            memory_mib: 128,
            timeout_s: 3,
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            reuse: name == "b",
            egress: vec!["198.18.0.0/15:443/tcp".parse().unwrap()],
            description: format!("about {name}"),
            layers: Vec::new(),
            image: None,
        }
    }

    #[test]
    fn an_image_function_keeps_its_pinned_image_in_latest_and_in_versions() {
        let s = Store::in_memory().unwrap();
        let image = ignition_types::FunctionImage {
            uri: "127.0.0.1:5000/hello:1".into(),
            resolved_uri: format!("127.0.0.1:5000/hello@sha256:{}", "b".repeat(64)),
            digest: format!("sha256:{}", "b".repeat(64)),
            run: ignition_types::ImageRunConfig {
                entrypoint: vec!["/entry".into()],
                ..Default::default()
            },
            overrides: ignition_types::ImageOverrides {
                command: Some(vec!["app.handler".into()]),
                ..Default::default()
            },
        };
        let c = FunctionConfig {
            handler: String::new(),
            runtime: Runtime::Provided,
            runtime_name: String::new(),
            image: Some(image.clone()),
            ..config("img")
        };
        s.put_function(&c, b"").unwrap();
        assert_eq!(
            s.get_function("img").unwrap().unwrap().config.image,
            Some(image.clone())
        );
        let (n, _) = s.publish_version("img", None).unwrap().unwrap();
        let v = s.get_version("img", n).unwrap().unwrap();
        assert_eq!(v.config.image, Some(image.clone()));
        // A bad digest, a relative working directory, layers: each refused by name.
        for bad in [
            ignition_types::FunctionImage {
                digest: "sha256:xyz".into(),
                ..image.clone()
            },
            ignition_types::FunctionImage {
                overrides: ignition_types::ImageOverrides {
                    working_directory: Some("rel".into()),
                    ..Default::default()
                },
                ..image.clone()
            },
        ] {
            let c = FunctionConfig {
                image: Some(bad),
                ..c.clone()
            };
            assert!(c.validate().is_err());
        }
        let with_layers = FunctionConfig {
            layers: vec![crate::model::LayerRef {
                arn: "arn:aws:lambda:local:000000000000:layer:l:1".into(),
                code_sha256: "c".repeat(64),
                code_size: 1,
            }],
            ..c.clone()
        };
        assert!(with_layers
            .validate()
            .unwrap_err()
            .to_string()
            .contains("layers"));
    }

    #[test]
    fn put_get_list_delete() {
        let s = Store::in_memory().unwrap();
        let rec = s.put_function(&config("b"), b"code-b").unwrap();
        s.put_function(&config("a"), b"code-a").unwrap();
        assert_eq!(rec.code_sha256, sha256_hex(b"code-b"));
        let got = s.get_function("b").unwrap().unwrap();
        assert_eq!(got.config, config("b"));
        assert_eq!(got.code_size, 6);
        assert_eq!(s.get_bundle(&got.code_sha256).unwrap().unwrap(), b"code-b");
        let names: Vec<_> = s
            .list_functions()
            .unwrap()
            .into_iter()
            .map(|r| r.config.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(s.delete_function("b").unwrap());
        assert!(!s.delete_function("b").unwrap());
        assert!(s.get_function("b").unwrap().is_none());
        assert!(
            s.get_bundle(&rec.code_sha256).unwrap().is_none(),
            "unreferenced bundle removed"
        );
    }

    #[test]
    fn bundles_are_shared_by_hash_and_collected_on_update() {
        let s = Store::in_memory().unwrap();
        s.put_function(&config("a"), b"same").unwrap();
        s.put_function(&config("b"), b"same").unwrap();
        assert_eq!(s.bundle_count().unwrap(), 1);
        let first = s.get_function("a").unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.put_function(&config("a"), b"new code").unwrap();
        assert_eq!(s.bundle_count().unwrap(), 2, "old bundle still used by b");
        let updated = s.get_function("a").unwrap().unwrap();
        assert_eq!(
            updated.created_at, first.created_at,
            "update keeps creation time"
        );
        s.put_function(&config("b"), b"new code").unwrap();
        assert_eq!(s.bundle_count().unwrap(), 1, "old bundle collected");
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

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path())
            .unwrap()
            .put_function(&config("a"), b"x")
            .unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get_function("a").unwrap().unwrap().config, config("a"));
    }
}
