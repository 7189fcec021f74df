//! Asynchronous invocations (`X-Amz-Invocation-Type: Event`), kept in the store so that they
//! survive a server restart and, on the shared store, the loss of the node that accepted them.
//!
//! An event is `queued` until a dispatcher claims it (`running`, in the same transaction, so
//! one attempt runs at a time) under a lease: the claiming node's name and a time it renews
//! while the attempt runs. A success deletes it; a failure either queues it again for a later
//! time or, with its attempts spent, marks it `failed`, where it stays as the function's
//! failure destination (the newest [`KEEP_FAILED`] per function). An event whose lease ran out
//! (its node died or lost the store) is claimed again by any node, the cut-off attempt counted;
//! a node that restarts queues its own running events again at once. On PostgreSQL, claims skip
//! rows another node is claiming (`FOR UPDATE SKIP LOCKED`) and enqueues are counted against
//! the limits one at a time (an advisory lock).

use crate::sql::{vals, Row, Sql};
use crate::store::{now, Store, StoreError};

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

fn event_from(r: &Row) -> Result<Event, StoreError> {
    let count =
        |i| u32::try_from(r.int(i)?).map_err(|_| StoreError::Corrupt(format!("event column {i}")));
    Ok(Event {
        request_id: r.text(0)?,
        function: r.text(1)?,
        payload: r.bytes(2)?,
        attempts: count(3)?,
        max_attempts: count(4)?,
        status: r.text(5)?,
        last_error: r.opt_text(6)?,
        created_at: r.int(7)?,
        throttles: count(8)?,
        max_age_s: r.opt_int(9)?.and_then(|v| u32::try_from(v).ok()),
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
/// tenant's, are queued or running. Runs inside the caller's transaction; the counts and the
/// insert are serialized with every other enqueue (SQLite has one writer; PostgreSQL takes an
/// advisory lock), so concurrent callers cannot together pass a limit.
pub(crate) fn insert_event(
    db: &mut dyn Sql,
    e: &NewEvent,
    max_pending: u64,
    tenant_limit: Option<u64>,
) -> Result<Enqueued, StoreError> {
    let limit = i64::try_from(max_pending).unwrap_or(i64::MAX);
    let tenant = ignition_types::FunctionId::from_stored(
        ignition_types::Target::split_stored(&e.function).0,
    )
    .tenant;
    db.serialize(ENQUEUE_LOCK)?;
    let pending = db
        .query_one(
            "SELECT COUNT(*) FROM events WHERE status IN ('queued', 'running')",
            &[],
        )?
        .int(0)?;
    if pending >= limit {
        return Ok(Enqueued::NodeFull);
    }
    if let Some(tenant_limit) = tenant_limit {
        let of_tenant = crate::quotas::of_tenant("function", 1);
        let held = db
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM events WHERE status IN ('queued', 'running') AND {of_tenant}"
                ),
                &vals![tenant],
            )?
            .int(0)?;
        if held >= i64::try_from(tenant_limit).unwrap_or(i64::MAX) {
            return Ok(Enqueued::TenantFull);
        }
    }
    let t = now();
    db.execute(
        "INSERT INTO events (request_id, function, payload, max_attempts, status, next_at_ms, created_at, updated_at, max_age_s)
         VALUES ($1, $2, $3, $4, 'queued', 0, $5, $5, $6)",
        &vals![
            &e.request_id,
            &e.function,
            e.payload.as_slice(),
            e.max_attempts.max(1),
            t,
            e.max_age_s
        ],
    )?;
    Ok(Enqueued::Stored)
}

/// Serializes enqueues across every node of a shared store.
const ENQUEUE_LOCK: &str = "events.enqueue";

/// Records a failed attempt (`expired`: not an attempt, the event's age ran out), which ends
/// the event when its attempts are spent or it expired. Nothing is written unless `owner`
/// still holds the event's lease; whether it did.
fn fail(
    db: &mut dyn Sql,
    request_id: &str,
    owner: &str,
    error: &str,
    next_at_ms: i64,
    expired: bool,
) -> Result<bool, StoreError> {
    let n = db.execute(
        "UPDATE events SET
           status = CASE WHEN $5 = 1 OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
           attempts = CASE WHEN $5 = 1 AND attempts > 0 THEN attempts - 1 ELSE attempts END,
           throttles = CASE WHEN $5 = 1 THEN throttles ELSE 0 END,
           next_at_ms = $2, last_error = $3, updated_at = $4,
           lease_owner = NULL, lease_until_ms = NULL
         WHERE request_id = $1 AND status = 'running' AND lease_owner = $6",
        &vals![
            request_id,
            next_at_ms,
            error,
            now(),
            i64::from(expired),
            owner
        ],
    )?;
    // The failure destination keeps the newest events of each function.
    db.execute(
        "DELETE FROM events WHERE status = 'failed' AND function =
           (SELECT function FROM events WHERE request_id = $1)
         AND request_id NOT IN (
           SELECT request_id FROM events WHERE status = 'failed' AND function =
             (SELECT function FROM events WHERE request_id = $1)
           ORDER BY updated_at DESC LIMIT $2)",
        &vals![request_id, KEEP_FAILED],
    )?;
    Ok(n == 1)
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
        self.transaction(|db| insert_event(db, e, max_pending, tenant_limit))
    }

    /// Queues again the events `owner` holds as running: a node restarting under the same name
    /// takes up at once what it was running when it stopped. Returns how many.
    pub fn requeue_running_events(&self, owner: &str) -> Result<u64, StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE events SET status = 'queued', next_at_ms = 0, lease_owner = NULL, lease_until_ms = NULL
                 WHERE status = 'running' AND lease_owner = $1",
                &vals![owner],
            )
        })
    }

    /// Claims for `owner`, until `lease_until_ms`, up to `limit` events due at `now_ms`, oldest
    /// first: queued ones whose time has come, and running ones whose lease ran out (their
    /// node is gone). Marks them running and counts the attempt.
    pub fn claim_due_events(
        &self,
        now_ms: i64,
        limit: u32,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let events = self.transaction(|db| {
            let skip_locked = db.skip_locked();
            let events = db
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM events
                         WHERE (status = 'queued' AND next_at_ms <= $1)
                            OR (status = 'running' AND COALESCE(lease_until_ms, 0) < $1)
                         ORDER BY next_at_ms, created_at LIMIT $2{skip_locked}"
                    ),
                    &vals![now_ms, limit],
                )?
                .iter()
                .map(event_from)
                .collect::<Result<Vec<_>, _>>()?;
            for e in &events {
                db.execute(
                    "UPDATE events SET status = 'running', attempts = attempts + 1, updated_at = $2,
                       lease_owner = $3, lease_until_ms = $4
                     WHERE request_id = $1",
                    &vals![&e.request_id, now(), owner, lease_until_ms],
                )?;
            }
            Ok(events)
        })?;
        Ok(events
            .into_iter()
            .map(|mut e| {
                e.attempts += 1;
                e.status = "running".into();
                e
            })
            .collect())
    }

    /// Extends to `until_ms` the leases of every event `owner` is running; how many.
    pub fn renew_event_leases(&self, owner: &str, until_ms: i64) -> Result<u64, StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE events SET lease_until_ms = $2 WHERE status = 'running' AND lease_owner = $1",
                &vals![owner, until_ms],
            )
        })
    }

    /// Records how `owner`'s running attempt of `request_id` ended. `false`: `owner` no longer
    /// held the event (its lease ran out and another node claimed it), and nothing was written.
    pub fn finish_event(
        &self,
        request_id: &str,
        owner: &str,
        attempt: &Attempt,
    ) -> Result<bool, StoreError> {
        self.transaction(|db| match attempt {
            Attempt::Succeeded => Ok(db.execute(
                "DELETE FROM events WHERE request_id = $1 AND status = 'running' AND lease_owner = $2",
                &vals![request_id, owner],
            )? == 1),
            Attempt::Throttled { next_at_ms } => Ok(db.execute(
                "UPDATE events SET status = 'queued',
                   attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
                   throttles = throttles + 1, next_at_ms = $2, updated_at = $3,
                   lease_owner = NULL, lease_until_ms = NULL
                 WHERE request_id = $1 AND status = 'running' AND lease_owner = $4",
                &vals![request_id, *next_at_ms, now(), owner],
            )? == 1),
            Attempt::Failed { error, next_at_ms } => {
                fail(db, request_id, owner, error, *next_at_ms, false)
            }
            Attempt::Expired { error } => fail(db, request_id, owner, error, 0, true),
        })
    }

    /// The events of `function` (any of its versions and aliases) whose attempts are spent,
    /// newest first: `limit` of them from the `offset`-th, and whether more follow.
    pub fn failed_events(
        &self,
        function: &str,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let mut events = self.with(|db| {
            db.query(
                &format!(
                    "SELECT {COLUMNS} FROM events WHERE status = 'failed'
                     AND (function = $1 OR substr(function, 1, length(CAST($1 AS TEXT)) + 1) = CAST($1 AS TEXT) || ':')
                     ORDER BY updated_at DESC, created_at DESC, request_id LIMIT $2 OFFSET $3"
                ),
                &vals![
                    function,
                    i64::from(limit) + 1,
                    i64::try_from(offset).unwrap_or(i64::MAX)
                ],
            )?
            .iter()
            .map(event_from)
            .collect::<Result<Vec<_>, _>>()
        })?;
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        Ok((events, more))
    }

    /// When the dispatcher should look next (Unix ms): the earliest queued event's time, or a
    /// running event's lease end (after which it is claimed again), if there is any.
    pub fn next_event_due(&self) -> Result<Option<i64>, StoreError> {
        self.with(|db| {
            db.query_one(
                "SELECT MIN(CASE WHEN status = 'queued' THEN next_at_ms ELSE COALESCE(lease_until_ms, 0) END)
                 FROM events WHERE status IN ('queued', 'running')",
                &[],
            )?
            .opt_int(0)
        })
    }

    /// Events by status: (queued, running, failed).
    pub fn event_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.with(|db| {
            let mut count = |status: &str| -> Result<u64, StoreError> {
                let n = db
                    .query_one(
                        "SELECT COUNT(*) FROM events WHERE status = $1",
                        &vals![status],
                    )?
                    .int(0)?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            Ok((count("queued")?, count("running")?, count("failed")?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node-a";
    const FOREVER: i64 = i64::MAX;

    #[test]
    fn an_event_is_claimed_once_retried_then_failed_and_kept() {
        for (backend, s) in crate::testing::stores() {
            assert!(s.enqueue_event("r1", "f", b"{}", 3, 10).unwrap());
            let claimed = s.claim_due_events(0, 10, NODE, FOREVER).unwrap();
            assert_eq!(claimed.len(), 1, "{backend}");
            assert_eq!(claimed[0].attempts, 1);
            assert!(
                s.claim_due_events(i64::MAX - 1, 10, NODE, FOREVER)
                    .unwrap()
                    .is_empty(),
                "a running event under its lease is not claimed again"
            );
            let fail = |at| Attempt::Failed {
                error: "boom".into(),
                next_at_ms: at,
            };
            assert!(s.finish_event("r1", NODE, &fail(1000)).unwrap());
            assert_eq!(s.next_event_due().unwrap(), Some(1000));
            assert!(
                s.claim_due_events(999, 10, NODE, FOREVER)
                    .unwrap()
                    .is_empty(),
                "not due yet"
            );
            assert_eq!(
                s.claim_due_events(1000, 10, NODE, FOREVER).unwrap()[0].attempts,
                2
            );
            s.finish_event("r1", NODE, &fail(2000)).unwrap();
            assert_eq!(
                s.claim_due_events(2000, 10, NODE, FOREVER).unwrap()[0].attempts,
                3
            );
            s.finish_event("r1", NODE, &fail(3000)).unwrap();
            assert!(s
                .claim_due_events(i64::MAX - 1, 10, NODE, FOREVER)
                .unwrap()
                .is_empty());
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
    }

    #[test]
    fn success_removes_and_a_restart_requeues_what_was_running() {
        for (_, s) in crate::testing::stores() {
            assert!(s.enqueue_event("a", "f", b"1", 3, 10).unwrap());
            assert!(s.enqueue_event("b", "f", b"2", 3, 10).unwrap());
            let claimed = s.claim_due_events(0, 10, NODE, FOREVER).unwrap();
            assert_eq!(claimed.len(), 2);
            assert!(s.finish_event("a", NODE, &Attempt::Succeeded).unwrap());
            s.finish_event("b", NODE, &Attempt::Throttled { next_at_ms: 0 })
                .unwrap();
            let b = s.claim_due_events(0, 10, NODE, FOREVER).unwrap();
            assert_eq!(b[0].attempts, 1, "a throttle is not an attempt");
            assert_eq!(s.requeue_running_events("another-node").unwrap(), 0);
            assert_eq!(s.requeue_running_events(NODE).unwrap(), 1);
            let again = s.claim_due_events(0, 10, NODE, FOREVER).unwrap();
            assert_eq!(again.len(), 1);
            assert_eq!((again[0].request_id.as_str(), again[0].attempts), ("b", 2));
            assert_eq!(again[0].payload, b"2");
        }
    }

    /// Two nodes on one database: a node that stops renewing loses its events to the other
    /// when the lease runs out, with the attempt it was making counted, and its late report
    /// changes nothing.
    #[test]
    fn a_lapsed_lease_passes_the_event_to_another_node() {
        for (backend, a, b, _dir) in crate::testing::two_nodes() {
            for i in 0..5 {
                assert!(a
                    .enqueue_event(&format!("e{i}"), "f", b"{}", 3, 100)
                    .unwrap());
            }
            let took = a.claim_due_events(1_000, 10, "a", 2_000).unwrap();
            assert_eq!(took.len(), 5, "{backend}");
            assert!(
                b.claim_due_events(1_500, 10, "b", 3_000)
                    .unwrap()
                    .is_empty(),
                "{backend}: held under a's lease"
            );
            // a renews some time; then it dies and renews no more.
            assert_eq!(a.renew_event_leases("a", 2_500).unwrap(), 5);
            assert!(b
                .claim_due_events(2_400, 10, "b", 5_000)
                .unwrap()
                .is_empty());
            assert_eq!(b.next_event_due().unwrap(), Some(2_500));
            let moved = b.claim_due_events(2_501, 10, "b", 5_000).unwrap();
            assert_eq!(moved.len(), 5, "{backend}");
            assert!(moved.iter().all(|e| e.attempts == 2), "{moved:?}");
            // a's late report is refused; b's is kept.
            assert!(!a.finish_event("e0", "a", &Attempt::Succeeded).unwrap());
            assert_eq!(b.event_counts().unwrap(), (0, 5, 0));
            for e in &moved {
                assert!(b
                    .finish_event(&e.request_id, "b", &Attempt::Succeeded)
                    .unwrap());
            }
            assert_eq!(a.event_counts().unwrap(), (0, 0, 0));
        }
    }

    fn claim_all(s: &Store, owner: &str) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let got = s.claim_due_events(0, 3, owner, FOREVER).unwrap();
            if got.is_empty() {
                return ids;
            }
            ids.extend(got.into_iter().map(|e| e.request_id));
        }
    }

    /// Nodes claiming at the same moment never take the same event.
    #[test]
    fn concurrent_claims_take_each_event_once() {
        for (backend, a, b, _dir) in crate::testing::two_nodes() {
            for i in 0..40 {
                assert!(a
                    .enqueue_event(&format!("e{i}"), "f", b"{}", 1, 100)
                    .unwrap());
            }
            let (ta, tb) = std::thread::scope(|sc| {
                let ha = sc.spawn(|| claim_all(&a, "a"));
                let hb = sc.spawn(|| claim_all(&b, "b"));
                (ha.join().unwrap(), hb.join().unwrap())
            });
            let mut all: Vec<_> = ta.iter().chain(&tb).cloned().collect();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 40, "{backend}");
            assert_eq!(ta.len() + tb.len(), 40, "{backend}: an event taken twice");
        }
    }

    #[test]
    fn the_queue_takes_no_more_than_its_limit_and_failed_events_do_not_count() {
        for (_, s) in crate::testing::stores() {
            assert!(s.enqueue_event("a", "f", b"1", 1, 2).unwrap());
            assert!(s.enqueue_event("b", "g", b"2", 1, 2).unwrap());
            assert!(
                !s.enqueue_event("c", "f", b"3", 1, 2).unwrap(),
                "the limit is the node's, over every function"
            );
            assert_eq!(s.event_counts().unwrap(), (2, 0, 0), "nothing stored");
            // A running event still counts; one that failed for good does not.
            let claimed = s.claim_due_events(0, 1, NODE, FOREVER).unwrap();
            assert!(!s.enqueue_event("c", "f", b"3", 1, 2).unwrap());
            s.finish_event(
                &claimed[0].request_id,
                NODE,
                &Attempt::Failed {
                    error: "boom".into(),
                    next_at_ms: 0,
                },
            )
            .unwrap();
            assert!(s.enqueue_event("c", "f", b"3", 1, 2).unwrap());
            assert_eq!(s.event_counts().unwrap(), (2, 0, 1));
        }
    }

    #[test]
    fn failed_events_are_listed_by_page_with_their_versions() {
        for (_, s) in crate::testing::stores() {
            for (id, target) in [
                ("a", "f"),
                ("b", "f:1"),
                ("c", "f:live"),
                ("d", "fx"),
                ("e", "f"),
            ] {
                assert!(s.enqueue_event(id, target, b"{}", 1, 10).unwrap());
            }
            for e in s.claim_due_events(0, 10, NODE, FOREVER).unwrap() {
                let failed = Attempt::Failed {
                    error: "boom".into(),
                    next_at_ms: 0,
                };
                s.finish_event(&e.request_id, NODE, &failed).unwrap();
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
}
