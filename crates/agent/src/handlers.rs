//! Threads that serve Runtime API requests, kept between requests.
//!
//! A runtime's `GET /invocation/next` blocks until there is work, so every request needs a thread
//! of its own while others are pending. Spawning one per request costs little on hardware, but in a
//! VM restored from a snapshot under an instruction emulator every first run of the kernel's
//! `clone`/`exit` and the thread start-up code is translated anew, per VM and per request. The
//! threads here outlive their request: the ones a snapshot was taken with are idle in it, and a
//! restored VM serves its invocations without creating any.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// More threads than this are never made; requests beyond them wait for a free one. A runtime
/// that holds this many requests open at once only delays its own.
pub(crate) const MAX_THREADS: usize = 32;

struct Queue<T> {
    pending: VecDeque<T>,
    /// Threads waiting for work.
    idle: usize,
    /// Threads made so far (they never exit).
    threads: usize,
}

/// A pool that grows to [`MAX_THREADS`] when every thread is busy and never shrinks.
pub(crate) struct Handlers<T> {
    queue: Mutex<Queue<T>>,
    work: Condvar,
    handle: Box<dyn Fn(T) + Send + Sync>,
}

impl<T: Send + 'static> Handlers<T> {
    pub(crate) fn new(handle: impl Fn(T) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                idle: 0,
                threads: 0,
            }),
            work: Condvar::new(),
            handle: Box::new(handle),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // The queue is a list and two counters, consistent after every statement.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `item` to an idle thread, or to a new one when all are busy.
    pub(crate) fn dispatch(self: &Arc<Self>, item: T) {
        let mut q = self.lock();
        q.pending.push_back(item);
        if q.pending.len() > q.idle && q.threads < MAX_THREADS {
            let me = Arc::clone(self);
            match std::thread::Builder::new()
                .name("runtime-api".into())
                .spawn(move || me.serve())
            {
                Ok(_) => q.threads += 1,
                // The request waits for a busy thread; if none ever frees, the host's deadline
                // ends the invocation.
                Err(e) => eprintln!("ignition-agent: no thread for a runtime API request: {e}"),
            }
        }
        drop(q);
        self.work.notify_one();
    }

    fn serve(&self) {
        loop {
            let item = {
                let mut q = self.lock();
                loop {
                    if let Some(item) = q.pending.pop_front() {
                        break item;
                    }
                    q.idle += 1;
                    q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
                    q.idle -= 1;
                }
            };
            (self.handle)(item);
        }
    }

    /// Threads made so far.
    #[cfg(test)]
    fn threads(&self) -> usize {
        self.lock().threads
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn sequential_requests_reuse_one_thread() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let pool = Handlers::new(move |n: u32| {
            let _ = tx.lock().unwrap().send((n, std::thread::current().id()));
        });
        let mut ids = Vec::new();
        for n in 0..5 {
            pool.dispatch(n);
            let (got, id) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(got, n);
            ids.push(id);
            // Let the thread get back to waiting before the next request.
            while pool.lock().idle == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(pool.threads(), 1);
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn a_blocked_request_never_stalls_the_next_one() {
        // Like `/next` waiting for work while the runtime posts a response.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let (done_tx, done_rx) = mpsc::channel();
        let done_tx = Mutex::new(done_tx);
        let pool = Handlers::new(move |blocking: bool| {
            if blocking {
                let _ = release_rx.lock().unwrap().recv();
            }
            let _ = done_tx.lock().unwrap().send(blocking);
        });
        pool.dispatch(true);
        pool.dispatch(false);
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(false));
        release_tx.send(()).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(true));
        assert_eq!(pool.threads(), 2);
    }

    #[test]
    fn threads_are_capped_and_the_rest_wait() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let (done_tx, done_rx) = mpsc::channel();
        let done_tx = Mutex::new(done_tx);
        let pool = Handlers::new(move |n: usize| {
            let _ = release_rx.lock().unwrap().recv();
            let _ = done_tx.lock().unwrap().send(n);
        });
        for n in 0..MAX_THREADS + 3 {
            pool.dispatch(n);
        }
        assert_eq!(pool.threads(), MAX_THREADS);
        for _ in 0..MAX_THREADS + 3 {
            release_tx.send(()).unwrap();
        }
        let mut got: Vec<usize> = (0..MAX_THREADS + 3)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..MAX_THREADS + 3).collect::<Vec<_>>());
    }
}
