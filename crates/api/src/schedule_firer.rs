//! Fires schedules: each due time becomes one asynchronous invocation of the schedule's target
//! (queued with the schedule's retry policy, run by the event dispatcher like any `Event`
//! invoke, its log kept with the function's). A due time found later than its window (the
//! flexible window, or [`GRACE_MS`] with the window off: the node was down) is recorded as
//! missed; the latest due time still within its window fires once. The store's transaction
//! makes each due time fire at most once.

use std::time::Duration;

use ignition_store::{Fired, Firing, NewEvent, ScheduleRecord};

use crate::clock::now_ms;
use crate::schedules::{decode, Definition};
use crate::{blocking, AppState};

/// How late a due time may fire with the flexible window off.
pub const GRACE_MS: i64 = 60_000;
/// The longest the firer sleeps: a schedule made meanwhile is due no later than this after it.
const POLL: Duration = Duration::from_secs(1);
/// Schedules fired per pass.
const BATCH: u32 = 100;
/// Missed due times counted one by one before the firer jumps to now.
const MAX_CATCH_UP: u32 = 10_000;

/// Starts the firer; it runs as long as the node.
pub fn spawn_schedule_firer(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = fire_due(&state, now_ms()).await {
                tracing::warn!(error = %e, "firing schedules");
            }
            let next = blocking(&state, |s| s.next_schedule_due())
                .await
                .ok()
                .flatten();
            let wait = next.map_or(POLL, |at| {
                let ms = at.saturating_sub(now_ms()).max(0);
                Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(POLL)
            });
            tokio::time::sleep(wait).await;
        }
    })
}

/// What firing `r` at `now_ms` does, from its definition.
pub(crate) fn plan(r: &ScheduleRecord, def: &Definition, now_ms: i64) -> Option<Firing> {
    let due = r.next_fire_ms?;
    let timing = def.timing().ok()?;
    let window = def
        .window_minutes
        .map_or(GRACE_MS, |m| i64::from(m) * 60_000);
    let mut missed = 0u64;
    let mut fire_at = Some(due);
    let mut steps = 0;
    // Skip, counting them, the due times too late to fire.
    while let Some(d) = fire_at {
        if now_ms - d <= window {
            break;
        }
        missed += 1;
        steps += 1;
        fire_at = if steps >= MAX_CATCH_UP {
            timing.next_after(now_ms - window)
        } else {
            timing.next_after(d)
        };
        if fire_at.is_some_and(|n| n > now_ms) {
            // The next due time is still ahead: nothing fires now.
            return Some(Firing {
                due_ms: due,
                event: None,
                missed,
                next_fire_ms: fire_at,
                delete: false,
            });
        }
    }
    let event = fire_at.map(|_| NewEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        function: def.function.clone(),
        payload: def
            .input
            .clone()
            .unwrap_or_else(|| "{}".to_owned())
            .into_bytes(),
        max_attempts: def.max_retries.saturating_add(1),
        max_age_s: Some(def.max_age_s),
    });
    let next = fire_at.and_then(|d| timing.next_after(d));
    Some(Firing {
        due_ms: due,
        event,
        missed,
        next_fire_ms: next,
        delete: next.is_none() && def.delete_after,
    })
}

/// Fires every schedule due at `now_ms` (the clock is the caller's: tests pass their own);
/// returns how many invocations were queued.
pub async fn fire_due(state: &AppState, now_ms: i64) -> Result<usize, crate::ApiError> {
    let due = blocking(state, move |s| s.due_schedules(now_ms, BATCH)).await?;
    let mut queued = 0;
    for r in due {
        let def = match decode(&r.definition) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(schedule = %r.name, tenant = %r.tenant, error = %e, "a schedule cannot fire");
                continue;
            }
        };
        let Some(firing) = plan(&r, &def, now_ms) else {
            continue;
        };
        let limit = state.events.max_pending;
        let tenant_limit = state.quotas.of(&r.tenant).queued_events;
        let (tenant, name, f) = (r.tenant.clone(), r.name.clone(), firing.clone());
        let fired = blocking(state, move |s| {
            s.fire_schedule(&tenant, &name, &f, limit, Some(tenant_limit))
        })
        .await?;
        match fired {
            Fired::Done if firing.event.is_some() => {
                queued += 1;
                tracing::info!(schedule = %r.name, tenant = %r.tenant, function = %def.function, due_ms = firing.due_ms, "schedule fired");
            }
            Fired::Done => {}
            Fired::QueueFull => {
                tracing::warn!(schedule = %r.name, tenant = %r.tenant, "schedule missed a firing: the event queue (the node's or the tenant's) is full");
            }
            Fired::Stale => {}
        }
        if firing.missed > 0 {
            tracing::warn!(schedule = %r.name, tenant = %r.tenant, missed = firing.missed, "schedule missed due times");
        }
    }
    if queued > 0 {
        state.events.wake.notify_one();
    }
    Ok(queued)
}
