//! Lambda's provisioned concurrency (Put/Get/Delete/ListProvisionedConcurrencyConfigs under
//! `/2019-09-30/functions/{name}/provisioned-concurrency`), mapped onto the warm pool's
//! minimum for the version or alias (what `PUT /v1/functions/{name}/pool` `min_ready` sets):
//! `READY` once the pool holds that many slots, `FAILED` with the reason when the pool's memory
//! budget cannot hold them or its slots cannot be built. Settings are kept in the store and
//! provisioned again when the node starts ([`restore`]).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::iso8601;
use crate::invoke::load_job;
use crate::{blocking, ApiError, AppState, QualifierQuery};

/// Slots one version or alias may ask for (the budget bounds it further).
const MAX_PROVISIONED: u32 = 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ProvisionedBody {
    provisioned_concurrent_executions: u32,
}

/// The stored function and the version or alias a request names (required, not `$LATEST`;
/// it must exist), and the target `NAME:QUALIFIER`.
async fn target(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: QualifierQuery,
) -> Result<(String, String, String), ApiError> {
    let stored = caller.function(name)?;
    let qualifier = crate::lambda::qualifier(name)
        .or(q.qualifier)
        .ok_or_else(|| ApiError::invalid("Qualifier is required: a version number or an alias"))?;
    if qualifier == "$LATEST" {
        return Err(ApiError::invalid(
            "Qualifier: provisioned concurrency is for a version or an alias, not $LATEST",
        ));
    }
    let t = format!("{stored}:{qualifier}");
    crate::invoke::resolve(state, &t).await?;
    Ok((stored, qualifier, t))
}

/// Keeps `slots` warm slots of `target` (a stored `NAME:QUALIFIER`).
async fn provision(state: &AppState, target: &str, slots: u32) -> Result<String, ApiError> {
    let job = load_job(state, target, String::new(), Vec::new()).await?;
    let spec = job.function.name.clone();
    state.worker.set_min_ready(
        job.function,
        job.code_sha256,
        job.layers,
        job.egress,
        slots as usize,
    );
    Ok(spec)
}

/// The configuration as Lambda reports it, from the pool of `spec`.
fn status(state: &AppState, spec: &str, requested: u32, updated_at: i64) -> Value {
    let pool = state.worker.pool_counts(spec);
    let (budget, slot_mib) = state.worker.pool_budget();
    let ready = u32::try_from(pool.ready).unwrap_or(u32::MAX).min(requested);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let fits = (budget as f64 / slot_mib.max(1.0)).floor() as u64;
    let (status, reason) = if pool.failures >= 3 {
        (
            "FAILED",
            Some(format!(
                "the slots cannot be built: {}",
                pool.last_error.unwrap_or_default()
            )),
        )
    } else if u64::from(requested) > fits {
        (
            "FAILED",
            Some(format!(
                "the warm pool's memory budget (--pool-memory-mib {budget}) holds about {fits} slots of {slot_mib:.0} MiB, not {requested}"
            )),
        )
    } else if ready >= requested {
        ("READY", None)
    } else {
        ("IN_PROGRESS", None)
    };
    let mut v = json!({
        "RequestedProvisionedConcurrentExecutions": requested,
        "AvailableProvisionedConcurrentExecutions": ready,
        "AllocatedProvisionedConcurrentExecutions": ready,
        "Status": status,
        "LastModified": iso8601(updated_at),
    });
    if let Some(r) = reason {
        v["StatusReason"] = r.into();
    }
    v
}

/// `PUT .../provisioned-concurrency?Qualifier=` (PutProvisionedConcurrencyConfig), 202.
pub(crate) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    req: Result<Json<ProvisionedBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = crate::json_body(req)?;
    let n = req.provisioned_concurrent_executions;
    if !(1..=MAX_PROVISIONED).contains(&n) {
        return Err(ApiError::invalid(format!(
            "ProvisionedConcurrentExecutions: 1 to {MAX_PROVISIONED}"
        )));
    }
    let (stored, qualifier, t) = target(&state, &caller, &name, q).await?;
    let saved = blocking(&state, move |s| s.put_provisioned(&stored, &qualifier, n)).await?;
    let spec = provision(&state, &t, n).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(status(&state, &spec, n, saved.updated_at)),
    ))
}

fn none_set() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ProvisionedConcurrencyConfigNotFoundException",
        "No Provisioned Concurrency Config found for this function",
    )
}

/// `GET .../provisioned-concurrency?Qualifier=` (GetProvisionedConcurrencyConfig), or with
/// `?List=ALL` ListProvisionedConcurrencyConfigs.
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let stored = caller.function(&name)?;
    let user = crate::lambda::function_name(&name)?;
    let s = stored.clone();
    let all = blocking(&state, move |st| st.provisioned(Some(&s))).await?;
    if q.get("List").map(String::as_str) == Some("ALL") {
        let mut configs = Vec::new();
        for p in &all {
            let spec = spec_name(&state, &p.function, &p.qualifier).await?;
            let mut v = status(&state, &spec, p.slots, p.updated_at);
            v["FunctionArn"] = crate::lambda::function_arn(
                &caller.account_id(),
                &format!("{user}:{}", p.qualifier),
            )
            .into();
            configs.push(v);
        }
        return Ok(Json(json!({ "ProvisionedConcurrencyConfigs": configs })));
    }
    let query = QualifierQuery {
        qualifier: q.get("Qualifier").cloned(),
    };
    let (_, qualifier, _) = target(&state, &caller, &name, query).await?;
    let p = all
        .iter()
        .find(|p| p.qualifier == qualifier)
        .ok_or_else(none_set)?;
    let spec = spec_name(&state, &p.function, &p.qualifier).await?;
    Ok(Json(status(&state, &spec, p.slots, p.updated_at)))
}

/// The worker's name for what `function:qualifier` runs now.
async fn spec_name(state: &AppState, function: &str, qualifier: &str) -> Result<String, ApiError> {
    let t = format!("{function}:{qualifier}");
    let (name, _, version) = crate::invoke::resolve(state, &t).await?;
    Ok(crate::invoke::spec_name(name, version))
}

/// `DELETE .../provisioned-concurrency?Qualifier=` (DeleteProvisionedConcurrencyConfig).
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, ApiError> {
    let (stored, qualifier, t) = target(&state, &caller, &name, q).await?;
    if !blocking(&state, move |s| s.delete_provisioned(&stored, &qualifier)).await? {
        return Err(none_set());
    }
    provision(&state, &t, 0).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Provisions again, at start, what the store says was asked for.
pub async fn restore(state: &AppState) {
    let all = match blocking(state, |s| s.provisioned(None)).await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read provisioned concurrency");
            return;
        }
    };
    for p in all {
        let t = format!("{}:{}", p.function, p.qualifier);
        if let Err(e) = provision(state, &t, p.slots).await {
            tracing::warn!(target = %t, error = %e, "cannot provision concurrency again");
        }
    }
}
