//! Lambda's reserved concurrency operations: PutFunctionConcurrency, GetFunctionConcurrency
//! and DeleteFunctionConcurrency. A reservation is kept in the store and enforced by
//! [`crate::Concurrency`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{blocking, ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PutConcurrency {
    reserved_concurrent_executions: u32,
}

/// `PUT /2017-10-31/functions/{name}/concurrency` (PutFunctionConcurrency).
pub(crate) async fn put(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(name): Path<String>,
    req: Result<Json<PutConcurrency>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = caller.function(&name)?;
    let Json(req) = req.map_err(|e| {
        ApiError::invalid(format!("ReservedConcurrentExecutions: {}", e.body_text()))
    })?;
    let n = name.clone();
    if blocking(&state, move |s| s.get_function(&n))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(&name));
    }
    let r = req.reserved_concurrent_executions;
    state.concurrency.set(&name, Some(r))?;
    blocking(&state, move |s| s.set_reserved_concurrency(&name, Some(r))).await?;
    Ok(Json(json!({ "ReservedConcurrentExecutions": r })))
}

/// `GET /2019-09-30/functions/{name}/concurrency` (GetFunctionConcurrency).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = caller.function(&name)?;
    let n = name.clone();
    if blocking(&state, move |s| s.get_function(&n))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(&name));
    }
    Ok(Json(match state.concurrency.reserved(&name) {
        Some(r) => json!({ "ReservedConcurrentExecutions": r }),
        None => json!({}),
    }))
}

/// `DELETE /2017-10-31/functions/{name}/concurrency` (DeleteFunctionConcurrency).
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = caller.function(&name)?;
    state.concurrency.set(&name, None)?;
    blocking(&state, move |s| s.set_reserved_concurrency(&name, None)).await?;
    Ok(StatusCode::NO_CONTENT)
}
