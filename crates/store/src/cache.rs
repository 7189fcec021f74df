//! A node's cache of what the synchronous invoke path reads from the shared store: functions,
//! their versions, aliases and policies, function URLs by id, access keys, and the limits
//! (reservations, tenants' quotas) every node keeps in memory. With it, an invocation of a
//! function the node has seen waits on PostgreSQL for nothing, and keeps working while
//! PostgreSQL is down or failing over.
//!
//! Every write that changes a cached value names its scope (`f:FUNCTION`, `u:URL_ID`,
//! `k:KEY_ID`, `l:limits`) with `NOTIFY` in its transaction; PostgreSQL delivers it to every
//! node at commit, and each node's listener drops that scope. The writing node drops it itself
//! as it commits, so it reads its own writes. A read that raced an invalidation is not kept (a
//! generation counter). While the listener is not connected, notifications may be missed:
//! reads go to the database first and fall back to the cache only when the database cannot
//! answer; when the listener connects again, everything cached is dropped.
//!
//! The same channel carries one more kind of message, `p:SCOPE\nNODE`: node `NODE` asked for
//! concurrency permits of `SCOPE` and got fewer than it wanted (see [`crate::permits`]); each
//! node notes it so that it gives back what it holds and does not use.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fallible_iterator::FallibleIterator;

/// The channel the store's notifications go on.
pub(crate) const CHANNEL: &str = "ignition_store";

/// The scope of what is cached about function `name` (its `$LATEST`, versions, aliases and
/// policies).
pub(crate) fn function_scope(name: &str) -> String {
    format!("f:{name}")
}

/// The scope of every function's reservation and every tenant's quotas.
pub(crate) const LIMITS: &str = "l:limits";

/// The scope of the function URL whose id is `url_id`.
pub(crate) fn url_scope(url_id: &str) -> String {
    format!("u:{url_id}")
}

/// The scope of access key `id`.
pub(crate) fn key_scope(id: &str) -> String {
    format!("k:{id}")
}

/// The prefix of a notification saying a node is short of permits of a scope.
pub(crate) const PERMITS_WANTED: &str = "p:";

type Entries = HashMap<String, HashMap<String, Arc<dyn Any + Send + Sync>>>;

/// Cached values by scope, then by what within the scope.
#[derive(Default)]
pub(crate) struct Cache {
    entries: Mutex<Entries>,
    generation: AtomicU64,
    synchronized: AtomicBool,
    /// (scope, node): permit scopes nodes were short of since the last [`Cache::take_wanted`].
    wanted: Mutex<HashSet<(String, String)>>,
}

impl Cache {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether notifications are being received (cached values are current).
    pub(crate) fn synchronized(&self) -> bool {
        self.synchronized.load(Ordering::Acquire)
    }

    pub(crate) fn get<T: Clone + 'static>(&self, scope: &str, item: &str) -> Option<T> {
        self.entries()
            .get(scope)?
            .get(item)?
            .downcast_ref::<T>()
            .cloned()
    }

    /// Where invalidations stand: read it before reading the database.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `value`, unless something was invalidated since `generation` was read (the
    /// value may be older than that invalidation).
    pub(crate) fn put<T: Send + Sync + 'static>(
        &self,
        scope: &str,
        item: &str,
        value: T,
        generation: u64,
    ) {
        let mut entries = self.entries();
        if self.generation() == generation {
            entries
                .entry(scope.to_owned())
                .or_default()
                .insert(item.to_owned(), Arc::new(value));
        }
    }

    /// Drops what is cached in `scope`.
    pub(crate) fn invalidate(&self, scope: &str) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(scope);
    }

    /// Notes that a node was short of permits of `scope`.
    fn wanted(&self, message: &str) {
        let Some((scope, node)) = message.split_once('\n') else {
            return;
        };
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a scope is noted once per node, and the set is drained every few hundred ms.
        if wanted.len() < 10_000 {
            wanted.insert((scope.to_owned(), node.to_owned()));
        }
    }

    /// The permit scopes nodes other than `me` were short of since the last call.
    pub(crate) fn take_wanted(&self, me: &str) -> HashSet<String> {
        std::mem::take(&mut *self.wanted.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .filter(|(_, node)| node != me)
            .map(|(scope, _)| scope)
            .collect()
    }

    fn clear(&self) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// How many values are cached (for tests and stats).
    pub(crate) fn len(&self) -> usize {
        self.entries().values().map(HashMap::len).sum()
    }
}

/// How often the listener checks that its connection is alive, and waits before connecting
/// again after losing it.
const LISTEN_TICK: Duration = Duration::from_secs(1);

/// Listens for the store's notifications on a connection of its own, until `stop`.
pub(crate) fn spawn_listener(
    config: postgres::Config,
    cache: Arc<Cache>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("store-listen".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let mut client = match config.connect(postgres::NoTls) {
                    Ok(c) => c,
                    Err(_) => {
                        cache.synchronized.store(false, Ordering::Release);
                        std::thread::sleep(LISTEN_TICK);
                        continue;
                    }
                };
                if client.batch_execute(&format!("LISTEN {CHANNEL}")).is_err() {
                    cache.synchronized.store(false, Ordering::Release);
                    std::thread::sleep(LISTEN_TICK);
                    continue;
                }
                // Notifications missed while not listening: nothing cached can be trusted.
                cache.clear();
                cache.synchronized.store(true, Ordering::Release);
                listen(&mut client, &cache, &stop);
                cache.synchronized.store(false, Ordering::Release);
            }
        })
        .map(|_| ())
}

/// Applies notifications until the connection fails or `stop`.
fn listen(client: &mut postgres::Client, cache: &Cache, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        {
            let mut notifications = client.notifications();
            let mut it = notifications.timeout_iter(LISTEN_TICK);
            loop {
                match it.next() {
                    Ok(Some(n)) => match n.payload().strip_prefix(PERMITS_WANTED) {
                        Some(message) => cache.wanted(message),
                        None => cache.invalidate(n.payload()),
                    },
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        // Quiet for a tick: make sure the connection is still there (a dead peer sends no
        // notifications either).
        if client.is_closed() || client.simple_query("SELECT 1").is_err() {
            return;
        }
    }
}
