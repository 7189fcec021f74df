//! The pool, counters and the VMM floor: what operators and the benchmark look at.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Caller, Operator};
use crate::invoke::load_job;
use crate::{ApiError, AppState};

/// Most slots one function may ask to keep (the memory budget bounds it further).
const MAX_MIN_READY: usize = 1024;

pub(crate) async fn pool_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let stored = caller.function(&name)?;
    let status = state.worker.pool_status(&stored);
    Ok(Json(json!({
        "function": name,
        "pool": status,
        "charged_mib": state.worker.pool_charged_mib(),
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SetPool {
    min_ready: usize,
}

pub(crate) async fn set_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<SetPool>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let stored = caller.function(&name)?;
    let Json(req) =
        body.map_err(|e| ApiError::invalid(format!("bad pool request: {}", e.body_text())))?;
    if req.min_ready > MAX_MIN_READY {
        return Err(ApiError::invalid(format!(
            "min_ready must be at most {MAX_MIN_READY}"
        )));
    }
    let job = load_job(&state, &stored, String::new(), Vec::new()).await?;
    state.worker.set_min_ready(
        job.function,
        job.code_sha256,
        job.layers,
        job.egress,
        req.min_ready,
    );
    pool_status(State(state), caller, Path(name)).await
}

pub(crate) async fn stats(_: Operator, State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "node": state.node_id,
        "cluster": state.node.stats().await,
        "worker": state.worker.stats(),
        "network": state.worker.network_stats(),
        "process": { "rss_mib": process_rss_mib() },
    }))
}

/// The node process's resident memory in MiB (`VmRSS`), `null` where the kernel does not say.
fn process_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

pub(crate) async fn floor(
    _: Operator,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let d = state
        .worker
        .probe_floor()
        .await
        .map_err(|e| ApiError::internal(format!("VMM start-up probe failed: {e}")))?;
    Ok(Json(json!({ "floor_ms": d.as_secs_f64() * 1000.0 })))
}
