//! The node's queue of invocations that have not started.
//!
//! A `crossbeam_deque::Injector`: a lock-free FIFO that any thread pushes to and takes from,
//! and that hands out batches, which is what a thief's request is. Order is arrival order, so
//! a thief takes the oldest waiting work.

use crossbeam_deque::{Injector, Steal, Worker as Deque};
use tokio::sync::Notify;

/// A FIFO of pending work with a wake-up for whoever waits for it.
#[derive(Debug)]
pub(crate) struct LocalQueue<T> {
    queue: Injector<T>,
    ready: Notify,
}

impl<T> Default for LocalQueue<T> {
    fn default() -> Self {
        Self {
            queue: Injector::new(),
            ready: Notify::new(),
        }
    }
}

impl<T> LocalQueue<T> {
    /// Appends `item` and wakes one waiter.
    pub(crate) fn push(&self, item: T) {
        self.queue.push(item);
        self.ready.notify_one();
    }

    /// The oldest item, if any.
    pub(crate) fn pop(&self) -> Option<T> {
        loop {
            match self.queue.steal() {
                Steal::Success(item) => return Some(item),
                Steal::Empty => return None,
                Steal::Retry => std::hint::spin_loop(),
            }
        }
    }

    /// Up to `n` of the oldest items.
    pub(crate) fn take(&self, n: usize) -> Vec<T> {
        let batch = Deque::new_fifo();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.queue.steal_batch_with_limit(&batch, n - out.len()) {
                Steal::Success(()) => {
                    while let Some(item) = batch.pop() {
                        out.push(item);
                    }
                }
                Steal::Empty => break,
                Steal::Retry => std::hint::spin_loop(),
            }
        }
        out
    }

    /// Items waiting (a snapshot: others push and take concurrently).
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Waits until something was pushed since the last wake-up.
    pub(crate) async fn pushed(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_oldest_first_and_never_more_than_asked() {
        let q = LocalQueue::default();
        for i in 0..10 {
            q.push(i);
        }
        assert_eq!(q.take(3), vec![0, 1, 2]);
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.len(), 6);
        assert_eq!(q.take(100), vec![4, 5, 6, 7, 8, 9]);
        assert_eq!(q.pop(), None);
        assert!(q.take(2).is_empty());
    }

    #[test]
    fn concurrent_takers_share_every_item_exactly_once() {
        let q = std::sync::Arc::new(LocalQueue::default());
        for i in 0..10_000u32 {
            q.push(i);
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
