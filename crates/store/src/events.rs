//! Asynchronous invocations (`X-Amz-Invocation-Type: Event`), kept in the store so that they
//! survive a server restart.
//!
//! An event is `queued` until a dispatcher claims it (`running`, in the same transaction, so
//! one attempt runs at a time); a success deletes it; a failure either queues it again for a
//! later time or, with its attempts spent, marks it `failed`, where it stays as the function's
//! failure destination (the newest [`KEEP_FAILED`] per function). Events found `running` when
//! a server starts were cut off by the previous one: they are queued again, that attempt counted.

use rusqlite::params;

use crate::sqlite::{now, Store, StoreError};

/// Failed events kept per function.
pub const KEEP_FAILED: u32 = 1000;

/// One asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Its request id, returned to the caller at enqueue time.
    pub request_id: String,
    /// The function.
    pub function: String,
    /// The event (JSON bytes).
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Attempts allowed (1 + retries).
    pub max_attempts: u32,
    /// `queued`, `running` or `failed`.
    pub status: String,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was accepted (Unix seconds).
    pub created_at: i64,
    /// Times a concurrency limit refused it in a row (its backoff grows with them).
    pub throttles: u32,
    /// Its own maximum age in seconds (a schedule's retry policy), instead of the node's.
    pub max_age_s: Option<u32>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The function succeeded: the event is done.
    Succeeded,
    /// A concurrency limit refused it: not an attempt; try again at `next_at_ms`.
    Throttled {
        /// When to try again (Unix ms).
        next_at_ms: i64,
    },
    /// It is older than its maximum age: it goes to the failed events, with why.
    Expired {
        /// Why.
        error: String,
    },
    /// It failed; try again at `next_at_ms` if attempts remain, otherwise it has failed.
    Failed {
        /// Why.
        error: String,
        /// When the next attempt may run (Unix ms).
        next_at_ms: i64,
    },
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        request_id: r.get(0)?,
        function: r.get(1)?,
        payload: r.get(2)?,
        attempts: r.get(3)?,
        max_attempts: r.get(4)?,
        status: r.get(5)?,
        last_error: r.get(6)?,
        created_at: r.get(7)?,
        throttles: r.get(8)?,
        max_age_s: r.get(9)?,
    })
}

const COLUMNS: &str = "request_id, function, payload, attempts, max_attempts, status, last_error, \
    created_at, throttles, max_age_s";

/// An event to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Its request id.
    pub request_id: String,
    /// The function (a stored target, `NAME[:QUALIFIER]`).
    pub function: String,
    /// The event (JSON bytes).
    pub payload: Vec<u8>,
    /// Attempts allowed (1 + retries).
    pub max_attempts: u32,
    /// Its own maximum age in seconds, if not the node's.
    pub max_age_s: Option<u32>,
}

/// Whether an event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored.
    Stored,
    /// The node holds its limit of events: nothing stored.
    NodeFull,
    /// The event's tenant holds its quota of events: nothing stored.
    TenantFull,
}

/// Inserts `e` as queued unless `max_pending` events (of any tenant), or `tenant_limit` of its
/// tenant's, are queued or running: one statement, so concurrent callers cannot together pass
/// a limit.
pub(crate) fn insert_event(
    conn: &rusqlite::Connection,
    e: &NewEvent,
    max_pending: u64,
    tenant_limit: Option<u64>,
) -> Result<Enqueued, StoreError> {
    let limit = i64::try_from(max_pending).unwrap_or(i64::MAX);
    let tenant_limit = tenant_limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let tenant = ignition_types::FunctionId::from_stored(
        ignition_types::Target::split_stored(&e.function).0,
    )
    .tenant;
    let of_tenant = crate::quotas::of_tenant("function", 9);
    let inserted = conn.execute(
        &format!(
            "INSERT INTO events (request_id, function, payload, max_attempts, status, next_at_ms, created_at, updated_at, max_age_s)
             SELECT ?1, ?2, ?3, ?4, 'queued', 0, ?5, ?5, ?7
             WHERE (SELECT COUNT(*) FROM events WHERE status IN ('queued', 'running')) < ?6
             AND (?8 IS NULL OR (SELECT COUNT(*) FROM events
                  WHERE status IN ('queued', 'running') AND {of_tenant}) < ?8)"
        ),
        params![
            e.request_id,
            e.function,
            e.payload,
            e.max_attempts.max(1),
            now(),
            limit,
            e.max_age_s,
            tenant_limit,
            tenant
        ],
    )?;
    if inserted == 1 {
        return Ok(Enqueued::Stored);
    }
    let pending: i64 = conn.query_row(
        "SELECT COUNT(*) FROM events WHERE status IN ('queued', 'running')",
        [],
        |r| r.get(0),
    )?;
    Ok(if pending >= limit {
        Enqueued::NodeFull
    } else {
        Enqueued::TenantFull
    })
}

/// Records a failed attempt (`expired`: not an attempt, the event's age ran out), which ends
/// the event when its attempts are spent or it expired.
fn fail(
    tx: &rusqlite::Transaction<'_>,
    request_id: &str,
    error: &str,
    next_at_ms: i64,
    expired: bool,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE events SET
           status = CASE WHEN ?5 OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
           attempts = CASE WHEN ?5 THEN MAX(attempts - 1, 0) ELSE attempts END,
           throttles = CASE WHEN ?5 THEN throttles ELSE 0 END,
           next_at_ms = ?2, last_error = ?3, updated_at = ?4
         WHERE request_id = ?1",
        params![request_id, next_at_ms, error, now(), expired],
    )?;
    // The failure destination keeps the newest events of each function.
    tx.execute(
        "DELETE FROM events WHERE status = 'failed' AND function =
           (SELECT function FROM events WHERE request_id = ?1)
         AND request_id NOT IN (
           SELECT request_id FROM events WHERE status = 'failed' AND function =
             (SELECT function FROM events WHERE request_id = ?1)
           ORDER BY updated_at DESC LIMIT ?2)",
        params![request_id, KEEP_FAILED],
    )?;
    Ok(())
}

impl Store {
    /// Accepts an event for `function`, to run as soon as a dispatcher can, unless `max_pending`
    /// events (of any function) are already queued or running: then it stores nothing and
    /// returns false. The count and the insert are one statement, so concurrent callers cannot
    /// together pass the limit.
    pub fn enqueue_event(
        &self,
        request_id: &str,
        function: &str,
        payload: &[u8],
        max_attempts: u32,
        max_pending: u64,
    ) -> Result<bool, StoreError> {
        let e = NewEvent {
            request_id: request_id.to_owned(),
            function: function.to_owned(),
            payload: payload.to_vec(),
            max_attempts,
            max_age_s: None,
        };
        Ok(self.enqueue_event_within(&e, max_pending, None)? == Enqueued::Stored)
    }

    /// Stores `e` unless the node holds `max_pending` events, or its tenant `tenant_limit`.
    pub fn enqueue_event_within(
        &self,
        e: &NewEvent,
        max_pending: u64,
        tenant_limit: Option<u64>,
    ) -> Result<Enqueued, StoreError> {
        insert_event(&self.conn(), e, max_pending, tenant_limit)
    }

    /// Queues again the events a previous server left `running`; returns how many.
    pub fn requeue_running_events(&self) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE events SET status = 'queued', next_at_ms = 0 WHERE status = 'running'",
            [],
        )?)
    }

    /// Claims up to `limit` queued events due at `now_ms`, oldest first, marking them running
    /// and counting the attempt.
    pub fn claim_due_events(&self, now_ms: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let events: Vec<Event> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {COLUMNS} FROM events WHERE status = 'queued' AND next_at_ms <= ?1
                 ORDER BY next_at_ms, created_at LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now_ms, limit], row)?;
            rows.collect::<Result<_, _>>()?
        };
        for e in &events {
            tx.execute(
                "UPDATE events SET status = 'running', attempts = attempts + 1, updated_at = ?2
                 WHERE request_id = ?1",
                params![e.request_id, now()],
            )?;
        }
        tx.commit()?;
        Ok(events
            .into_iter()
            .map(|mut e| {
                e.attempts += 1;
                e.status = "running".into();
                e
            })
            .collect())
    }

    /// Records how the running attempt of `request_id` ended.
    pub fn finish_event(&self, request_id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        match attempt {
            Attempt::Succeeded => {
                tx.execute(
                    "DELETE FROM events WHERE request_id = ?1",
                    params![request_id],
                )?;
            }
            Attempt::Throttled { next_at_ms } => {
                tx.execute(
                    "UPDATE events SET status = 'queued', attempts = MAX(attempts - 1, 0),
                       throttles = throttles + 1, next_at_ms = ?2, updated_at = ?3
                     WHERE request_id = ?1",
                    params![request_id, next_at_ms, now()],
                )?;
            }
            Attempt::Failed { error, next_at_ms } => {
                fail(&tx, request_id, error, *next_at_ms, false)?
            }
            Attempt::Expired { error } => fail(&tx, request_id, error, 0, true)?,
        }
        tx.commit()?;
        Ok(())
    }

    /// The events of `function` (any of its versions and aliases) whose attempts are spent,
    /// newest first: `limit` of them from the `offset`-th, and whether more follow.
    pub fn failed_events(
        &self,
        function: &str,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM events WHERE status = 'failed'
             AND (function = ?1 OR substr(function, 1, length(?1) + 1) = ?1 || ':')
             ORDER BY updated_at DESC, created_at DESC, request_id LIMIT ?2 OFFSET ?3"
        ))?;
        let rows = stmt.query_map(
            params![
                function,
                i64::from(limit) + 1,
                i64::try_from(offset).unwrap_or(i64::MAX)
            ],
            row,
        )?;
        let mut events: Vec<Event> = rows.collect::<Result<_, _>>()?;
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        Ok((events, more))
    }

    /// When the earliest queued event is due (Unix ms), if any is queued.
    pub fn next_event_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn().query_row(
            "SELECT MIN(next_at_ms) FROM events WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Events by status: (queued, running, failed).
    pub fn event_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let conn = self.conn();
        let count = |status: &str| -> Result<u64, StoreError> {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM events WHERE status = ?1",
                params![status],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok((count("queued")?, count("running")?, count("failed")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_claimed_once_retried_then_failed_and_kept() {
        let s = Store::in_memory().unwrap();
        assert!(s.enqueue_event("r1", "f", b"{}", 3, 10).unwrap());
        let claimed = s.claim_due_events(0, 10).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, 1);
        assert!(
            s.claim_due_events(i64::MAX, 10).unwrap().is_empty(),
            "a running event is not claimed again"
        );
        let fail = |at| Attempt::Failed {
            error: "boom".into(),
            next_at_ms: at,
        };
        s.finish_event("r1", &fail(1000)).unwrap();
        assert_eq!(s.next_event_due().unwrap(), Some(1000));
        assert!(
            s.claim_due_events(999, 10).unwrap().is_empty(),
            "not due yet"
        );
        assert_eq!(s.claim_due_events(1000, 10).unwrap()[0].attempts, 2);
        s.finish_event("r1", &fail(2000)).unwrap();
        assert_eq!(s.claim_due_events(2000, 10).unwrap()[0].attempts, 3);
        s.finish_event("r1", &fail(3000)).unwrap();
        assert!(s.claim_due_events(i64::MAX, 10).unwrap().is_empty());
        let (failed, more) = s.failed_events("f", 0, 10).unwrap();
        assert!(!more);
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (failed[0].attempts, failed[0].last_error.as_deref()),
            (3, Some("boom"))
        );
        assert_eq!(s.event_counts().unwrap(), (0, 0, 1));
        assert_eq!(s.next_event_due().unwrap(), None);
    }

    #[test]
    fn success_removes_and_a_restart_requeues_what_was_running() {
        let s = Store::in_memory().unwrap();
        assert!(s.enqueue_event("a", "f", b"1", 3, 10).unwrap());
        assert!(s.enqueue_event("b", "f", b"2", 3, 10).unwrap());
        let claimed = s.claim_due_events(0, 10).unwrap();
        assert_eq!(claimed.len(), 2);
        s.finish_event("a", &Attempt::Succeeded).unwrap();
        s.finish_event("b", &Attempt::Throttled { next_at_ms: 0 })
            .unwrap();
        let b = s.claim_due_events(0, 10).unwrap();
        assert_eq!(b[0].attempts, 1, "a throttle is not an attempt");
        assert_eq!(s.requeue_running_events().unwrap(), 1);
        let again = s.claim_due_events(0, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].request_id.as_str(), again[0].attempts), ("b", 2));
        assert_eq!(again[0].payload, b"2");
    }

    #[test]
    fn the_queue_takes_no_more_than_its_limit_and_failed_events_do_not_count() {
        let s = Store::in_memory().unwrap();
        assert!(s.enqueue_event("a", "f", b"1", 1, 2).unwrap());
        assert!(s.enqueue_event("b", "g", b"2", 1, 2).unwrap());
        assert!(
            !s.enqueue_event("c", "f", b"3", 1, 2).unwrap(),
            "the limit is the node's, over every function"
        );
        assert_eq!(s.event_counts().unwrap(), (2, 0, 0), "nothing stored");
        // A running event still counts; one that failed for good does not.
        let claimed = s.claim_due_events(0, 1).unwrap();
        assert!(!s.enqueue_event("c", "f", b"3", 1, 2).unwrap());
        s.finish_event(
            &claimed[0].request_id,
            &Attempt::Failed {
                error: "boom".into(),
                next_at_ms: 0,
            },
        )
        .unwrap();
        assert!(s.enqueue_event("c", "f", b"3", 1, 2).unwrap());
        assert_eq!(s.event_counts().unwrap(), (2, 0, 1));
    }

    #[test]
    fn failed_events_are_listed_by_page_with_their_versions() {
        let s = Store::in_memory().unwrap();
        for (id, target) in [
            ("a", "f"),
            ("b", "f:1"),
            ("c", "f:live"),
            ("d", "fx"),
            ("e", "f"),
        ] {
            assert!(s.enqueue_event(id, target, b"{}", 1, 10).unwrap());
        }
        for e in s.claim_due_events(0, 10).unwrap() {
            let failed = Attempt::Failed {
                error: "boom".into(),
                next_at_ms: 0,
            };
            s.finish_event(&e.request_id, &failed).unwrap();
        }
        let (first, more) = s.failed_events("f", 0, 3).unwrap();
        assert_eq!((first.len(), more), (3, true));
        let (rest, more) = s.failed_events("f", 3, 3).unwrap();
        assert_eq!((rest.len(), more), (1, false));
        let mut ids: Vec<_> = first
            .iter()
            .chain(&rest)
            .map(|e| e.request_id.as_str())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b", "c", "e"], "not fx, another function");
    }
}
