//! Lambda's versions and aliases: PublishVersion, ListVersionsByFunction, CreateAlias,
//! GetAlias, ListAliases, UpdateAlias, DeleteAlias. A version is an immutable copy of
//! `$LATEST`'s configuration and code; an alias names a version; invokes pick one with
//! `Qualifier` (or a qualified ARN), and run it in VMs of its own.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ignition_store::Alias;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::lambda::{configuration, function_arn};
use crate::{blocking, ApiError, AppState};

pub(crate) fn version_config(
    account: &str,
    name: &str,
    mut record: ignition_store::FunctionRecord,
    version: u32,
) -> Value {
    record.config.name = name.to_owned();
    let mut c = configuration(account, &record);
    c["Version"] = version.to_string().into();
    c["FunctionArn"] = function_arn(account, &format!("{name}:{version}")).into();
    c
}

/// The share a weight in millionths stands for, as Lambda writes it (0.2).
fn weight(ppm: u32) -> f64 {
    f64::from(ppm) / 1_000_000.0
}

fn alias_json(account: &str, function: &str, a: &Alias) -> Value {
    let mut v = alias_fields(account, function, a);
    if let Some(r) = a.routing {
        v["RoutingConfig"] = json!({
            "AdditionalVersionWeights": { r.version.to_string(): weight(r.ppm) }
        });
    }
    v
}

fn alias_fields(account: &str, function: &str, a: &Alias) -> Value {
    json!({
        "AliasArn": function_arn(account, &format!("{function}:{}", a.name)),
        "Name": a.name,
        "FunctionVersion": a.version.to_string(),
        "Description": a.description,
        "RevisionId": "",
    })
}

/// `POST /2015-03-31/functions/{name}/versions` (PublishVersion).
pub(crate) async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let stored = caller.function(&name)?;
    let user = crate::lambda::function_name(&name)?;
    let req: PublishBody = if body.iter().all(u8::is_ascii_whitespace) {
        PublishBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("bad request body: {e}")))?
    };
    if req.revision_id.is_some() {
        let s = stored.clone();
        let current = blocking(&state, move |st| st.get_function(&s))
            .await?
            .ok_or_else(|| ApiError::not_found(&user))?;
        crate::lambda::check_revision(req.revision_id.as_deref(), &current)?;
    }
    let max = state.quotas.of_function(&stored).versions;
    let (n, record) = blocking(&state, move |s| s.publish_version(&stored, Some(max)))
        .await?
        .ok_or_else(|| ApiError::not_found(&user))?;
    Ok((
        StatusCode::CREATED,
        Json(version_config(&caller.account_id(), &user, record, n)),
    ))
}

/// `GET /2015-03-31/functions/{name}/versions` (ListVersionsByFunction).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    axum::extract::Query(page): axum::extract::Query<crate::lambda::Page>,
) -> Result<Json<Value>, ApiError> {
    let stored = caller.function(&name)?;
    let user = crate::lambda::function_name(&name)?;
    let (latest, numbers) = {
        let stored = stored.clone();
        blocking(&state, move |s| {
            Ok((s.get_function(&stored)?, s.list_versions(&stored)?))
        })
        .await?
    };
    let mut latest = latest.ok_or_else(|| ApiError::not_found(&user))?;
    latest.config.name = user.clone();
    let mut versions = vec![configuration(&caller.account_id(), &latest)];
    for n in numbers {
        let stored = stored.clone();
        if let Some(r) = blocking(&state, move |s| s.get_version(&stored, n)).await? {
            versions.push(version_config(&caller.account_id(), &user, r, n));
        }
    }
    let (versions, next) = page.of(versions)?;
    let mut doc = json!({ "Versions": versions });
    if let Some(m) = next {
        doc["NextMarker"] = m.into();
    }
    Ok(Json(doc))
}

/// The body of PublishVersion (`RevisionId` checked; the rest ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PublishBody {
    revision_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AliasBody {
    name: Option<String>,
    function_version: Option<String>,
    description: Option<String>,
    routing_config: Option<RoutingConfig>,
}

/// An alias's `RoutingConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RoutingConfig {
    #[serde(default)]
    additional_version_weights: std::collections::BTreeMap<String, f64>,
}

/// Checks a `RoutingConfig` against the alias's version: at most one other version, which
/// exists, with a weight from 0 to 1.
async fn routing(
    state: &AppState,
    stored: &str,
    primary: u32,
    config: RoutingConfig,
) -> Result<Option<ignition_store::Routing>, ApiError> {
    let mut weights = config.additional_version_weights.into_iter();
    let Some((v, w)) = weights.next() else {
        return Ok(None);
    };
    if weights.next().is_some() {
        return Err(ApiError::invalid(
            "RoutingConfig.AdditionalVersionWeights: at most one additional version",
        ));
    }
    let version = version_exists(state, stored, &v).await?;
    if version == primary {
        return Err(ApiError::invalid(
            "RoutingConfig.AdditionalVersionWeights: the additional version must differ from FunctionVersion",
        ));
    }
    if !(0.0..=1.0).contains(&w) {
        return Err(ApiError::invalid(
            "RoutingConfig.AdditionalVersionWeights: a weight is from 0.0 to 1.0",
        ));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ppm = (w * 1_000_000.0).round() as u32;
    Ok(Some(ignition_store::Routing { version, ppm }))
}

async fn version_exists(state: &AppState, stored: &str, v: &str) -> Result<u32, ApiError> {
    let n: u32 = v.parse().map_err(|_| {
        ApiError::invalid(format!(
            "FunctionVersion: {v:?} is not a published version number"
        ))
    })?;
    let s2 = stored.to_owned();
    if blocking(state, move |s| s.get_version(&s2, n))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(&format!("{stored}:{n}")));
    }
    Ok(n)
}

/// `POST /2015-03-31/functions/{name}/aliases` (CreateAlias).
pub(crate) async fn create_alias(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<AliasBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = crate::json_body(req)?;
    let stored = caller.function(&name)?;
    let user = crate::lambda::function_name(&name)?;
    let alias_name = req
        .name
        .ok_or_else(|| ApiError::invalid("Name is required"))?;
    ignition_store::validate_alias(&alias_name)
        .map_err(|e| ApiError::invalid(format!("Name: {e}")))?;
    let v = req
        .function_version
        .ok_or_else(|| ApiError::invalid("FunctionVersion is required"))?;
    let version = version_exists(&state, &stored, &v).await?;
    let routing = routing(
        &state,
        &stored,
        version,
        req.routing_config.unwrap_or_default(),
    )
    .await?;
    let alias = Alias {
        name: alias_name,
        version,
        description: req.description.unwrap_or_default(),
        routing,
    };
    let a = alias.clone();
    if !blocking(&state, move |s| s.put_alias(&stored, &a, true)).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!("Alias already exists: {}", alias.name),
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(alias_json(&caller.account_id(), &user, &alias)),
    ))
}

/// `GET /2015-03-31/functions/{name}/aliases` (ListAliases).
pub(crate) async fn list_aliases(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    axum::extract::Query(page): axum::extract::Query<crate::lambda::Page>,
) -> Result<Json<Value>, ApiError> {
    let stored = caller.function(&name)?;
    let user = crate::lambda::function_name(&name)?;
    let aliases = blocking(&state, move |s| s.list_aliases(&stored)).await?;
    let (aliases, next) = page.of(aliases)?;
    let list: Vec<Value> = aliases
        .iter()
        .map(|a| alias_json(&caller.account_id(), &user, a))
        .collect();
    let mut doc = json!({ "Aliases": list });
    if let Some(m) = next {
        doc["NextMarker"] = m.into();
    }
    Ok(Json(doc))
}

async fn find_alias(state: &AppState, stored: &str, alias: &str) -> Result<Alias, ApiError> {
    let (s2, a2) = (stored.to_owned(), alias.to_owned());
    blocking(state, move |s| s.get_alias(&s2, &a2))
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("{stored}:{alias}")))
}

/// `GET /2015-03-31/functions/{name}/aliases/{alias}` (GetAlias).
pub(crate) async fn get_alias(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let stored = caller.function(&name)?;
    let a = find_alias(&state, &stored, &alias).await?;
    Ok(Json(alias_json(
        &caller.account_id(),
        &crate::lambda::function_name(&name)?,
        &a,
    )))
}

/// `PUT /2015-03-31/functions/{name}/aliases/{alias}` (UpdateAlias).
pub(crate) async fn update_alias(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
    req: Result<Json<AliasBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = crate::json_body(req)?;
    let stored = caller.function(&name)?;
    let mut a = find_alias(&state, &stored, &alias).await?;
    if let Some(v) = req.function_version {
        a.version = version_exists(&state, &stored, &v).await?;
    }
    if let Some(d) = req.description {
        a.description = d;
    }
    if let Some(r) = req.routing_config {
        a.routing = routing(&state, &stored, a.version, r).await?;
    } else if a.routing.is_some_and(|r| r.version == a.version) {
        a.routing = None;
    }
    let a2 = a.clone();
    blocking(&state, move |s| s.put_alias(&stored, &a2, false)).await?;
    Ok(Json(alias_json(
        &caller.account_id(),
        &crate::lambda::function_name(&name)?,
        &a,
    )))
}

/// `DELETE /2015-03-31/functions/{name}/aliases/{alias}` (DeleteAlias).
pub(crate) async fn delete_alias(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let stored = caller.function(&name)?;
    blocking(&state, move |s| s.delete_alias(&stored, &alias)).await?;
    Ok(StatusCode::NO_CONTENT)
}
