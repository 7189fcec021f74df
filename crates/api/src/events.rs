//! Asynchronous invocations: `X-Amz-Invocation-Type: Event` is answered 202 once the event is
//! in the store; this dispatcher runs it, retrying failures with exponential backoff, and
//! leaves events whose attempts are spent in the function's failure destination
//! (`GET /v1/functions/{name}/failed-events`). Events live in the store, so they survive a
//! server restart; each runs one attempt at a time (the store claims it under this node's
//! lease, renewed while it runs: on a shared store, the events of a node that dies run on
//! another once its leases lapse, [`EVENT_LEASE`] after its last renewal).
//!
//! As on Lambda, an event a concurrency limit refuses (throttled) is not an attempt: it goes
//! back to the queue with a backoff that doubles from 1 second to 5 minutes, until its maximum
//! age (6 hours by default) runs out; then, as when its attempts are spent, it goes to the
//! failure destination with the reason.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use ignition_proto::Outcome;
use ignition_store::Attempt;
use ignition_worker::StartMode;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::clock::now_ms;
use crate::invoke::load_job;
use crate::{blocking, ApiError, AppState};

/// Marks an attempt refused by a concurrency limit (it does not count as an attempt).
const THROTTLED: &str = "throttled: ";
/// How soon a throttled event is tried again the first time; it doubles each time after.
const THROTTLE_FIRST_RETRY_MS: i64 = 1000;
/// The longest a throttled event waits before it is tried again.
const THROTTLE_MAX_RETRY_MS: i64 = 5 * 60 * 1000;

/// The wait before a throttled event is tried again, after `throttles` refusals in a row.
fn throttle_backoff_ms(throttles: u32) -> i64 {
    THROTTLE_FIRST_RETRY_MS
        .saturating_mul(1i64 << throttles.min(20))
        .min(THROTTLE_MAX_RETRY_MS)
}

/// Largest asynchronous event (Lambda's limit).
pub const MAX_EVENT_PAYLOAD: usize = 256 * 1024;

/// How long an idle dispatcher sleeps at most before it looks at the store again.
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Retries and limits of asynchronous invocations.
#[derive(Debug, Clone)]
pub struct EventConfig {
    /// Retries after the first attempt (Lambda's default: 2).
    pub retries: u32,
    /// Delay before the first retry; each further retry waits twice as long.
    pub retry_delay: Duration,
    /// Events running at once (they also wait for admission like any invocation).
    pub parallelism: usize,
    /// Events the node holds queued or running at most (each up to 256 KiB in the store);
    /// beyond it an `Event` invoke gets 429 `TooManyRequestsException`.
    pub max_pending: u64,
    /// How old an event may grow, throttled or waiting to retry, before it goes to the failed
    /// events (Lambda's `MaximumEventAgeInSeconds`, 6 hours by default).
    pub max_age: Duration,
    /// Wakes the dispatcher: an event was stored or a running one finished.
    pub wake: Arc<tokio::sync::Notify>,
}

impl Default for EventConfig {
    fn default() -> Self {
        Self {
            retries: 2,
            retry_delay: Duration::from_secs(1),
            parallelism: 4,
            max_pending: 10_000,
            max_age: Duration::from_secs(6 * 3600),
            wake: Arc::default(),
        }
    }
}

/// Runs one attempt of an event; `Ok` with the function's result when it succeeded.
async fn attempt(
    state: &AppState,
    function: &str,
    request_id: &str,
    payload: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let target = function;
    let function = crate::invoke::base_name(target);
    let job = load_job(state, target, request_id.to_owned(), payload)
        .await
        .map_err(|e| e.to_string())?;
    let tenant_limit = state.quotas.of_function(function).concurrency;
    let _place = crate::permits::admit(state, function, tenant_limit)
        .await
        .map_err(|e| {
            state
                .metrics
                .record_throttle(function, request_id, &state.node_id);
            format!("{THROTTLED}{e}")
        })?;
    let ran = state.node.run(job, StartMode::Auto).await;
    let outcome = ran.outcome;
    if let Err(e @ ignition_worker::ExecError::QueueFull(_)) = &outcome {
        // Nothing ran: like a throttle, it waits and does not spend an attempt.
        state
            .metrics
            .record_throttle(function, request_id, &state.node_id);
        return Err(format!("{THROTTLED}{e}"));
    }
    crate::invoke::keep_log(state, function, request_id, &outcome);
    state
        .metrics
        .record_run(function, request_id, &ran.node, &outcome);
    let exec = outcome.map_err(|e| e.to_string())?;
    match exec.result.outcome {
        Outcome::Success(result) => Ok(result),
        Outcome::FunctionError(e) | Outcome::InitError(e) => {
            Err(format!("{}: {}", e.error_type, e.error_message))
        }
        Outcome::Timeout { after_ms } => {
            Err(ignition_worker::ExecError::Timeout(Duration::from_millis(after_ms)).to_string())
        }
    }
}

/// Starts the dispatcher: queues again what a previous server left running, then polls for
/// due events.
pub fn spawn_dispatcher(state: AppState) {
    tokio::spawn(async move {
        let owner = state.node_id.clone();
        let me = owner.clone();
        match blocking(&state, move |s| s.requeue_running_events(&me)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                events = n,
                "queued again the events a previous server was running"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot requeue events"),
        }
        let config = state.events.clone();
        let slots = Arc::new(Semaphore::new(config.parallelism.max(1)));
        spawn_lease_renewer(state.clone());
        loop {
            let free = u32::try_from(slots.available_permits()).unwrap_or(0);
            let due = if free == 0 {
                Vec::new()
            } else {
                let me = owner.clone();
                blocking(&state, move |s| {
                    s.claim_due_events(now_ms(), free, &me, lease_until_ms())
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot claim events");
                    Vec::new()
                })
            };
            if due.is_empty() {
                // Sleep until the next retry is due, or something wakes us (a new event, a
                // freed slot); the store is not polled while nothing can happen.
                let next = blocking(&state, |s| s.next_event_due())
                    .await
                    .ok()
                    .flatten();
                let wait = next.map_or(IDLE_WAIT, |at| {
                    let ms = at.saturating_sub(now_ms()).max(0);
                    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(IDLE_WAIT)
                });
                tokio::select! {
                    () = config.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            for event in due {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let age_ms = now_ms().saturating_sub(event.created_at.saturating_mul(1000));
                    // A schedule's retry policy brings its own maximum age.
                    let max_age = event
                        .max_age_s
                        .map_or(config.max_age, |s| Duration::from_secs(u64::from(s)));
                    let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
                    let outcome = if age_ms > max_age_ms {
                        Err(String::new())
                    } else {
                        attempt(
                            &state,
                            &event.function,
                            &event.request_id,
                            event.payload.clone(),
                        )
                        .await
                    };
                    let response = outcome.as_ref().ok().cloned();
                    let record = match outcome {
                        Ok(_) => Attempt::Succeeded,
                        Err(_) if age_ms > max_age_ms => {
                            tracing::info!(function = %event.function, request_id = %event.request_id,
                                "asynchronous invocation expired");
                            Attempt::Expired {
                                error: format!(
                                    "the event expired: it was {} s old, over MaximumEventAgeInSeconds ({} s), after {} attempt(s) and {} throttle(s)",
                                    age_ms / 1000,
                                    max_age.as_secs(),
                                    event.attempts.saturating_sub(1),
                                    event.throttles
                                ),
                            }
                        }
                        Err(error) if error.starts_with(THROTTLED) => Attempt::Throttled {
                            next_at_ms: now_ms()
                                .saturating_add(throttle_backoff_ms(event.throttles)),
                        },
                        Err(error) => {
                            let exp = event.attempts.saturating_sub(1).min(16);
                            let delay = config.retry_delay.saturating_mul(1 << exp);
                            tracing::info!(function = %event.function, request_id = %event.request_id,
                                attempt = event.attempts, %error, "asynchronous invocation failed");
                            Attempt::Failed {
                                error,
                                next_at_ms: now_ms().saturating_add(
                                    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                                ),
                            }
                        }
                    };
                    let condition = match &record {
                        Attempt::Succeeded => Some("Success"),
                        Attempt::Expired { .. } => Some("EventAgeExceeded"),
                        Attempt::Failed { .. } if event.attempts >= event.max_attempts => {
                            Some("RetriesExhausted")
                        }
                        _ => None,
                    };
                    let error = match &record {
                        Attempt::Failed { error, .. } | Attempt::Expired { error } => {
                            Some(error.clone())
                        }
                        _ => None,
                    };
                    let id = event.request_id.clone();
                    let me = state.node_id.clone();
                    let held = match blocking(&state, move |s| s.finish_event(&id, &me, &record))
                        .await
                    {
                        Ok(held) => held,
                        Err(e) => {
                            tracing::warn!(request_id = %event.request_id, error = %e, "cannot record an event's attempt");
                            true
                        }
                    };
                    if !held {
                        // Its lease ran out and another node took it: that node reports it.
                        tracing::warn!(request_id = %event.request_id,
                            "an event's lease ran out while it ran; another node runs it again");
                    } else if let Some(condition) = condition {
                        crate::destinations::deliver(&state, &event, condition, response, error)
                            .await;
                    }
                    drop(permit);
                    state.events.wake.notify_one();
                });
            }
        }
    });
}

/// How long a claimed event stays this node's without a renewal: when a node dies, its events
/// run elsewhere this long after its last renewal.
pub const EVENT_LEASE: Duration = Duration::from_secs(30);

/// How often the leases of running events are renewed (a third of [`EVENT_LEASE`], so that
/// two renewals may fail before one lapses).
const LEASE_RENEWAL: Duration = Duration::from_secs(10);

fn lease_until_ms() -> i64 {
    now_ms().saturating_add(i64::try_from(EVENT_LEASE.as_millis()).unwrap_or(i64::MAX))
}

/// Keeps this node's running events its own while they run.
fn spawn_lease_renewer(state: AppState) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LEASE_RENEWAL).await;
            let me = state.node_id.clone();
            if let Err(e) =
                blocking(&state, move |s| s.renew_event_leases(&me, lease_until_ms())).await
            {
                tracing::warn!(error = %e, "cannot renew the leases of running events");
            }
        }
    });
}

/// `?marker=&limit=` of the failed events.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Page {
    marker: Option<String>,
    limit: Option<u32>,
}

/// Failed events listed at once by default, and at most.
const PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// `GET /v1/functions/{name}/failed-events?marker=M&limit=N`: the function's failure
/// destination (every version's and alias's), newest first, a page at a time; `next_marker`
/// fetches the next page.
pub(crate) async fn failed(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(name): Path<String>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let n = caller.function(&name)?;
    let limit = page.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: 1 to {MAX_PAGE}")));
    }
    let offset: u64 = match &page.marker {
        None => 0,
        Some(m) => m.parse().map_err(|_| {
            ApiError::invalid(format!("marker: {m:?} is not a marker this API gave"))
        })?,
    };
    let (events, more) = blocking(&state, move |s| s.failed_events(&n, offset, limit)).await?;
    let mut doc = json!({ "function": name, "events": events });
    if more {
        doc["next_marker"] = (offset + u64::from(limit)).to_string().into();
    }
    Ok(Json(doc))
}
