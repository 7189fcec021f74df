//! The node's queue of invocations that have not started: first in, first out within a
//! tenant, and tenants in turn, so that a tenant with a thousand invocations waiting does not
//! hold one with a single invocation back by a thousand turns. Whoever takes work, a free slot
//! here or a thief's batch, takes it in that order.
//!
//! A mutex over per-tenant queues: taking and pushing are a few hash-map and deque operations,
//! small against an invocation; the fairness is the point of the structure.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Pending work by tenant, handed out round-robin, with a wake-up for whoever waits for it.
#[derive(Debug)]
pub(crate) struct LocalQueue<T> {
    state: Mutex<Fair<T>>,
    ready: Notify,
}

#[derive(Debug)]
struct Fair<T> {
    queues: HashMap<String, VecDeque<T>>,
    /// Tenants with work waiting, the next to be served first.
    turn: VecDeque<String>,
    len: usize,
}

impl<T> Default for LocalQueue<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(Fair {
                queues: HashMap::new(),
                turn: VecDeque::new(),
                len: 0,
            }),
            ready: Notify::new(),
        }
    }
}

impl<T> LocalQueue<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Fair<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `item` to `tenant`'s queue and wakes one waiter.
    pub(crate) fn push(&self, tenant: &str, item: T) {
        {
            let mut f = self.lock();
            let q = f.queues.entry(tenant.to_owned()).or_default();
            let first = q.is_empty();
            q.push_back(item);
            if first {
                f.turn.push_back(tenant.to_owned());
            }
            f.len += 1;
        }
        self.ready.notify_one();
    }

    /// The oldest item of the tenant whose turn it is, if any.
    pub(crate) fn pop(&self) -> Option<T> {
        self.lock().pop()
    }

    /// Up to `n` items, taken as `n` pops would take them.
    pub(crate) fn take(&self, n: usize) -> Vec<T> {
        let mut f = self.lock();
        std::iter::from_fn(|| f.pop()).take(n).collect()
    }

    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }

    /// Waits until something was pushed since the last wake-up.
    pub(crate) async fn pushed(&self) {
        self.ready.notified().await;
    }
}

impl<T> Fair<T> {
    fn pop(&mut self) -> Option<T> {
        let tenant = self.turn.pop_front()?;
        let q = self.queues.get_mut(&tenant)?;
        let item = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&tenant);
        } else {
            self.turn.push_back(tenant);
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_oldest_first_and_never_more_than_asked() {
        let q = LocalQueue::default();
        for i in 0..10 {
            q.push("t", i);
        }
        assert_eq!(q.take(3), vec![0, 1, 2]);
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.len(), 6);
        assert_eq!(q.take(100), vec![4, 5, 6, 7, 8, 9]);
        assert_eq!(q.pop(), None);
        assert!(q.take(2).is_empty());
    }

    #[test]
    fn tenants_are_served_in_turn_and_each_in_arrival_order() {
        let q = LocalQueue::default();
        for i in 0..100 {
            q.push("a", ("a", i));
        }
        q.push("b", ("b", 0));
        q.push("b", ("b", 1));
        q.push("c", ("c", 0));
        // b's first waits behind one of a's, not a hundred.
        assert_eq!(
            q.take(6),
            vec![("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("a", 2)]
        );
        assert_eq!(q.len(), 97);
        assert_eq!(q.pop(), Some(("a", 3)));
        q.push("b", ("b", 2));
        assert_eq!(q.take(3), vec![("a", 4), ("b", 2), ("a", 5)]);
    }

    #[test]
    fn concurrent_takers_share_every_item_exactly_once() {
        let q = std::sync::Arc::new(LocalQueue::default());
        for i in 0..10_000u32 {
            q.push("t", i);
        }
        let takers: Vec<_> = (0..4)
            .map(|k| {
                let q = std::sync::Arc::clone(&q);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let batch = if k % 2 == 0 {
                            q.take(7)
                        } else {
                            q.pop().into_iter().collect()
                        };
                        if batch.is_empty() {
                            return got;
                        }
                        got.extend(batch);
                    }
                })
            })
            .collect();
        let mut all: Vec<u32> = takers
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
    }
}
