//! Tenants' quotas: the node's defaults (server flags) and an operator's per-tenant settings
//! (`PUT|GET /v1/tenants/{tenant}/quotas`, operator keys only), kept in the store and in
//! memory so that the invoke path reads them without the store; and Lambda's
//! GetAccountSettings (`GET /2016-08-19/account-settings`), a tenant's limits and usage.
//!
//! Where each quota holds: functions and code bytes in the store's deploy transaction, versions
//! in its publish transaction, queued events in its enqueue statement, concurrent invocations
//! in [`crate::Concurrency`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ignition_store::{validate_tenant, Quota};
use ignition_types::{FunctionId, QuotaOverrides, TenantQuotas};
use serde_json::{json, Value};

use crate::auth::{Caller, Operator};
use crate::{blocking, ApiError, AppState};

/// The quotas in force for every tenant.
#[derive(Debug)]
pub struct Quotas {
    defaults: TenantQuotas,
    overrides: RwLock<HashMap<String, QuotaOverrides>>,
}

impl Quotas {
    /// `defaults` for every tenant, but where `overrides` (from the store) say otherwise.
    pub fn new(defaults: TenantQuotas, overrides: Vec<(String, QuotaOverrides)>) -> Arc<Self> {
        Arc::new(Self {
            defaults,
            overrides: RwLock::new(overrides.into_iter().collect()),
        })
    }

    /// `tenant`'s quotas.
    pub(crate) fn of(&self, tenant: &str) -> TenantQuotas {
        let overrides = self.overrides.read().unwrap_or_else(|p| p.into_inner());
        overrides
            .get(tenant)
            .map_or(self.defaults, |o| o.over(&self.defaults))
    }

    /// The quotas of the tenant of the stored function (or target) `stored`.
    pub(crate) fn of_function(&self, stored: &str) -> TenantQuotas {
        let name = ignition_types::Target::split_stored(stored).0;
        self.of(&FunctionId::from_stored(name).tenant)
    }

    /// Replaces every tenant's own quotas with `overrides` (what the store holds now: another
    /// node of a cluster may have changed them).
    pub fn replace(&self, overrides: Vec<(String, QuotaOverrides)>) {
        let mut o = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        *o = overrides.into_iter().collect();
    }

    fn set(&self, tenant: &str, o: QuotaOverrides) {
        let mut overrides = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        overrides.insert(tenant.to_owned(), o);
    }
}

/// The answer to a write that would pass `quota` (whose value is `limit`): Lambda's error type
/// for it, and a message naming the quota and its value.
pub(crate) fn exceeded(quota: Quota, limit: u64) -> ApiError {
    let flag = quota.flag();
    match quota {
        Quota::CodeMib => ApiError::new(
            StatusCode::BAD_REQUEST,
            "CodeStorageExceededException",
            format!("Code storage limit exceeded: the account's code would pass its quota of {limit} MiB ({flag})"),
        ),
        Quota::Functions => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            format!("the account has its quota of {limit} functions ({flag})"),
        )
        .with_reason("FunctionLimitExceeded"),
        Quota::Versions => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            format!("the function has its quota of {limit} published versions ({flag}); delete old versions first"),
        )
        .with_reason("VersionLimitExceeded"),
        Quota::QueuedEvents => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            format!("the account holds its quota of {limit} asynchronous invocations, queued or running ({flag}); try again later"),
        )
        .with_reason("EventQueueFull"),
    }
}

fn tenant_param(tenant: &str) -> Result<(), ApiError> {
    if tenant == ignition_types::DEFAULT_TENANT {
        return Ok(());
    }
    validate_tenant(tenant).map_err(ApiError::invalid)
}

async fn report(state: &AppState, tenant: String) -> Result<Json<Value>, ApiError> {
    let t = tenant.clone();
    let (overrides, usage) = blocking(state, move |s| {
        Ok((s.quota_overrides(&t)?, s.tenant_usage(&t)?))
    })
    .await?;
    Ok(Json(json!({
        "tenant": tenant,
        "quotas": state.quotas.of(&tenant),
        "defaults": state.quotas.defaults,
        "overrides": overrides,
        "usage": usage,
    })))
}

/// `GET /v1/tenants/{tenant}/quotas`: the tenant's quotas in force, what was set for it, the
/// node's defaults, and what it uses.
pub(crate) async fn get(
    State(state): State<AppState>,
    _: Operator,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    tenant_param(&tenant)?;
    report(&state, tenant).await
}

/// `PUT /v1/tenants/{tenant}/quotas`: sets the tenant's own quotas (`{"functions": N,
/// "versions": N, "code_mib": N, "queued_events": N, "concurrency": N}`, each optional: one
/// left out is the node's default). Lowering one below what the tenant holds refuses new
/// writes, and deletes nothing.
pub(crate) async fn put(
    State(state): State<AppState>,
    _: Operator,
    Path(tenant): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    tenant_param(&tenant)?;
    let body = crate::json_body(body)?;
    if let Some(unknown) = body
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .find(|k| {
            ![
                "functions",
                "versions",
                "code_mib",
                "queued_events",
                "concurrency",
            ]
            .contains(&k.as_str())
        })
    {
        return Err(ApiError::invalid(format!(
            "{unknown:?} is not a quota: functions, versions, code_mib, queued_events, concurrency"
        )));
    }
    let overrides: QuotaOverrides = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("quotas are whole numbers: {e}")))?;
    let (t, o) = (tenant.clone(), overrides);
    blocking(&state, move |s| s.set_quota_overrides(&t, &o)).await?;
    state.quotas.set(&tenant, overrides);
    report(&state, tenant).await
}

/// `GET /2016-08-19/account-settings` (GetAccountSettings): the caller's limits and usage.
pub(crate) async fn account_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let t = caller.tenant.clone();
    let usage = blocking(&state, move |s| s.tenant_usage(&t)).await?;
    let q = state.quotas.of(&caller.tenant);
    let reserved: u64 = state
        .concurrency
        .reservations()
        .into_iter()
        .filter(|(f, _)| caller.owns(f).is_some())
        .map(|(_, r)| u64::from(r))
        .sum();
    let bundle = ignition_bundle::Limits::default();
    Ok(Json(json!({
        "AccountLimit": {
            "TotalCodeSize": q.code_mib.saturating_mul(1024 * 1024),
            "CodeSizeUnzipped": bundle.max_expanded,
            // A deploy's body carries the archive in base64 (4 characters for 3 bytes).
            "CodeSizeZipped": crate::MAX_DEPLOY_BODY / 4 * 3,
            "ConcurrentExecutions": q.concurrency,
            "UnreservedConcurrentExecutions": q.concurrency.saturating_sub(reserved),
        },
        "AccountUsage": {
            "TotalCodeSize": usage.code_bytes,
            "FunctionCount": usage.functions,
        },
    })))
}
