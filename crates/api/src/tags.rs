//! Lambda's tagging operations on functions: TagResource, UntagResource and ListTags
//! (`/2017-03-31/tags/{ARN}`), and the checks `Tags` in CreateFunction goes through too.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::{blocking, ApiError, AppState};

/// Lambda's limits on a tag: keys of 1-128 characters not starting with `aws:`, values of at
/// most 256, at most [`ignition_store::MAX_TAGS`].
pub(crate) fn check(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > ignition_store::MAX_TAGS {
        return Err(ApiError::invalid(format!(
            "Tags: at most {} per function",
            ignition_store::MAX_TAGS
        )));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || k.starts_with("aws:") {
            return Err(ApiError::invalid(format!(
                "Tags: key {k:?} must be 1-128 characters and not start with aws:"
            )));
        }
        if v.chars().count() > 256 {
            return Err(ApiError::invalid(format!(
                "Tags: the value of {k:?} is over 256 characters"
            )));
        }
    }
    Ok(())
}

/// The caller's stored function a resource ARN names; it must exist.
async fn function(state: &AppState, caller: &Caller, arn: &str) -> Result<String, ApiError> {
    if crate::lambda::qualifier(arn).is_some() {
        return Err(ApiError::invalid(
            "Resource: tags are on a function, not on a version or alias",
        ));
    }
    let stored = caller.function(arn)?;
    let s = stored.clone();
    if blocking(state, move |st| st.get_function(&s))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(&crate::lambda::function_name(arn)?));
    }
    Ok(stored)
}

/// A function's tags, for GetFunction.
pub(crate) async fn of(
    state: &AppState,
    stored: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let s = stored.to_owned();
    blocking(state, move |st| st.tags(&s)).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TagBody {
    tags: BTreeMap<String, String>,
}

/// `GET /2017-03-31/tags/{ARN}` (ListTags).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(arn): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let stored = function(&state, &caller, &arn).await?;
    Ok(Json(json!({ "Tags": of(&state, &stored).await? })))
}

/// `POST /2017-03-31/tags/{ARN}` (TagResource).
pub(crate) async fn tag(
    State(state): State<AppState>,
    caller: Caller,
    Path(arn): Path<String>,
    body: Result<Json<TagBody>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let body = crate::json_body(body)?;
    check(&body.tags)?;
    let stored = function(&state, &caller, &arn).await?;
    blocking(&state, move |st| st.tag(&stored, &body.tags))
        .await
        .map_err(|e| match e.status {
            // The store refuses what would pass the tag limit.
            StatusCode::BAD_REQUEST => ApiError::invalid(format!("Tags: {}", e.message)),
            _ => e,
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /2017-03-31/tags/{ARN}?tagKeys=K&tagKeys=K2` (UntagResource).
pub(crate) async fn untag(
    State(state): State<AppState>,
    caller: Caller,
    Path(arn): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let keys: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "tagKeys")
        .map(|(_, v)| v.into_owned())
        .collect();
    if keys.is_empty() {
        return Err(ApiError::invalid("tagKeys: at least one key is required"));
    }
    let stored = function(&state, &caller, &arn).await?;
    blocking(&state, move |st| st.untag(&stored, &keys)).await?;
    Ok(StatusCode::NO_CONTENT)
}
