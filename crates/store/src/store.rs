//! The store and its two backends: SQLite in the node's data directory (a single node's
//! default) and PostgreSQL (what a cluster's nodes share).
//!
//! Each part of the store is written once against [`crate::sql::Sql`] and runs on either
//! backend through [`Store::with`] and [`Store::transaction`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::pool::Pool;
use crate::sql::{Lite, Pg, Sql};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// PostgreSQL could not be reached a moment ago; it is not tried again for a second.
    #[error("PostgreSQL is unreachable (trying again shortly)")]
    Unavailable,
    /// PostgreSQL reported an error, or could not be reached.
    #[error("PostgreSQL, {doing}: {source}")]
    Postgres {
        /// What the store was doing.
        doing: &'static str,
        /// The error.
        source: postgres::Error,
    },
    /// A value given to the store is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A stored row does not decode (the database was changed by something else).
    #[error("corrupt row for {0}")]
    Corrupt(String),
    /// The database was made or migrated by a newer Ignition: this one does not know its
    /// schema and leaves it untouched.
    #[error("the database's schema is version {found}, newer than this Ignition knows ({known}): run the newer version, or restore a backup made for this one")]
    NewerSchema {
        /// The database's schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// The write would take a tenant past a quota; nothing was written.
    #[error("{} quota of {limit} reached", quota.flag())]
    QuotaExceeded {
        /// Which quota.
        quota: crate::quotas::Quota,
        /// Its value for the tenant.
        limit: u64,
    },
}

/// The store: on SQLite one connection behind a mutex (SQLite serializes writers anyway, and
/// every operation here is short); on PostgreSQL a small pool (see [`crate::pool`]).
pub struct Store {
    backend: Backend,
}

enum Backend {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(Box<Shared>),
}

/// The PostgreSQL backend's state.
struct Shared {
    pool: Pool,
    /// Statements sent to PostgreSQL (not counting the cache's listener).
    statements: AtomicU64,
    cache: Arc<Cache>,
    /// Tells the cache's listener to end.
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("Store")
            .field("backend", &backend)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a database half-written (transactions roll
    // back), so the connection is still good.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens (creating if needed) the SQLite store `DATA_DIR/ignition.db`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::sqlite(crate::sqlite::open(data_dir)?))
    }

    /// An in-memory SQLite store, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Ok(Self::sqlite(crate::sqlite::in_memory()?))
    }

    fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            backend: Backend::Sqlite(Mutex::new(conn)),
        }
    }

    /// Connects to the PostgreSQL store at `url` (see [`crate::pg`]) and brings its schema up
    /// to this build's.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let config = crate::pg::config(url)?;
        let client = crate::pg::connect(&config)?;
        let cache = Arc::new(Cache::default());
        let stop = Arc::new(AtomicBool::new(false));
        crate::cache::spawn_listener(config.clone(), Arc::clone(&cache), Arc::clone(&stop))
            .map_err(|e| StoreError::Invalid(format!("starting the store's listener: {e}")))?;
        Ok(Self {
            backend: Backend::Postgres(Box::new(Shared {
                pool: Pool::new(config, client),
                statements: AtomicU64::new(0),
                cache,
                stop,
            })),
        })
    }

    /// Whether this store is shared by the nodes of a cluster (PostgreSQL): what one node
    /// writes, every node reads at once, and nothing needs replicating between them.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => crate::sqlite::schema_version(&lock(conn)),
            Backend::Postgres(_) => self
                .with(|db| db.query_one("SELECT version FROM ignition_schema", &[]))?
                .int(0),
        }
    }

    /// Runs `f` on the store's connection.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => f(&mut Lite(&lock(conn))),
            Backend::Postgres(shared) => {
                let mut client = shared.pool.get()?;
                let mut db = Pg::new(&mut *client);
                let out = f(&mut db);
                shared
                    .statements
                    .fetch_add(db.statements, Ordering::Relaxed);
                let out = out?;
                for scope in db.notified {
                    shared.cache.invalidate(&scope);
                }
                Ok(out)
            }
        }
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back otherwise.
    pub(crate) fn transaction<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let mut conn = lock(conn);
                // The write lock from the start: a transaction that reads and then writes
                // would otherwise fail, not wait, when another process wrote in between.
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(&mut Lite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Backend::Postgres(shared) => {
                let failed = |doing| move |source| StoreError::Postgres { doing, source };
                let mut client = shared.pool.get()?;
                let mut tx = client
                    .transaction()
                    .map_err(failed("starting a transaction"))?;
                let mut db = Pg::new(&mut tx);
                let out = f(&mut db);
                // BEGIN and COMMIT (or ROLLBACK) are statements too.
                shared
                    .statements
                    .fetch_add(db.statements + 2, Ordering::Relaxed);
                let out = out?;
                let notified = std::mem::take(&mut db.notified);
                tx.commit().map_err(failed("committing"))?;
                for scope in notified {
                    shared.cache.invalidate(&scope);
                }
                Ok(out)
            }
        }
    }
}

impl Store {
    /// `read`, through the node's cache of the shared store (see [`crate::cache`]): the cached
    /// `item` of `scope` while the cache is current; otherwise the database, or when that
    /// cannot answer, what the cache last had. SQLite reads directly.
    pub(crate) fn cached<T: Clone + Send + Sync + 'static>(
        &self,
        scope: &str,
        item: &str,
        read: impl Fn(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Backend::Postgres(shared) = &self.backend else {
            return self.with(read);
        };
        let cache = &shared.cache;
        if cache.synchronized() {
            if let Some(v) = cache.get::<T>(scope, item) {
                return Ok(v);
            }
        }
        let generation = cache.generation();
        // A read is safe to repeat: once more on a new connection when the first found its
        // connection gone (the server restarted, a standby was promoted).
        let read_once = || {
            let losses = shared.pool.losses();
            match self.with(&read) {
                Err(StoreError::Postgres { .. }) if shared.pool.losses() != losses => {
                    self.with(&read)
                }
                other => other,
            }
        };
        match read_once() {
            Ok(v) => {
                cache.put(scope, item, v.clone(), generation);
                Ok(v)
            }
            Err(e @ (StoreError::Postgres { .. } | StoreError::Unavailable)) => {
                cache.get::<T>(scope, item).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn shared_cache(&self) -> Option<&Cache> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(shared) => Some(&shared.cache),
        }
    }

    /// How many statements this node sent to PostgreSQL since it connected, transactions'
    /// BEGIN and COMMIT included (0 on SQLite): what the node costs the shared database.
    pub fn statements(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(_) => 0,
            Backend::Postgres(shared) => shared.statements.load(Ordering::Relaxed),
        }
    }

    /// How many values the node's cache of the shared store holds (0 on SQLite).
    pub fn cached_values(&self) -> usize {
        match &self.backend {
            Backend::Sqlite(_) => 0,
            Backend::Postgres(shared) => shared.cache.len(),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Backend::Postgres(shared) = &mut self.backend {
            shared.stop.store(true, Ordering::Release);
            // The client says goodbye to the server as it drops, blocking on its own runtime,
            // which an async thread must not do: it drops on a thread of its own.
            let clients = shared.pool.drain();
            if !clients.is_empty() {
                let _ = std::thread::Builder::new()
                    .name("store-close".into())
                    .spawn(move || drop(clients));
            }
        }
    }
}
