//! Lambda's asynchronous invocation settings per function (and qualifier):
//! Put/Update/Get/Delete/ListFunctionEventInvokeConfigs under
//! `/2019-09-25/functions/{name}/event-invoke-config`. `MaximumRetryAttempts` and
//! `MaximumEventAgeInSeconds` replace the node's defaults for the function's `Event` invokes;
//! `DestinationConfig` names another function of the tenant that gets Lambda's invocation
//! record when an event succeeds (`OnSuccess`) or fails for good (`OnFailure`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::lambda::{function_arn, function_name, Page};
use crate::{blocking, ApiError, AppState, QualifierQuery};

/// One destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) destination: Option<String>,
}

/// Where an event's outcome goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DestinationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) on_success: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) on_failure: Option<Destination>,
}

/// The settings, as stored and answered (less `FunctionArn` and `LastModified`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) maximum_retry_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) maximum_event_age_in_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) destination_config: Option<DestinationConfig>,
}

/// The settings in force for a stored target `NAME[:QUALIFIER]`: its own.
pub(crate) async fn for_target(state: &AppState, target: &str) -> Option<Settings> {
    let (name, qualifier) = ignition_types::Target::split_stored(target);
    let (n, q) = (name.to_owned(), qualifier.map(str::to_owned));
    let found = blocking(state, move |s| s.event_invoke_config(&n, q.as_deref()))
        .await
        .ok()
        .flatten()?;
    serde_json::from_str(&found.json).ok()
}

/// Checks a destination: the ARN of one of the caller's functions, which exists; the stored
/// target it names.
async fn destination_target(
    state: &AppState,
    caller: &Caller,
    field: &str,
    arn: &str,
) -> Result<String, ApiError> {
    if !arn.starts_with("arn:") || arn.split(':').nth(2) != Some("lambda") {
        return Err(ApiError::invalid(format!(
            "DestinationConfig.{field}.Destination: {arn:?}: only a Lambda function of yours can be a destination here"
        )));
    }
    let stored = caller.function(arn).map_err(|e| {
        ApiError::invalid(format!(
            "DestinationConfig.{field}.Destination: {}",
            e.message
        ))
    })?;
    let target = match crate::lambda::qualifier(arn) {
        Some(q) => format!("{stored}:{q}"),
        None => stored,
    };
    crate::invoke::resolve(state, &target).await.map_err(|_| {
        ApiError::invalid(format!(
            "DestinationConfig.{field}.Destination: {arn}: no such function of yours"
        ))
    })?;
    Ok(target)
}

async fn check(state: &AppState, caller: &Caller, s: &Settings) -> Result<(), ApiError> {
    if s.maximum_retry_attempts.is_some_and(|n| n > 2) {
        return Err(ApiError::invalid("MaximumRetryAttempts: 0 to 2"));
    }
    if s.maximum_event_age_in_seconds
        .is_some_and(|n| !(60..=21_600).contains(&n))
    {
        return Err(ApiError::invalid("MaximumEventAgeInSeconds: 60 to 21600"));
    }
    if let Some(d) = &s.destination_config {
        for (field, dest) in [("OnSuccess", &d.on_success), ("OnFailure", &d.on_failure)] {
            if let Some(arn) = dest.as_ref().and_then(|d| d.destination.as_deref()) {
                destination_target(state, caller, field, arn).await?;
            }
        }
    }
    Ok(())
}

/// The function (and qualifier) a request names, stored; it must exist.
async fn target(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: QualifierQuery,
) -> Result<(String, String, Option<String>), ApiError> {
    let user = function_name(name)?;
    let stored = caller.function(name)?;
    let qualifier = crate::lambda::qualifier(name)
        .or(q.qualifier)
        .filter(|q| q != "$LATEST");
    let t = match &qualifier {
        Some(q) => format!("{stored}:{q}"),
        None => stored.clone(),
    };
    crate::invoke::resolve(state, &t).await?;
    Ok((stored, user, qualifier))
}

fn answer(
    account: &str,
    user: &str,
    qualifier: Option<&str>,
    settings: &Settings,
    updated_at: i64,
) -> Value {
    let mut v = serde_json::to_value(settings).unwrap_or_else(|_| json!({}));
    let arn = match qualifier {
        Some(q) => function_arn(account, &format!("{user}:{q}")),
        None => function_arn(account, &format!("{user}:$LATEST")),
    };
    v["FunctionArn"] = arn.into();
    v["LastModified"] = updated_at.into();
    v
}

async fn save(
    state: &AppState,
    caller: &Caller,
    stored: String,
    user: &str,
    qualifier: Option<String>,
    settings: Settings,
) -> Result<Json<Value>, ApiError> {
    let text = serde_json::to_string(&settings)
        .map_err(|e| ApiError::internal(format!("encode the settings: {e}")))?;
    let q = qualifier.clone();
    let saved = blocking(state, move |s| {
        s.put_event_invoke_config(&stored, q.as_deref(), &text)
    })
    .await?;
    Ok(Json(answer(
        &caller.account_id(),
        user,
        qualifier.as_deref(),
        &settings,
        saved.updated_at,
    )))
}

/// `PUT .../event-invoke-config` (PutFunctionEventInvokeConfig): replaces the settings.
pub(crate) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    req: Result<Json<Settings>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let settings = crate::json_body(req)?;
    let (stored, user, qualifier) = target(&state, &caller, &name, q).await?;
    check(&state, &caller, &settings).await?;
    save(&state, &caller, stored, &user, qualifier, settings).await
}

/// `POST .../event-invoke-config` (UpdateFunctionEventInvokeConfig): changes what is given.
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    req: Result<Json<Settings>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let change = crate::json_body(req)?;
    let (stored, user, qualifier) = target(&state, &caller, &name, q).await?;
    check(&state, &caller, &change).await?;
    let (s, q2) = (stored.clone(), qualifier.clone());
    let mut settings: Settings =
        blocking(&state, move |st| st.event_invoke_config(&s, q2.as_deref()))
            .await?
            .and_then(|c| serde_json::from_str(&c.json).ok())
            .unwrap_or_default();
    if change.maximum_retry_attempts.is_some() {
        settings.maximum_retry_attempts = change.maximum_retry_attempts;
    }
    if change.maximum_event_age_in_seconds.is_some() {
        settings.maximum_event_age_in_seconds = change.maximum_event_age_in_seconds;
    }
    if change.destination_config.is_some() {
        settings.destination_config = change.destination_config;
    }
    save(&state, &caller, stored, &user, qualifier, settings).await
}

fn none_set(user: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        format!("The function {user} doesn't have an EventInvokeConfig"),
    )
}

/// `GET .../event-invoke-config` (GetFunctionEventInvokeConfig).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<Value>, ApiError> {
    let (stored, user, qualifier) = target(&state, &caller, &name, q).await?;
    let q2 = qualifier.clone();
    let found = blocking(&state, move |s| {
        s.event_invoke_config(&stored, q2.as_deref())
    })
    .await?
    .ok_or_else(|| none_set(&user))?;
    let settings: Settings = serde_json::from_str(&found.json)
        .map_err(|e| ApiError::internal(format!("stored settings do not decode: {e}")))?;
    Ok(Json(answer(
        &caller.account_id(),
        &user,
        qualifier.as_deref(),
        &settings,
        found.updated_at,
    )))
}

/// `DELETE .../event-invoke-config` (DeleteFunctionEventInvokeConfig).
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, ApiError> {
    let (stored, user, qualifier) = target(&state, &caller, &name, q).await?;
    if blocking(&state, move |s| {
        s.delete_event_invoke_config(&stored, qualifier.as_deref())
    })
    .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(none_set(&user))
    }
}

/// `GET .../event-invoke-config/list` (ListFunctionEventInvokeConfigs).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let (stored, user, _) = target(&state, &caller, &name, QualifierQuery::default()).await?;
    let all = blocking(&state, move |s| s.event_invoke_configs(&stored)).await?;
    let (all, next) = page.of(all)?;
    let configs: Vec<Value> = all
        .iter()
        .filter_map(|c| {
            let settings: Settings = serde_json::from_str(&c.json).ok()?;
            Some(answer(
                &caller.account_id(),
                &user,
                c.qualifier.as_deref(),
                &settings,
                c.updated_at,
            ))
        })
        .collect();
    let mut doc = json!({ "FunctionEventInvokeConfigs": configs });
    if let Some(m) = next {
        doc["NextMarker"] = m.into();
    }
    Ok(Json(doc))
}
