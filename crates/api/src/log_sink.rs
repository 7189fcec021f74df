//! Invocation logs on their way to the store, off the invocation's path: kept on the node in
//! arrival order and written by one task, as many as wait (up to [`BATCH`]) in one
//! transaction. While the store cannot take them (PostgreSQL down or
//! failing over) they wait on the node, at most [`MAX_PENDING`] of them and
//! [`MAX_PENDING_BYTES`]; past either, the oldest go, counted (`logs_dropped` in `/metrics`). They
//! are written when the store returns.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::{blocking, AppState};

/// Logs waiting for the store, at most.
pub(crate) const MAX_PENDING: usize = 10_000;
/// Bytes of logs waiting for the store, at most.
pub(crate) const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Logs written in one transaction, at most.
const BATCH: usize = 256;
/// How long the writer waits before trying a store that failed again.
const RETRY: Duration = Duration::from_secs(1);

struct Pending {
    function: String,
    request_id: String,
    text: Vec<u8>,
}

#[derive(Default)]
struct Queue {
    logs: VecDeque<Pending>,
    bytes: usize,
    /// Taken by the writer and not yet written (or put back).
    writing: usize,
}

/// The node's logs waiting to be written.
#[derive(Default)]
pub struct LogSink {
    queue: Mutex<Queue>,
    dropped: AtomicU64,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("pending", &self.pending())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl LogSink {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the log of `request_id` for writing.
    pub fn push(&self, function: &str, request_id: &str, text: Vec<u8>) {
        {
            let mut q = self.queue();
            q.bytes += text.len();
            q.logs.push_back(Pending {
                function: function.to_owned(),
                request_id: request_id.to_owned(),
                text,
            });
            while q.logs.len() > MAX_PENDING || q.bytes > MAX_PENDING_BYTES {
                let Some(old) = q.logs.pop_front() else { break };
                q.bytes -= old.text.len();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.wake.notify_one();
    }

    /// Logs not yet written: waiting, or being written.
    pub fn pending(&self) -> usize {
        let q = self.queue();
        q.logs.len() + q.writing
    }

    /// Logs dropped because too many waited.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The oldest logs waiting, up to [`BATCH`].
    fn pop_batch(&self) -> Vec<Pending> {
        let mut q = self.queue();
        let n = q.logs.len().min(BATCH);
        let batch: Vec<Pending> = q.logs.drain(..n).collect();
        q.bytes -= batch.iter().map(|p| p.text.len()).sum::<usize>();
        q.writing = batch.len();
        batch
    }

    /// The batch the writer took is written, or put back.
    fn batch_done(&self) {
        self.queue().writing = 0;
    }

    /// Puts back a log the store did not take, first in line (unless the queue filled up
    /// meanwhile: then it is the oldest, and goes).
    fn unpop(&self, p: Pending) {
        let mut q = self.queue();
        if q.logs.len() >= MAX_PENDING || q.bytes + p.text.len() > MAX_PENDING_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.bytes += p.text.len();
        q.logs.push_front(p);
    }
}

/// Starts the task that writes the node's logs.
pub fn spawn_log_writer(state: AppState) {
    tokio::spawn(async move {
        loop {
            let batch = state.logs.pop_batch();
            if batch.is_empty() {
                // Woken by a new log, or looks again after a while.
                let _ = tokio::time::timeout(RETRY, state.logs.wake.notified()).await;
                continue;
            }
            let entries: Vec<(String, String, Vec<u8>)> = batch
                .iter()
                .map(|p| (p.function.clone(), p.request_id.clone(), p.text.clone()))
                .collect();
            let written = blocking(&state, move |s| {
                let refs: Vec<(&str, &str, &[u8])> = entries
                    .iter()
                    .map(|(f, id, t)| (f.as_str(), id.as_str(), t.as_slice()))
                    .collect();
                s.append_logs(&refs)
            })
            .await;
            match written {
                Ok(()) => state.logs.batch_done(),
                // The store is away: the logs wait for it, first in line again.
                Err(e) if e.status.is_server_error() && e.error_type == "ServiceException" => {
                    for p in batch.into_iter().rev() {
                        state.logs.unpop(p);
                    }
                    state.logs.batch_done();
                    tokio::time::sleep(RETRY).await;
                }
                // Something in the batch the store refuses: each on its own, so that one
                // log's fault costs no other.
                Err(_) => {
                    for p in batch {
                        let (f, id) = (p.function.clone(), p.request_id.clone());
                        let kept = blocking(&state, move |s| s.append_log(&f, &id, &p.text)).await;
                        if let Err(e) = kept {
                            tracing::warn!(function = %p.function, error = %e, "cannot keep the invocation's log");
                        }
                    }
                    state.logs.batch_done();
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_logs_go_first_and_are_counted() {
        let sink = LogSink::default();
        for i in 0..MAX_PENDING + 3 {
            sink.push("f", &i.to_string(), b"x".to_vec());
        }
        assert_eq!(sink.pending(), MAX_PENDING);
        assert_eq!(sink.dropped(), 3);
        let batch = sink.pop_batch();
        assert_eq!(batch.len(), BATCH);
        assert_eq!(batch[0].request_id, "3", "0, 1 and 2 went");
        assert_eq!(
            sink.pending(),
            MAX_PENDING,
            "a batch being written is pending"
        );
        // Put back as the writer does when the store is away: first in line, in order.
        for p in batch.into_iter().rev() {
            sink.unpop(p);
        }
        sink.batch_done();
        assert_eq!(sink.pending(), MAX_PENDING);
        assert_eq!(sink.pop_batch()[0].request_id, "3");
        sink.batch_done();
        assert_eq!(sink.pending(), MAX_PENDING - BATCH, "written");
        let big = vec![b'y'; MAX_PENDING_BYTES];
        sink.push("f", "big", big);
        assert_eq!(sink.pending(), 1, "everything older made room");
        let mut batch = sink.pop_batch();
        assert_eq!(batch.len(), 1);
        let p = batch.remove(0);
        assert_eq!(p.request_id, "big");
        sink.unpop(p);
        sink.batch_done();
        assert_eq!(sink.pending(), 1);
    }
}
