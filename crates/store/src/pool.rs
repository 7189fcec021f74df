//! A node's connections to PostgreSQL: up to [`SIZE`] at once, so that one slow statement (a
//! large bundle written, a transaction waiting on another node's lock) does not hold up the
//! node's other store operations; opened as needed and kept for the next operation.
//!
//! A connection found closed (the server restarted, a standby was promoted) is dropped with
//! every idle one (they went to the same server) and the next operation connects again, so
//! the store carries on without the node restarting. After
//! a connection attempt fails, operations fail at once for [`RETRY_CONNECT`] instead of each
//! waiting for a timeout while PostgreSQL is down.
//!
//! Hand-written rather than `r2d2`: that pool reconnects in the background and makes a caller
//! wait up to its timeout while the server is down, where the store must fail at once (and
//! answer from its cache).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::StoreError;

/// How many connections a node opens at most.
pub(crate) const SIZE: usize = 8;
/// How long after a failed connection attempt operations fail without trying again.
const RETRY_CONNECT: Duration = Duration::from_secs(1);
/// How long an operation waits for one of the [`SIZE`] connections to be free.
const WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Pool {
    config: postgres::Config,
    state: Mutex<State>,
    freed: Condvar,
    /// How many times a connection was found closed.
    losses: AtomicU64,
}

#[derive(Default)]
struct State {
    idle: Vec<postgres::Client>,
    /// Connections open: idle or in use.
    open: usize,
    /// Until when a failed connection attempt is not retried.
    down_until: Option<Instant>,
}

/// A connection taken from the pool; it goes back when dropped (unless it was closed).
pub(crate) struct Conn<'a> {
    pool: &'a Pool,
    client: Option<postgres::Client>,
}

impl Pool {
    /// A pool for `config`, holding `first` (the connection the store was opened with).
    pub(crate) fn new(config: postgres::Config, first: postgres::Client) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                idle: vec![first],
                open: 1,
                down_until: None,
            }),
            freed: Condvar::new(),
            losses: AtomicU64::new(0),
        }
    }

    /// How many times a connection was found closed: an operation that failed while this
    /// changed may succeed on a new connection.
    pub(crate) fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is counts and idle connections: a panic elsewhere cannot leave it
        // half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection: an idle one, a new one while fewer than [`SIZE`] are open, or the next
    /// one freed.
    pub(crate) fn get(&self) -> Result<Conn<'_>, StoreError> {
        let deadline = Instant::now() + WAIT;
        let mut state = self.state();
        loop {
            while let Some(client) = state.idle.pop() {
                if client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Conn {
                    pool: self,
                    client: Some(client),
                });
            }
            if state.down_until.is_some_and(|t| Instant::now() < t) {
                return Err(StoreError::Unavailable);
            }
            if state.open < SIZE {
                state.open += 1;
                drop(state);
                let connected = crate::pg::connect(&self.config);
                let mut state = self.state();
                return match connected {
                    Ok(client) => {
                        state.down_until = None;
                        Ok(Conn {
                            pool: self,
                            client: Some(client),
                        })
                    }
                    Err(e) => {
                        state.open -= 1;
                        state.down_until = Instant::now().checked_add(RETRY_CONNECT);
                        self.freed.notify_all();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable);
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes every idle connection (the store is closing).
    pub(crate) fn drain(&self) -> Vec<postgres::Client> {
        let mut state = self.state();
        state.open -= state.idle.len();
        std::mem::take(&mut state.idle)
    }
}

impl Deref for Conn<'_> {
    type Target = postgres::Client;

    fn deref(&self) -> &Self::Target {
        // Present from creation until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let mut state = self.pool.state();
        if client.is_closed() {
            let stale = std::mem::take(&mut state.idle);
            state.open -= 1 + stale.len();
            drop(state);
            self.pool.losses.fetch_add(1, Ordering::AcqRel);
            // A closed client's drop does not wait on the server; the idle ones may (saying
            // goodbye to a server that is gone), so they drop on a thread of their own.
            drop(client);
            if !stale.is_empty() {
                let _ = std::thread::Builder::new()
                    .name("store-close".into())
                    .spawn(move || drop(stale));
            }
        } else {
            state.idle.push(client);
        }
        self.pool.freed.notify_one();
    }
}

#[cfg(all(test, feature = "pg-tests"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn pg_store() -> crate::Store {
        crate::testing::stores()
            .into_iter()
            .find_map(|(backend, s)| (backend == "postgres").then_some(s))
            .unwrap()
    }

    #[test]
    fn a_slow_statement_does_not_hold_up_the_nodes_other_operations() {
        let store = pg_store();
        let slow_done = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                store
                    .with(|db| db.query("SELECT CAST(1 AS BIGINT) FROM pg_sleep(3)", &[]))
                    .unwrap();
                slow_done.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(300));
            assert_eq!(store.schema_version().unwrap(), crate::pg::schema_version());
            assert!(
                !slow_done.load(Ordering::SeqCst),
                "answered beside the slow statement, not after it"
            );
        });
    }

    #[test]
    fn more_operations_at_once_than_connections_all_complete() {
        let store = pg_store();
        let most = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..super::SIZE * 3 {
                sc.spawn(|| {
                    let row = store
                        .with(|db| {
                            db.query_one(
                                "SELECT CAST(count(*) AS BIGINT) FROM pg_stat_activity
                                 WHERE datname = current_database() AND application_name = ''
                                 AND backend_type = 'client backend'",
                                &[],
                            )
                        })
                        .unwrap();
                    let n = usize::try_from(row.int(0).unwrap()).unwrap();
                    most.fetch_max(n, Ordering::SeqCst);
                    store
                        .with(|db| db.query("SELECT CAST(1 AS BIGINT) FROM pg_sleep(0.05)", &[]))
                        .unwrap();
                });
            }
        });
        let most = most.load(Ordering::SeqCst);
        assert!(
            most <= super::SIZE + 1,
            "{most} connections for a pool of {}",
            super::SIZE
        );
    }
}
