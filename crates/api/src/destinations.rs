//! Asynchronous invocation destinations: when an event ends (it succeeded, its retries are
//! spent, or its age ran out) and its function's `DestinationConfig` names a function for that
//! outcome, Lambda's invocation record is queued as an `Event` invocation of that function,
//! with the node's retries. The destination is one of the same tenant's functions (checked when
//! the setting was made, and again here: a destination deleted since gets nothing).

use ignition_store::{Enqueued, Event, NewEvent};
use ignition_types::FunctionId;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::{iso8601_ms, now_ms};
use crate::{blocking, AppState};

/// Queues the record of `event`'s end (`condition`: `Success`, `RetriesExhausted` or
/// `EventAgeExceeded`) for the destination its function names, if any.
pub(crate) async fn deliver(
    state: &AppState,
    event: &Event,
    condition: &str,
    response: Option<Vec<u8>>,
    error: Option<String>,
) {
    let Some(settings) = crate::event_invoke_config::for_target(state, &event.function).await
    else {
        return;
    };
    let Some(dc) = settings.destination_config else {
        return;
    };
    let success = condition == "Success";
    let destination = if success {
        dc.on_success
    } else {
        dc.on_failure
    };
    let Some(arn) = destination.and_then(|d| d.destination) else {
        return;
    };
    let (base, qualifier) = ignition_types::Target::split_stored(&event.function);
    let id = FunctionId::from_stored(base);
    let tenant = Caller {
        tenant: id.tenant.clone(),
        operator: false,
    };
    let Ok(stored) = tenant.function(&arn) else {
        return;
    };
    let target = match crate::lambda::qualifier(&arn) {
        Some(q) => format!("{stored}:{q}"),
        None => stored,
    };
    if crate::invoke::resolve(state, &target).await.is_err() {
        tracing::warn!(function = %event.function, destination = %arn, "the destination is gone: the record is dropped");
        return;
    }
    let mut response_payload: Value = match (&response, &error) {
        (Some(r), _) => serde_json::from_slice(r).unwrap_or(Value::Null),
        (None, Some(e)) => json!({ "errorMessage": e }),
        (None, None) => Value::Null,
    };
    let request_payload: Value = serde_json::from_slice(&event.payload).unwrap_or(Value::Null);
    let mut record = json!({
        "version": "1.0",
        "timestamp": iso8601_ms(now_ms()),
        "requestContext": {
            "requestId": event.request_id,
            "functionArn": crate::lambda::function_arn(
                &ignition_types::account_id(&id.tenant),
                &format!("{}:{}", id.name, qualifier.unwrap_or("$LATEST")),
            ),
            "condition": condition,
            "approximateInvokeCount": event.attempts,
        },
        "requestPayload": request_payload,
        "responseContext": {
            "statusCode": 200,
            "executedVersion": qualifier.unwrap_or("$LATEST"),
        },
        "responsePayload": response_payload.take(),
    });
    if !success {
        record["responseContext"]["functionError"] = "Unhandled".into();
    }
    let mut payload = record.to_string().into_bytes();
    if payload.len() > crate::events::MAX_EVENT_PAYLOAD {
        // An event is at most 256 KiB: the response goes first.
        record["responsePayload"] =
            json!({ "ignition": "the response was over 256 KiB and is left out" });
        payload = record.to_string().into_bytes();
    }
    let new = NewEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        function: target,
        payload,
        max_attempts: state.events.retries.saturating_add(1),
        max_age_s: None,
    };
    let limit = state.events.max_pending;
    let tenant_limit = state.quotas.of(&id.tenant).queued_events;
    match blocking(state, move |s| {
        s.enqueue_event_within(&new, limit, Some(tenant_limit))
    })
    .await
    {
        Ok(Enqueued::Stored) => state.events.wake.notify_one(),
        Ok(full) => {
            tracing::warn!(function = %event.function, destination = %arn, ?full, "the destination's record could not be queued")
        }
        Err(e) => {
            tracing::warn!(function = %event.function, destination = %arn, error = %e, "the destination's record could not be queued")
        }
    }
}
