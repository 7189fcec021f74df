//! Schedules: a tenant's named definition (what the API makes of EventBridge Scheduler's
//! request, kept as JSON) and when it fires next. Firing is one transaction that checks the
//! due time is still the one the firer read, queues the invocation's event and moves the due
//! time on, so a due time is fired once, and a firing is never half-recorded. On a shared
//! store the check and the firing hold the schedule's lock: nodes firing the same due time at
//! once fire it once.

use crate::events::{insert_event, Enqueued, NewEvent};
use crate::sql::{vals, Row};
use crate::store::{now, Store, StoreError};

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// Its tenant.
    pub tenant: String,
    /// Its name (unique within the tenant).
    pub name: String,
    /// Its definition, as the API wrote it.
    pub definition: String,
    /// When it fires next (Unix ms); `None`: never again (disabled, or done).
    pub next_fire_ms: Option<i64>,
    /// Times it fired.
    pub fired: u64,
    /// Due times that passed unfired (every node down past the window, the event queue full).
    pub missed: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// What firing a schedule's due time does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The due time the firer read: nothing happens unless it is still the schedule's.
    pub due_ms: i64,
    /// The invocation to queue, or `None` when the due time is missed.
    pub event: Option<NewEvent>,
    /// Due times missed (this one included when `event` is `None`).
    pub missed: u64,
    /// The next due time, if any.
    pub next_fire_ms: Option<i64>,
    /// Delete the schedule (`ActionAfterCompletion: DELETE` with nothing left to fire).
    pub delete: bool,
}

/// How a [`Firing`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// Done as asked.
    Done,
    /// The event queue was full: the due time counts as missed, the schedule moved on.
    QueueFull,
    /// The schedule changed (or went) since it was read: nothing was done.
    Stale,
}

const COLUMNS: &str =
    "tenant, name, definition, next_fire_ms, fired, missed, created_at, updated_at";

fn schedule_from(r: &Row) -> Result<ScheduleRecord, StoreError> {
    Ok(ScheduleRecord {
        tenant: r.text(0)?,
        name: r.text(1)?,
        definition: r.text(2)?,
        next_fire_ms: r.opt_int(3)?,
        fired: u64::try_from(r.int(4)?).unwrap_or(0),
        missed: u64::try_from(r.int(5)?).unwrap_or(0),
        created_at: r.int(6)?,
        updated_at: r.int(7)?,
    })
}

impl Store {
    /// Stores a new schedule; `false` when the tenant has one of that name.
    pub fn create_schedule(
        &self,
        tenant: &str,
        name: &str,
        definition: &str,
        next_fire_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let t = now();
        self.with(|db| {
            db.execute(
                "INSERT INTO schedules (tenant, name, definition, next_fire_ms, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
                &vals![tenant, name, definition, next_fire_ms, t],
            )
        })
        .map(|n| n == 1)
    }

    /// Replaces a schedule's definition and due time; `false` when there is no such schedule.
    pub fn replace_schedule(
        &self,
        tenant: &str,
        name: &str,
        definition: &str,
        next_fire_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE schedules SET definition = $3, next_fire_ms = $4, updated_at = $5
                 WHERE tenant = $1 AND name = $2",
                &vals![tenant, name, definition, next_fire_ms, now()],
            )
        })
        .map(|n| n == 1)
    }

    /// One schedule.
    pub fn schedule(&self, tenant: &str, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.with(|db| {
            db.query_opt(
                &format!("SELECT {COLUMNS} FROM schedules WHERE tenant = $1 AND name = $2"),
                &vals![tenant, name],
            )?
            .map(|r| schedule_from(&r))
            .transpose()
        })
    }

    /// A tenant's schedules, by name.
    pub fn schedules(&self, tenant: &str) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.with(|db| {
            db.query(
                &format!("SELECT {COLUMNS} FROM schedules WHERE tenant = $1 ORDER BY name"),
                &vals![tenant],
            )?
            .iter()
            .map(schedule_from)
            .collect()
        })
    }

    /// Deletes a schedule; whether it existed.
    pub fn delete_schedule(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM schedules WHERE tenant = $1 AND name = $2",
                &vals![tenant, name],
            )
        })
        .map(|n| n == 1)
    }

    /// Schedules due at `now_ms`, earliest first, at most `limit`.
    pub fn due_schedules(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.with(|db| {
            db.query(
                &format!(
                    "SELECT {COLUMNS} FROM schedules WHERE next_fire_ms IS NOT NULL AND next_fire_ms <= $1
                     ORDER BY next_fire_ms LIMIT $2"
                ),
                &vals![now_ms, limit],
            )?
            .iter()
            .map(schedule_from)
            .collect()
        })
    }

    /// The earliest due time of any schedule.
    pub fn next_schedule_due(&self) -> Result<Option<i64>, StoreError> {
        self.with(|db| {
            db.query_one("SELECT MIN(next_fire_ms) FROM schedules", &[])?
                .opt_int(0)
        })
    }

    /// Fires (or records as missed) the due time `f.due_ms` of a schedule, in one transaction;
    /// the event goes into the queue unless `max_pending` events are queued or running, or
    /// `tenant_limit` of the schedule's tenant.
    pub fn fire_schedule(
        &self,
        tenant: &str,
        name: &str,
        f: &Firing,
        max_pending: u64,
        tenant_limit: Option<u64>,
    ) -> Result<Fired, StoreError> {
        self.transaction(|db| {
            db.serialize(&format!("schedule:{tenant}:{name}"))?;
            let current = db
                .query_opt(
                    "SELECT next_fire_ms FROM schedules WHERE tenant = $1 AND name = $2",
                    &vals![tenant, name],
                )?
                .map(|r| r.opt_int(0))
                .transpose()?;
            if current != Some(Some(f.due_ms)) {
                return Ok(Fired::Stale);
            }
            let (fired, missed, outcome) = match &f.event {
                None => (0, f.missed, Fired::Done),
                Some(e) if insert_event(db, e, max_pending, tenant_limit)? == Enqueued::Stored => {
                    (1, f.missed, Fired::Done)
                }
                Some(_) => (0, f.missed + 1, Fired::QueueFull),
            };
            if f.delete {
                db.execute(
                    "DELETE FROM schedules WHERE tenant = $1 AND name = $2",
                    &vals![tenant, name],
                )?;
            } else {
                db.execute(
                    "UPDATE schedules SET next_fire_ms = $3, fired = fired + $4, missed = missed + $5
                     WHERE tenant = $1 AND name = $2",
                    &vals![
                        tenant,
                        name,
                        f.next_fire_ms,
                        i64::from(fired),
                        i64::try_from(missed).unwrap_or(i64::MAX)
                    ],
                )?;
            }
            Ok(outcome)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> NewEvent {
        NewEvent {
            request_id: id.into(),
            function: "t.f".into(),
            payload: b"{\"from\":\"schedule\"}".to_vec(),
            max_attempts: 2,
            max_age_s: Some(120),
        }
    }

    #[test]
    fn a_due_time_fires_once_and_moves_on() {
        for (_, s) in crate::testing::stores() {
            assert!(s.create_schedule("t", "every", "{}", Some(1000)).unwrap());
            assert!(!s.create_schedule("t", "every", "{}", Some(1000)).unwrap());
            assert!(s.due_schedules(999, 10).unwrap().is_empty());
            let due = s.due_schedules(1000, 10).unwrap();
            assert_eq!(due.len(), 1);
            let firing = Firing {
                due_ms: 1000,
                event: Some(event("e1")),
                missed: 0,
                next_fire_ms: Some(61_000),
                delete: false,
            };
            assert_eq!(
                s.fire_schedule("t", "every", &firing, 10, None).unwrap(),
                Fired::Done
            );
            assert_eq!(
                s.fire_schedule("t", "every", &firing, 10, None).unwrap(),
                Fired::Stale,
                "a due time fires once, whoever else read it"
            );
            let queued = s.claim_due_events(0, 10, "n", i64::MAX).unwrap();
            assert_eq!(queued.len(), 1);
            assert_eq!(queued[0].max_age_s, Some(120));
            assert_eq!(queued[0].max_attempts, 2);
            let r = s.schedule("t", "every").unwrap().unwrap();
            assert_eq!((r.next_fire_ms, r.fired, r.missed), (Some(61_000), 1, 0));
            assert_eq!(s.next_schedule_due().unwrap(), Some(61_000));
        }
    }

    /// Two nodes firing the same due time at the same moment, many times over: each due time
    /// queues one event.
    #[test]
    fn nodes_firing_at_once_fire_each_due_time_once() {
        for (backend, a, b, _dir) in crate::testing::two_nodes() {
            assert!(a.create_schedule("t", "s", "{}", Some(0)).unwrap());
            for due in 0..20i64 {
                let firing = |id: &str| Firing {
                    due_ms: due,
                    event: Some(event(id)),
                    missed: 0,
                    next_fire_ms: Some(due + 1),
                    delete: false,
                };
                let (fa, fb) = (firing(&format!("a{due}")), firing(&format!("b{due}")));
                let (ra, rb) = std::thread::scope(|sc| {
                    let ha = sc.spawn(|| a.fire_schedule("t", "s", &fa, 1000, None).unwrap());
                    let hb = sc.spawn(|| b.fire_schedule("t", "s", &fb, 1000, None).unwrap());
                    (ha.join().unwrap(), hb.join().unwrap())
                });
                let done = [ra, rb].iter().filter(|r| **r == Fired::Done).count();
                assert_eq!(done, 1, "{backend}: due {due}: {ra:?} {rb:?}");
            }
            assert_eq!(a.event_counts().unwrap(), (20, 0, 0), "{backend}");
            assert_eq!(b.schedule("t", "s").unwrap().unwrap().fired, 20);
        }
    }

    #[test]
    fn missed_and_full_queues_are_counted_and_done_schedules_go() {
        for (_, s) in crate::testing::stores() {
            s.create_schedule("t", "a", "{}", Some(5)).unwrap();
            let missed = Firing {
                due_ms: 5,
                event: None,
                missed: 3,
                next_fire_ms: Some(10),
                delete: false,
            };
            assert_eq!(
                s.fire_schedule("t", "a", &missed, 10, None).unwrap(),
                Fired::Done
            );
            let full = Firing {
                due_ms: 10,
                event: Some(event("e2")),
                missed: 0,
                next_fire_ms: Some(20),
                delete: false,
            };
            assert_eq!(
                s.fire_schedule("t", "a", &full, 0, None).unwrap(),
                Fired::QueueFull
            );
            let r = s.schedule("t", "a").unwrap().unwrap();
            assert_eq!((r.fired, r.missed, r.next_fire_ms), (0, 4, Some(20)));
            let last = Firing {
                due_ms: 20,
                event: Some(event("e3")),
                missed: 0,
                next_fire_ms: None,
                delete: true,
            };
            assert_eq!(
                s.fire_schedule("t", "a", &last, 10, None).unwrap(),
                Fired::Done
            );
            assert!(s.schedule("t", "a").unwrap().is_none());
            assert!(s.schedules("t").unwrap().is_empty());
        }
    }
}
