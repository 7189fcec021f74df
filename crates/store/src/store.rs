//! The store and its two backends: SQLite in the node's data directory (a single node's
//! default) and PostgreSQL (what a cluster's nodes share).
//!
//! Each part of the store is written once against [`crate::sql::Sql`] and runs on either
//! backend through [`Store::with`] and [`Store::transaction`].

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

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

/// The store: one connection behind a mutex. SQLite serializes writers anyway, and every
/// operation here is short.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres {
        config: Box<postgres::Config>,
        /// `None` after the connection was lost, until the next operation reconnects.
        client: Mutex<Option<postgres::Client>>,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres { .. } => "postgres",
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
        Ok(Self {
            backend: Backend::Postgres {
                config: Box::new(config),
                client: Mutex::new(Some(client)),
            },
        })
    }

    /// Whether this store is shared by the nodes of a cluster (PostgreSQL): what one node
    /// writes, every node reads at once, and nothing needs replicating between them.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres { .. })
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => crate::sqlite::schema_version(&lock(conn)),
            Backend::Postgres { .. } => self
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
            Backend::Postgres { config, client } => {
                let mut client = lock(client);
                f(&mut Pg(reconnected(config, &mut client)?))
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
            Backend::Postgres { config, client } => {
                let failed = |doing| move |source| StoreError::Postgres { doing, source };
                let mut client = lock(client);
                let mut tx = reconnected(config, &mut client)?
                    .transaction()
                    .map_err(failed("starting a transaction"))?;
                let out = f(&mut Pg(&mut tx))?;
                tx.commit().map_err(failed("committing"))?;
                Ok(out)
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Backend::Postgres { client, .. } = &mut self.backend {
            // The client says goodbye to the server as it drops, blocking on its own runtime,
            // which an async thread must not do: it drops on a thread of its own.
            if let Some(client) = client
                .get_mut()
                .map_or_else(|p| p.into_inner().take(), Option::take)
            {
                let _ = std::thread::Builder::new()
                    .name("store-close".into())
                    .spawn(move || drop(client));
            }
        }
    }
}

/// The client, connected again if the connection was lost (the server restarted, a standby
/// was promoted): the store carries on without the node restarting.
fn reconnected<'a>(
    config: &postgres::Config,
    client: &'a mut Option<postgres::Client>,
) -> Result<&'a mut postgres::Client, StoreError> {
    if client.as_ref().is_some_and(postgres::Client::is_closed) {
        *client = None;
    }
    match client {
        Some(c) => Ok(c),
        None => Ok(client.insert(crate::pg::connect(config)?)),
    }
}
