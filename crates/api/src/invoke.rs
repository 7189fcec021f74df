//! Synchronous invocation, at Ignition's path and at Lambda's.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ignition_proto::{ErrorBody, FunctionSpec, Outcome, Runtime};
use ignition_worker::{ExecError, Execution, Job, StartMode};
use serde_json::json;

use crate::{blocking, ApiError, AppState, MAX_INVOKE_PAYLOAD};

/// Bytes of log returned by `X-Amz-Log-Type: Tail` (Lambda's 4 KB).
const LOG_TAIL: usize = 4096;

pub(crate) async fn invoke(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<InvokeQuery>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    // A name or a function ARN, as Lambda accepts, of the caller's own functions or of
    // another account's whose policy lets the caller invoke it, with a qualifier (version or
    // alias) from the ARN or `?Qualifier=`.
    let qualifier = crate::lambda::qualifier(&name).or(query.qualifier.clone());
    let name = crate::policies::invoke_target(&state, &caller, &name, qualifier.as_deref()).await?;
    let payload = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                format!("Request must be smaller than {MAX_INVOKE_PAYLOAD} bytes for the InvokeFunction operation"),
            )
        } else {
            ApiError::invalid(e.body_text())
        }
    })?;
    if payload.len() > MAX_INVOKE_PAYLOAD {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            format!("Request must be smaller than {MAX_INVOKE_PAYLOAD} bytes for the InvokeFunction operation"),
        ));
    }
    if !payload.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json: the payload must be a JSON document",
        ));
    }
    let mode = match headers.get("x-ignition-start") {
        None => StartMode::Auto,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                ApiError::invalid("x-ignition-start must be auto, boot, restore or pool")
            })?,
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let invocation_type = headers
        .get("X-Amz-Invocation-Type")
        .map(|v| v.to_str().unwrap_or(""))
        .unwrap_or("RequestResponse");
    match invocation_type {
        "RequestResponse" => {}
        "Event" => return enqueue(&state, &name, &request_id, &payload).await,
        "DryRun" => {
            // The caller may invoke: the function exists.
            resolve(&state, &name).await?;
            return Ok(with_ids(
                StatusCode::NO_CONTENT.into_response(),
                &request_id,
                &state.node_id,
            ));
        }
        other => {
            return Err(ApiError::invalid(format!(
                "X-Amz-Invocation-Type: {other:?} is not RequestResponse, Event or DryRun"
            )))
        }
    }
    let want_tail = headers
        .get("X-Amz-Log-Type")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Tail"));
    let function_name = base_name(&name).to_owned();
    let client_context = client_context(&headers)?;
    let Ran {
        outcome,
        executor,
        executed,
        runtime,
    } = run_sync(
        &state,
        &name,
        &request_id,
        payload.to_vec(),
        client_context,
        mode,
    )
    .await?;
    let response = match outcome {
        Ok(exec) => success_response(&exec, runtime, &request_id, want_tail),
        Err(ExecError::Timeout(after)) => {
            let body = timeout_body(&request_id, after);
            let mut r = (StatusCode::OK, axum::Json(body)).into_response();
            r.headers_mut().insert(
                "X-Amz-Function-Error",
                HeaderValue::from_static("Unhandled"),
            );
            r
        }
        Err(e @ ExecError::QueueFull(_)) => return Err(queue_full(&e)),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "ServiceException",
                format!("the microVM for {function_name} failed on node {executor}: {e}"),
            ))
        }
    };
    let mut response = with_ids(response, &request_id, &executor);
    if let Ok(v) = HeaderValue::from_str(&executed) {
        response.headers_mut().insert("X-Amz-Executed-Version", v);
    }
    Ok(response)
}

/// Lambda's limit on `X-Amz-Client-Context` (base64).
const MAX_CLIENT_CONTEXT: usize = 3583;

/// `X-Amz-Client-Context`, decoded: base64 of a JSON document of at most 3583 bytes encoded.
fn client_context(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("X-Amz-Client-Context") else {
        return Ok(None);
    };
    let bad = |why: &str| ApiError::invalid(format!("X-Amz-Client-Context: {why}"));
    if v.len() > MAX_CLIENT_CONTEXT {
        return Err(bad(&format!(
            "at most {MAX_CLIENT_CONTEXT} bytes of base64"
        )));
    }
    let json = base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .map_err(|_| bad("not base64"))?;
    let text = String::from_utf8(json).map_err(|_| bad("not UTF-8 JSON"))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|_| bad("not a JSON document"))?;
    Ok(Some(text))
}

/// The answer to an invocation the node's queue had no room for.
pub(crate) fn queue_full(e: &ExecError) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequestsException",
        format!("Rate Exceeded: {e} (--max-queued-invocations)"),
    )
    .with_reason("ConcurrentInvocationLimitExceeded")
}

/// The query of an invoke.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct InvokeQuery {
    /// A version number, an alias or `$LATEST`.
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

/// Adds the request id, the executed version and the node (the one that ran the invocation,
/// or this one) to a response.
fn with_ids(mut response: Response, request_id: &str, node: &str) -> Response {
    let h = response.headers_mut();
    for (k, v) in [
        ("x-amzn-RequestId", request_id),
        ("X-Amz-Executed-Version", "$LATEST"),
        ("x-ignition-node", node),
    ] {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    }
    response
}

/// What a synchronous invocation came to, for the path that answers it (Invoke, a function URL).
pub(crate) struct Ran {
    /// The execution, or why there was none.
    pub(crate) outcome: Result<Execution, ExecError>,
    /// The node that ran it.
    pub(crate) executor: String,
    /// The version that ran (`$LATEST` or a number).
    pub(crate) executed: String,
    /// The runtime it ran on (its error documents are shaped by it).
    pub(crate) runtime: Runtime,
}

/// Runs `target` (a stored `NAME[:QUALIFIER]`) now, within the function's concurrency, and
/// keeps its metrics and log. Errors are the ones answered before anything ran (no such
/// function, throttled).
pub(crate) async fn run_sync(
    state: &AppState,
    target: &str,
    request_id: &str,
    payload: Vec<u8>,
    client_context: Option<String>,
    mode: StartMode,
) -> Result<Ran, ApiError> {
    let (mut job, executed) = load_target(state, target, request_id.to_owned(), payload).await?;
    job.client_context = client_context;
    let runtime = job.function.runtime;
    // Logs, metrics and limits are the function's, whichever version runs.
    let function_name = base_name(target);
    let tenant_limit = state.quotas.of_function(function_name).concurrency;
    let _place = crate::permits::admit(state, function_name, tenant_limit)
        .await
        .inspect_err(|_| {
            state
                .metrics
                .record_throttle(function_name, request_id, &state.node_id);
        })?;
    let started = std::time::Instant::now();
    let ran = state.node.run(job, mode).await;
    let elapsed = started.elapsed();
    tracing::info!(function = %function_name, %request_id, ms = elapsed.as_millis(), ok = ran.outcome.is_ok(), "invoked");
    state
        .metrics
        .record_run(function_name, request_id, &ran.node, &ran.outcome);
    keep_log(state, function_name, request_id, &ran.outcome);
    Ok(Ran {
        outcome: ran.outcome,
        executor: ran.node,
        executed,
        runtime,
    })
}

/// `Event`: checks the function and the size, stores the event and answers 202.
async fn enqueue(
    state: &AppState,
    name: &str,
    request_id: &str,
    payload: &[u8],
) -> Result<Response, ApiError> {
    if payload.len() > crate::events::MAX_EVENT_PAYLOAD {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            format!(
                "Request must be smaller than {} bytes for the InvokeFunction operation with InvocationType Event",
                crate::events::MAX_EVENT_PAYLOAD
            ),
        ));
    }
    // The target must exist; its code is not needed until the event runs.
    resolve(state, name).await?;
    // The function's own settings (PutFunctionEventInvokeConfig) over the node's.
    let settings = crate::event_invoke_config::for_target(state, name)
        .await
        .unwrap_or_default();
    let event = ignition_store::NewEvent {
        request_id: request_id.to_owned(),
        function: name.to_owned(),
        payload: if payload.is_empty() {
            b"{}".to_vec()
        } else {
            payload.to_vec()
        },
        max_attempts: settings
            .maximum_retry_attempts
            .unwrap_or(state.events.retries)
            .saturating_add(1),
        max_age_s: settings.maximum_event_age_in_seconds,
    };
    let limit = state.events.max_pending;
    let tenant_limit = state.quotas.of_function(name).queued_events;
    let enqueued = blocking(state, move |s| {
        s.enqueue_event_within(&event, limit, Some(tenant_limit))
    })
    .await?;
    // Past a limit the store would grow without bound; the caller may try again (SDKs do).
    match enqueued {
        ignition_store::Enqueued::Stored => {}
        ignition_store::Enqueued::NodeFull => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                format!("the node holds its limit of {limit} asynchronous invocations (queued or running); try again later"),
            )
            .with_reason("EventQueueFull"))
        }
        ignition_store::Enqueued::TenantFull => {
            return Err(crate::quotas::exceeded(
                ignition_store::Quota::QueuedEvents,
                tenant_limit,
            ))
        }
    }
    state.events.wake.notify_one();
    Ok(with_ids(
        StatusCode::ACCEPTED.into_response(),
        request_id,
        &state.node_id,
    ))
}

/// The job for invoking `target` (a stored function name, optionally `:QUALIFIER`) now.
pub(crate) async fn load_job(
    state: &AppState,
    target: &str,
    request_id: String,
    payload: Vec<u8>,
) -> Result<Job, ApiError> {
    Ok(load_target(state, target, request_id, payload).await?.0)
}

/// The job for invoking `target` (a stored function name, optionally `:QUALIFIER` with a
/// version number, an alias or `$LATEST`), and the version that runs.
pub(crate) async fn load_target(
    state: &AppState,
    target: &str,
    request_id: String,
    payload: Vec<u8>,
) -> Result<(Job, String), ApiError> {
    // A weighted alias sends this invocation to one of its versions, drawn here.
    let (name, record, version) = resolve_as(state, target, true).await?;
    let executed = version.map_or_else(|| "$LATEST".to_owned(), |v| v.to_string());
    let spec_name = spec_name(name, version);
    let config = record.config;
    // The code is not read here: the worker puts it on the VM's drive from the image it keeps
    // by hash, built from the store the first time the hash is needed.
    let function = Arc::new(FunctionSpec {
        name: spec_name,
        runtime: config.runtime,
        handler: config.handler.clone(),
        memory_mib: config.memory_mib,
        env: config.env.clone().into_iter().collect(),
        code: ignition_proto::Code::Drive,
        display_name: display_name(name),
        version: executed.clone(),
        account_id: ignition_types::account_id(
            &ignition_types::FunctionId::from_stored(name).tenant,
        ),
        image: config
            .image
            .as_ref()
            .map(ignition_types::FunctionImage::process),
    });
    let job = Job {
        function,
        // An image function's drive is its image, named by the manifest's digest.
        code_sha256: config
            .image
            .as_ref()
            .map_or(record.code_sha256, |i| i.digest_hex().to_owned()),
        layers: config
            .layers
            .iter()
            .map(|l| ignition_worker::LayerCode {
                sha256: l.code_sha256.clone(),
                tar: None,
            })
            .collect(),
        reuse: config.reuse,
        egress: config.egress.into(),
        request_id,
        payload: if payload.is_empty() {
            b"{}".to_vec()
        } else {
            payload
        },
        client_context: None,
        timeout: Duration::from_secs(u64::from(config.timeout_s)),
    };
    Ok((job, executed))
}

/// The stored function of a target `NAME[:QUALIFIER]`: logs, metrics and limits are the
/// function's, whichever version runs.
pub(crate) fn base_name(target: &str) -> &str {
    ignition_types::Target::split_stored(target).0
}

/// The stored function `target` names (`NAME[:QUALIFIER]`), without its code: its base name,
/// its record, and the version a qualifier picked (`None`: `$LATEST`).
pub(crate) async fn resolve<'a>(
    state: &AppState,
    target: &'a str,
) -> Result<(&'a str, ignition_store::FunctionRecord, Option<u32>), ApiError> {
    resolve_as(state, target, false).await
}

/// The worker's name for a function's `$LATEST` (`None`) or version: a version is a function
/// of its own to the worker (its snapshot, its warm slots).
pub(crate) fn spec_name(name: &str, version: Option<u32>) -> String {
    version.map_or_else(
        || name.to_owned(),
        |v| ignition_worker::version_spec_name(name, v),
    )
}

/// [`resolve`]; with `routed`, an alias with a weighted second version picks one of its two
/// versions by weight (an invocation), rather than its own (a read of the alias).
async fn resolve_as<'a>(
    state: &AppState,
    target: &'a str,
    routed: bool,
) -> Result<(&'a str, ignition_store::FunctionRecord, Option<u32>), ApiError> {
    let (name, qualifier) = ignition_types::Target::split_stored(target);
    let n = name.to_owned();
    let version: Option<u32> = match qualifier {
        None | Some("$LATEST") => None,
        Some(q) if q.bytes().all(|b| b.is_ascii_digit()) => Some(
            q.parse()
                .map_err(|_| ApiError::invalid(format!("Qualifier: {q:?} is not a version")))?,
        ),
        Some(alias) => {
            let (n, a) = (n.clone(), alias.to_owned());
            let alias = blocking(state, move |s| s.get_alias(&n, &a))
                .await?
                .ok_or_else(|| ApiError::not_found(target))?;
            Some(match alias.routing {
                Some(r) if routed && rand::random::<u32>() % 1_000_000 < r.ppm => r.version,
                _ => alias.version,
            })
        }
    };
    let record = match version {
        None => blocking(state, move |s| s.get_function(&n)).await?,
        Some(v) => blocking(state, move |s| s.get_version(&n, v)).await?,
    }
    .ok_or_else(|| ApiError::not_found(target))?;
    Ok((name, record, version))
}

/// The owner's name of the stored function `stored` (`TENANT.NAME` → `NAME`).
fn display_name(stored: &str) -> String {
    ignition_types::FunctionId::from_stored(stored).name
}

/// The error document as the function's runtime writes it on Lambda: Node.js calls the frames
/// `trace`, the others `stackTrace`.
fn error_json(e: &ErrorBody, runtime: Runtime) -> serde_json::Value {
    let frames = match runtime {
        Runtime::Nodejs => "trace",
        Runtime::Python3 | Runtime::Provided => "stackTrace",
    };
    json!({
        "errorMessage": e.error_message,
        "errorType": e.error_type,
        frames: e.stack_trace,
    })
}

/// Keeps the invocation's log in the store (`ignition fn logs`), off the response's path (see
/// [`crate::log_sink`]).
pub(crate) fn keep_log(
    state: &AppState,
    function: &str,
    request_id: &str,
    outcome: &Result<Execution, ExecError>,
) {
    let text = match outcome {
        Ok(exec) => log_text(exec, request_id),
        Err(e) => format!(
            "START RequestId: {request_id} Version: $LATEST\n[ignition] {e}\nEND RequestId: {request_id}\n"
        )
        .into_bytes(),
    };
    state.logs.push(function, request_id, text);
}

fn log_text(exec: &Execution, request_id: &str) -> Vec<u8> {
    let r = &exec.result;
    let mut text = format!("START RequestId: {request_id} Version: $LATEST\n").into_bytes();
    text.extend_from_slice(&r.logs);
    if r.logs_truncated {
        text.extend_from_slice(b"\n[ignition: log truncated]\n");
    }
    if let Outcome::Timeout { after_ms } = r.outcome {
        let line = format!(
            "[ignition] {}\n",
            ExecError::Timeout(Duration::from_millis(after_ms))
        );
        text.extend_from_slice(line.as_bytes());
    }
    text.extend_from_slice(
        format!(
            "END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {} ms\tInit: {} ms\n",
            r.duration_ms,
            exec.timings.vm_start_ms + exec.timings.guest_ready_ms + exec.timings.load_ms
        )
        .as_bytes(),
    );
    text
}

/// Lambda's answer for an invocation that ran out of time.
fn timeout_body(request_id: &str, after: Duration) -> serde_json::Value {
    json!({
        "errorType": "Sandbox.Timedout",
        "errorMessage": format!("RequestId: {request_id} Error: {}", ExecError::Timeout(after)),
    })
}

fn success_response(
    exec: &Execution,
    runtime: Runtime,
    request_id: &str,
    want_tail: bool,
) -> Response {
    let (body, function_error) = match &exec.result.outcome {
        Outcome::Success(body) => (body.clone(), None),
        Outcome::FunctionError(e) | Outcome::InitError(e) => (
            error_json(e, runtime).to_string().into_bytes(),
            Some("Unhandled"),
        ),
        Outcome::Timeout { after_ms } => (
            timeout_body(request_id, Duration::from_millis(*after_ms))
                .to_string()
                .into_bytes(),
            Some("Unhandled"),
        ),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(kind) = function_error {
        h.insert("X-Amz-Function-Error", HeaderValue::from_static(kind));
    }
    let t = exec.timings;
    let timing = format!(
        "queued;dur={}, snapshot;dur={}, vm_start;dur={}, guest_ready;dur={}, load;dur={}, invoke;dur={}, total;dur={}, net_setup;dur={:.3}, net_attach;dur={:.3}",
        t.queued_ms, t.snapshot_ms, t.vm_start_ms, t.guest_ready_ms, t.load_ms, t.invoke_ms, t.total_ms,
        t.net_setup_us as f64 / 1000.0, t.net_attach_us as f64 / 1000.0
    );
    h.insert(
        "x-ignition-start",
        HeaderValue::from_static(exec.start.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&timing) {
        h.insert("Server-Timing", v);
    }
    if let Ok(v) = HeaderValue::from_str(&exec.kernel_release) {
        h.insert("x-ignition-guest-kernel", v);
    }
    let logs = log_text(exec, request_id);
    tracing::debug!(%request_id, logs = %String::from_utf8_lossy(&logs), "function logs");
    if want_tail {
        let start = logs.len().saturating_sub(LOG_TAIL);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&logs[start..]);
        if let Ok(v) = HeaderValue::from_str(&b64) {
            h.insert("X-Amz-Log-Result", v);
        }
    }
    resp
}
