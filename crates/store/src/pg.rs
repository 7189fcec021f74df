//! The PostgreSQL store: a cluster's shared state, in a database its operators run.
//!
//! This module owns the connection and the schema. A store URL is read as libpq reads it
//! (`postgres://USER@HOST[:PORT]/DB[?...]`, several comma-separated hosts, `target_session_attrs`,
//! `connect_timeout`; a percent-encoded path as the host is a Unix socket's directory). The schema
//! is versioned: [`MIGRATIONS`] in order, applied at open inside one transaction that first takes
//! an advisory lock, so nodes that start together migrate once and none sees half a schema; a
//! database whose schema is newer than this build knows is refused and left untouched.
//!
//! What differs from the SQLite schema is what a shared database needs: code bundles are stored
//! once in chunks (a row per chunk rather than one value of any size), and asynchronous events
//! carry the lease under which a node runs them.

use std::str::FromStr;
use std::time::Duration;

use crate::StoreError;

/// The advisory lock key under which the schema is migrated (any constant shared by every
/// node: the ASCII of "ignition" read as an integer).
const MIGRATION_LOCK: i64 = 0x6967_6e69_7469_6f6e;

/// How long a connection attempt waits when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first schema: every table the SQLite store has, in PostgreSQL's types, with events
/// leased and bundles chunked.
const SCHEMA_1: &str = "
CREATE TABLE bundles (
    sha256      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE bundle_chunks (
    sha256      TEXT NOT NULL REFERENCES bundles(sha256) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    data        BYTEA NOT NULL,
    PRIMARY KEY (sha256, seq)
);
CREATE TABLE functions (
    name        TEXT PRIMARY KEY,
    runtime     TEXT NOT NULL,
    handler     TEXT NOT NULL,
    memory_mib  BIGINT NOT NULL,
    timeout_s   BIGINT NOT NULL,
    env         TEXT NOT NULL,
    reuse       BIGINT NOT NULL DEFAULT 0,
    egress      TEXT NOT NULL DEFAULT '[]',
    description TEXT NOT NULL DEFAULT '',
    layers      TEXT NOT NULL DEFAULT '[]',
    image       TEXT,
    code_sha256 TEXT NOT NULL REFERENCES bundles(sha256),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE events (
    request_id   TEXT PRIMARY KEY,
    function     TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    status       TEXT NOT NULL,
    next_at_ms   BIGINT NOT NULL,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    throttles    BIGINT NOT NULL DEFAULT 0,
    max_age_s    BIGINT,
    lease_owner  TEXT,
    lease_until_ms BIGINT
);
CREATE INDEX events_due ON events (status, next_at_ms);
CREATE TABLE logs (
    seq         BIGSERIAL PRIMARY KEY,
    function    TEXT NOT NULL,
    request_id  TEXT NOT NULL UNIQUE,
    at          BIGINT NOT NULL,
    log         TEXT NOT NULL
);
CREATE INDEX logs_by_function ON logs (function, seq);
CREATE TABLE versions (
    function    TEXT NOT NULL,
    version     BIGINT NOT NULL,
    config      TEXT NOT NULL,
    code_sha256 TEXT NOT NULL REFERENCES bundles(sha256),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (function, version)
);
CREATE TABLE aliases (
    function    TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    routing_version BIGINT,
    routing_ppm BIGINT,
    PRIMARY KEY (function, name)
);
CREATE TABLE credentials (
    access_key_id TEXT PRIMARY KEY,
    secret        TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE TABLE console_sessions (
    token_sha256  TEXT PRIMARY KEY,
    access_key_id TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    seq           BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE reserved_concurrency (
    function    TEXT PRIMARY KEY,
    reserved    BIGINT NOT NULL
);
CREATE TABLE schedules (
    tenant       TEXT NOT NULL,
    name         TEXT NOT NULL,
    definition   TEXT NOT NULL,
    next_fire_ms BIGINT,
    fired        BIGINT NOT NULL DEFAULT 0,
    missed       BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE INDEX schedules_due ON schedules (next_fire_ms);
CREATE TABLE event_invoke_configs (
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL DEFAULT '',
    config      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE provisioned (
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL,
    slots       BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE policies (
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL,
    sid         TEXT NOT NULL,
    statement   TEXT NOT NULL,
    seq         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (function, qualifier, sid)
);
CREATE TABLE tags (
    function    TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (function, key)
);
CREATE TABLE tenant_quotas (
    tenant      TEXT PRIMARY KEY,
    overrides   TEXT NOT NULL
);
CREATE TABLE function_urls (
    function    TEXT NOT NULL,
    qualifier   TEXT NOT NULL DEFAULT '',
    url_id      TEXT NOT NULL UNIQUE,
    auth        TEXT NOT NULL,
    cors        TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (function, qualifier)
);
CREATE TABLE layers (
    name         TEXT PRIMARY KEY,
    last_version BIGINT NOT NULL
);
CREATE TABLE layer_versions (
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    meta        TEXT NOT NULL,
    code_sha256 TEXT NOT NULL REFERENCES bundles(sha256),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
";

/// Concurrency permits the nodes lease (see [`crate::permits`]).
const SCHEMA_2: &str = "
CREATE TABLE concurrency_permits (
    scope       TEXT NOT NULL,
    node        TEXT NOT NULL,
    permits     BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    PRIMARY KEY (scope, node)
);
";

/// The schema's migrations, oldest first: the database's version is how many were applied.
/// A migration once released is never edited; a change is a new one at the end.
pub const MIGRATIONS: &[&str] = &[SCHEMA_1, SCHEMA_2];

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// The connection settings from a store URL, with this store's defaults where it says
/// nothing.
pub(crate) fn config(url: &str) -> Result<postgres::Config, StoreError> {
    let mut config = parse_url(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("ignition");
    Ok(config)
}

/// A connection, with the schema brought up to this build's.
pub(crate) fn connect(config: &postgres::Config) -> Result<postgres::Client, StoreError> {
    let mut client = config
        .connect(postgres::NoTls)
        .map_err(|source| StoreError::Postgres {
            doing: "connecting",
            source,
        })?;
    migrate(&mut client)?;
    Ok(client)
}

/// Reads a store URL. The error names what is wrong, never the URL itself (it may carry a
/// password).
fn parse_url(url: &str) -> Result<postgres::Config, StoreError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::Invalid(
            "a store URL starts with postgres:// (postgres://USER@HOST[:PORT]/DB)".to_owned(),
        ));
    }
    postgres::Config::from_str(url)
        .map_err(|e| StoreError::Invalid(format!("the store URL does not parse: {e}")))
}

/// Applies the migrations the database lacks, under the advisory lock, in one transaction.
fn migrate(client: &mut postgres::Client) -> Result<(), StoreError> {
    let failed = |doing: &'static str| move |source| StoreError::Postgres { doing, source };
    let known = schema_version();
    let mut tx = client.transaction().map_err(failed("migrating"))?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
         CREATE TABLE IF NOT EXISTS ignition_schema (
             only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
             version  BIGINT NOT NULL
         );
         INSERT INTO ignition_schema (version) VALUES (0) ON CONFLICT DO NOTHING;"
    ))
    .map_err(failed("taking the migration lock"))?;
    let found: i64 = tx
        .query_one("SELECT version FROM ignition_schema", &[])
        .map_err(failed("reading the schema version"))?
        .get(0);
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    let done = usize::try_from(found.max(0)).unwrap_or(usize::MAX);
    for migration in MIGRATIONS.iter().skip(done) {
        tx.batch_execute(migration)
            .map_err(failed("migrating the schema"))?;
    }
    tx.execute("UPDATE ignition_schema SET version = $1", &[&known])
        .map_err(failed("recording the schema version"))?;
    tx.commit().map_err(failed("committing the migration"))
}
