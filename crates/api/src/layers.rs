//! Lambda's layers API (`/2018-10-31/layers`): PublishLayerVersion (content as
//! `Content.ZipFile`), GetLayerVersion, GetLayerVersionByArn, ListLayers, ListLayerVersions,
//! DeleteLayerVersion; and the `Layers` of a function, which name layer versions by ARN.
//!
//! A tenant sees and uses its own account's layers only (no layer permissions across
//! accounts). A function's code and its layers together expand to at most Lambda's 250 MiB.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use ignition_store::{LayerMeta, LayerRef, LayerVersion, Runtime, MAX_LAYERS};
use ignition_types::FunctionId;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::iso8601;
use crate::lambda::Page;
use crate::{blocking, ApiError, AppState};

/// Lambda's limit on a function's code and layers together, expanded.
pub(crate) const MAX_UNZIPPED_BYTES: u64 = 262_144_000;
/// Runtimes a layer may list.
const MAX_COMPATIBLE_RUNTIMES: usize = 15;
/// The architectures Lambda knows.
const ARCHITECTURES: [&str; 2] = ["x86_64", "arm64"];

/// A layer's ARN in `account` (with `:VERSION` when `version` is given).
fn layer_arn(account: &str, name: &str, version: Option<u32>) -> String {
    match version {
        Some(v) => format!("arn:aws:lambda:local:{account}:layer:{name}:{v}"),
        None => format!("arn:aws:lambda:local:{account}:layer:{name}"),
    }
}

/// The layer a path's `LayerName` names (a name or a layer ARN of the caller's account):
/// (the caller's name for it, its stored name).
fn layer_name(caller: &Caller, name_or_arn: &str) -> Result<(String, String), ApiError> {
    let (account, name) = match name_or_arn.split(':').collect::<Vec<_>>().as_slice() {
        ["arn", _, "lambda", _, account, "layer", name] => (Some(*account), *name),
        ["arn", ..] => {
            return Err(ApiError::invalid(format!(
                "LayerName: {name_or_arn:?} is not a layer name or ARN"
            )))
        }
        _ => (None, name_or_arn),
    };
    ignition_store::validate_layer_name(name)
        .map_err(|e| ApiError::invalid(format!("LayerName: {e}")))?;
    if let Some(account) = account {
        own_account(caller, account, name_or_arn)?;
    }
    Ok((
        name.to_owned(),
        FunctionId::new(&caller.tenant, name).stored(),
    ))
}

fn own_account(caller: &Caller, account: &str, resource: &str) -> Result<(), ApiError> {
    if account == caller.account_id() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "AccessDeniedException",
        format!(
            "User: arn:aws:iam::{}:user/ignition is not authorized to perform: lambda:GetLayerVersion on resource: {resource}",
            caller.account_id()
        ),
    ))
}

/// A layer version ARN of the caller's account: (the caller's name, stored name, version).
fn version_arn(caller: &Caller, arn: &str) -> Result<(String, String, u32), ApiError> {
    let bad = || ApiError::invalid(format!("{arn:?} is not a layer version ARN"));
    let parts: Vec<&str> = arn.split(':').collect();
    let ["arn", _, "lambda", _, account, "layer", name, version] = parts.as_slice() else {
        return Err(bad());
    };
    let version: u32 = version.parse().map_err(|_| bad())?;
    ignition_store::validate_layer_name(name).map_err(|_| bad())?;
    own_account(caller, account, arn)?;
    Ok((
        (*name).to_owned(),
        FunctionId::new(&caller.tenant, name).stored(),
        version,
    ))
}

fn version_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        "The resource you requested does not exist.",
    )
}

/// A `LayerVersionsListItem` (what lists show of a version).
fn list_item(account: &str, name: &str, v: &LayerVersion) -> Value {
    json!({
        "LayerVersionArn": layer_arn(account, name, Some(v.version)),
        "Version": v.version,
        "Description": v.meta.description,
        "CreatedDate": iso8601(v.created_at),
        "CompatibleRuntimes": v.meta.compatible_runtimes,
        "CompatibleArchitectures": v.meta.compatible_architectures,
        "LicenseInfo": v.meta.license_info,
    })
}

/// GetLayerVersion's and PublishLayerVersion's answer.
fn version_doc(account: &str, name: &str, v: &LayerVersion) -> Value {
    let mut doc = list_item(account, name, v);
    doc["LayerArn"] = layer_arn(account, name, None).into();
    doc["Content"] = json!({
        "Location": "",
        "CodeSha256": crate::lambda::hex_to_base64(&v.code_sha256),
        "CodeSize": v.code_size,
    });
    doc
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Content {
    zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
}

/// The body of PublishLayerVersion.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Publish {
    content: Content,
    description: Option<String>,
    compatible_runtimes: Option<Vec<String>>,
    compatible_architectures: Option<Vec<String>>,
    license_info: Option<String>,
}

impl Publish {
    fn meta(&self) -> Result<LayerMeta, ApiError> {
        let description = self.description.clone().unwrap_or_default();
        if description.chars().count() > 256 {
            return Err(ApiError::invalid("Description: at most 256 characters"));
        }
        let license_info = self.license_info.clone().unwrap_or_default();
        if license_info.chars().count() > 512 {
            return Err(ApiError::invalid("LicenseInfo: at most 512 characters"));
        }
        let runtimes = self.compatible_runtimes.clone().unwrap_or_default();
        if runtimes.len() > MAX_COMPATIBLE_RUNTIMES {
            return Err(ApiError::invalid(format!(
                "CompatibleRuntimes: at most {MAX_COMPATIBLE_RUNTIMES}"
            )));
        }
        for r in &runtimes {
            Runtime::parse(r).map_err(|e| ApiError::invalid(format!("CompatibleRuntimes: {e}")))?;
        }
        let architectures = self.compatible_architectures.clone().unwrap_or_default();
        if architectures.len() > ARCHITECTURES.len()
            || architectures
                .iter()
                .any(|a| !ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(ApiError::invalid(format!(
                "CompatibleArchitectures: {architectures:?}; each must be one of {ARCHITECTURES:?}"
            )));
        }
        Ok(LayerMeta {
            description,
            compatible_runtimes: runtimes,
            compatible_architectures: architectures,
            license_info,
        })
    }
}

/// `POST /2018-10-31/layers/{LayerName}/versions` (PublishLayerVersion).
pub(crate) async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<Publish>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = crate::json_body(req)?;
    let (name, stored) = layer_name(&caller, &name)?;
    let meta = req.meta()?;
    if req.content.s3_bucket.is_some() {
        return Err(ApiError::invalid(
            "Content: only Content.ZipFile is supported (no S3)",
        ));
    }
    let zip = req
        .content
        .zip_file
        .as_deref()
        .ok_or_else(|| ApiError::invalid("Content.ZipFile is required"))?;
    let archive = base64::engine::general_purpose::STANDARD
        .decode(zip.as_bytes())
        .map_err(|e| ApiError::invalid(format!("Content.ZipFile: not base64 ({e})")))?;
    let (bundle, _expanding) = crate::functions::expand(archive, "Content.ZipFile").await?;
    let quotas = state.quotas.of(&caller.tenant);
    let v = blocking(&state, move |s| {
        s.publish_layer_version(&stored, &meta, bundle.tar(), &quotas)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(version_doc(&caller.account_id(), &name, &v)),
    ))
}

/// `GET /2018-10-31/layers/{LayerName}/versions/{VersionNumber}` (GetLayerVersion).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (name, stored) = layer_name(&caller, &name)?;
    let version: u32 = version
        .parse()
        .map_err(|_| ApiError::invalid(format!("VersionNumber: {version:?} is not a number")))?;
    let v = blocking(&state, move |s| s.layer_version(&stored, version))
        .await?
        .ok_or_else(version_not_found)?;
    Ok(Json(version_doc(&caller.account_id(), &name, &v)))
}

/// `DELETE /2018-10-31/layers/{LayerName}/versions/{VersionNumber}` (DeleteLayerVersion):
/// 204 whether or not the version existed, as on Lambda. Functions that use it keep it.
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (_, stored) = layer_name(&caller, &name)?;
    let version: u32 = version
        .parse()
        .map_err(|_| ApiError::invalid(format!("VersionNumber: {version:?} is not a number")))?;
    blocking(&state, move |s| s.delete_layer_version(&stored, version)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of the lists (and GetLayerVersionByArn's, which shares ListLayers' path).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "CompatibleRuntime")]
    runtime: Option<String>,
    #[serde(rename = "CompatibleArchitecture")]
    architecture: Option<String>,
    #[serde(rename = "Marker")]
    marker: Option<String>,
    #[serde(rename = "MaxItems")]
    max_items: Option<usize>,
    find: Option<String>,
    #[serde(rename = "Arn")]
    arn: Option<String>,
}

impl ListQuery {
    fn page(&self) -> Page {
        Page::new(self.marker.clone(), self.max_items)
    }

    fn matches(&self, v: &LayerVersion) -> bool {
        let has = |want: &Option<String>, list: &[String]| {
            want.as_ref().is_none_or(|w| list.iter().any(|x| x == w))
        };
        has(&self.runtime, &v.meta.compatible_runtimes)
            && has(&self.architecture, &v.meta.compatible_architectures)
    }
}

/// `GET /2018-10-31/layers` (ListLayers; with `?find=LayerVersion&Arn=`,
/// GetLayerVersionByArn): each layer with its newest version that matches the filters.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if q.find.as_deref() == Some("LayerVersion") {
        let arn = q
            .arn
            .as_deref()
            .ok_or_else(|| ApiError::invalid("Arn is required"))?;
        let (name, stored, version) = version_arn(&caller, arn)?;
        let v = blocking(&state, move |s| s.layer_version(&stored, version))
            .await?
            .ok_or_else(version_not_found)?;
        return Ok(Json(version_doc(&caller.account_id(), &name, &v)));
    }
    let tenant = caller.tenant.clone();
    let all = blocking(&state, move |s| s.tenant_layer_versions(&tenant)).await?;
    let account = caller.account_id();
    let mut latest: Vec<Value> = Vec::new();
    let mut last_name: Option<String> = None;
    for v in all.iter().filter(|v| q.matches(v)) {
        if last_name.as_deref() == Some(v.name.as_str()) {
            continue;
        }
        last_name = Some(v.name.clone());
        let name = FunctionId::from_stored(&v.name).name;
        latest.push(json!({
            "LayerName": name,
            "LayerArn": layer_arn(&account, &name, None),
            "LatestMatchingVersion": list_item(&account, &name, v),
        }));
    }
    let (items, next) = q.page().of(latest)?;
    let mut doc = json!({ "Layers": items });
    if let Some(m) = next {
        doc["NextMarker"] = m.into();
    }
    Ok(Json(doc))
}

/// `GET /2018-10-31/layers/{LayerName}/versions` (ListLayerVersions), newest first.
pub(crate) async fn list_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let (name, stored) = layer_name(&caller, &name)?;
    let all = blocking(&state, move |s| s.layer_versions(&stored)).await?;
    let account = caller.account_id();
    let items: Vec<Value> = all
        .iter()
        .filter(|v| q.matches(v))
        .map(|v| list_item(&account, &name, v))
        .collect();
    let (items, next) = q.page().of(items)?;
    let mut doc = json!({ "LayerVersions": items });
    if let Some(m) = next {
        doc["NextMarker"] = m.into();
    }
    Ok(Json(doc))
}

/// The layer versions a function's `Layers` names, in order, as the function keeps them.
pub(crate) async fn resolve(
    state: &AppState,
    caller: &Caller,
    arns: Vec<String>,
) -> Result<Vec<LayerRef>, ApiError> {
    if arns.len() > MAX_LAYERS {
        return Err(ApiError::invalid(format!(
            "Layers: {} layers; a function can reference at most {MAX_LAYERS}",
            arns.len()
        )));
    }
    let mut out: Vec<LayerRef> = Vec::with_capacity(arns.len());
    let mut names: Vec<String> = Vec::new();
    for arn in arns {
        let (_, stored, version) = version_arn(caller, &arn)?;
        if names.contains(&stored) {
            return Err(ApiError::invalid(
                "Layers: Two different versions of the same layer are not allowed to be referenced in the same function.",
            ));
        }
        names.push(stored.clone());
        let v = blocking(state, move |s| s.layer_version(&stored, version))
            .await?
            .ok_or_else(|| {
                ApiError::invalid(format!("Layers: layer version {arn} does not exist."))
            })?;
        out.push(LayerRef {
            arn,
            code_sha256: v.code_sha256,
            code_size: v.code_size,
        });
    }
    Ok(out)
}

/// Refuses code of `code_bytes` with `layers` when together they pass Lambda's limit.
pub(crate) fn check_total_size(code_bytes: u64, layers: &[LayerRef]) -> Result<(), ApiError> {
    let total = code_bytes + layers.iter().map(|l| l.code_size).sum::<u64>();
    if total > MAX_UNZIPPED_BYTES {
        return Err(ApiError::invalid(format!(
            "Function code combined with layers exceeds the maximum allowed size of {MAX_UNZIPPED_BYTES} bytes. The actual size is {total} bytes."
        )));
    }
    Ok(())
}

/// A function configuration's `Layers`.
pub(crate) fn configuration_layers(layers: &[LayerRef]) -> Value {
    layers
        .iter()
        .map(|l| json!({ "Arn": l.arn, "CodeSize": l.code_size }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            tenant: "acme".into(),
            operator: false,
        }
    }

    #[test]
    fn names_and_arns_of_layers() {
        let c = caller();
        let account = c.account_id();
        assert_eq!(
            layer_name(&c, "deps").unwrap(),
            ("deps".into(), "acme.deps".into())
        );
        let arn = layer_arn(&account, "deps", None);
        assert_eq!(layer_name(&c, &arn).unwrap().1, "acme.deps");
        assert_eq!(
            version_arn(&c, &layer_arn(&account, "deps", Some(3))).unwrap(),
            ("deps".into(), "acme.deps".into(), 3)
        );
        let foreign = layer_arn("123456789012", "deps", Some(1));
        assert_eq!(
            version_arn(&c, &foreign).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        for bad in ["deps", "arn:aws:lambda:local:1:function:f:1", "a.b", ""] {
            assert!(version_arn(&c, bad).is_err(), "{bad:?}");
        }
        assert!(layer_name(&c, "a.b").is_err());
    }

    #[test]
    fn code_and_layers_together_stay_within_lambdas_limit() {
        let layer = |size| LayerRef {
            arn: String::new(),
            code_sha256: String::new(),
            code_size: size,
        };
        assert!(check_total_size(100, &[layer(MAX_UNZIPPED_BYTES - 100)]).is_ok());
        let e = check_total_size(100, &[layer(MAX_UNZIPPED_BYTES - 100), layer(1)]).unwrap_err();
        assert!(e.message.contains("262144000"), "{}", e.message);
    }
}
