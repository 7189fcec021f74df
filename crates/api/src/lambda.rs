//! Lambda's control-plane API (`/2015-03-31/functions`), so that AWS SDKs and the AWS CLI,
//! pointed at Ignition, manage functions: CreateFunction (code as `Code.ZipFile`),
//! ListFunctions, GetFunction, GetFunctionConfiguration, UpdateFunctionCode,
//! UpdateFunctionConfiguration, DeleteFunction. Shapes, status codes and error types follow
//! the public Lambda API reference; unknown fields are ignored as AWS does, invalid values are
//! refused with a message that names the field. `FunctionName` may be a name or an ARN.
//!
//! Not here yet: versions and aliases (`$LATEST` only), code from S3, container images.

use std::collections::BTreeMap;
use std::io::Write;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use ignition_store::{validate_name, FunctionConfig, FunctionRecord, Runtime};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::iso8601;
use crate::functions::{own_functions, store_function};
use crate::{blocking, ApiError, AppState};

/// The account and region in ARNs (there is one of each).
pub(crate) const ARN_PREFIX: &str = "arn:aws:lambda:local:000000000000:function:";

/// A name, or the name inside a function ARN (`arn:aws:lambda:REGION:ACCOUNT:function:NAME`)
/// or a qualified name (`NAME:QUALIFIER`).
pub(crate) fn function_name(name_or_arn: &str) -> Result<String, ApiError> {
    let name = match name_or_arn.strip_prefix("arn:") {
        Some(_) => name_or_arn.split(':').nth(6).ok_or_else(|| {
            ApiError::invalid(format!(
                "FunctionName: {name_or_arn:?} is not a function ARN"
            ))
        })?,
        None => name_or_arn.split(':').next().unwrap_or(name_or_arn),
    };
    validate_name(name).map_err(|e| ApiError::invalid(format!("FunctionName: {e}")))?;
    Ok(name.to_owned())
}

/// The qualifier in a qualified ARN or name, if any.
pub(crate) fn qualifier(name_or_arn: &str) -> Option<String> {
    let q = if name_or_arn.starts_with("arn:") {
        name_or_arn.split(':').nth(7)
    } else {
        name_or_arn.split_once(':').map(|(_, q)| q)
    };
    q.filter(|q| !q.is_empty()).map(str::to_owned)
}

fn conflict(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "ResourceConflictException",
        format!("Function already exist: {name}"),
    )
}

/// Lambda's name for a runtime.
fn lambda_runtime(r: Runtime) -> &'static str {
    match r {
        // The guest image's Python (Debian 12).
        Runtime::Python3 => "python3.11",
        Runtime::Provided => "provided",
    }
}

/// A `FunctionConfiguration`.
pub(crate) fn configuration(r: &FunctionRecord) -> Value {
    let c = &r.config;
    let sha = hex_to_base64(&r.code_sha256);
    json!({
        "FunctionName": c.name,
        "FunctionArn": format!("{ARN_PREFIX}{}", c.name),
        "Runtime": lambda_runtime(c.runtime),
        "Role": "arn:aws:iam::000000000000:role/ignition",
        "Handler": c.handler,
        "CodeSize": r.code_size,
        "CodeSha256": sha,
        "Description": "",
        "Timeout": c.timeout_s,
        "MemorySize": c.memory_mib,
        "LastModified": iso8601(r.updated_at),
        "Version": "$LATEST",
        "Environment": { "Variables": c.env },
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
    })
}

fn hex_to_base64(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Environment {
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CodeSpec {
    zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
    image_uri: Option<String>,
}

impl CodeSpec {
    fn zip(&self) -> Result<Vec<u8>, ApiError> {
        if self.s3_bucket.is_some() || self.image_uri.is_some() {
            return Err(ApiError::invalid(
                "Code: only Code.ZipFile is supported (no S3 or container images)",
            ));
        }
        let zip = self
            .zip_file
            .as_deref()
            .ok_or_else(|| ApiError::invalid("Code.ZipFile is required"))?;
        base64::engine::general_purpose::STANDARD
            .decode(zip.as_bytes())
            .map_err(|e| ApiError::invalid(format!("Code.ZipFile: not base64 ({e})")))
    }
}

/// The body of CreateFunction (fields Ignition uses; others are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateFunction {
    function_name: String,
    runtime: Option<String>,
    handler: Option<String>,
    code: CodeSpec,
    memory_size: Option<u32>,
    timeout: Option<u32>,
    environment: Option<Environment>,
    package_type: Option<String>,
}

/// The body of UpdateFunctionConfiguration.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UpdateConfiguration {
    runtime: Option<String>,
    handler: Option<String>,
    memory_size: Option<u32>,
    timeout: Option<u32>,
    environment: Option<Environment>,
}

/// The body of UpdateFunctionCode.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UpdateCode {
    zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
    image_uri: Option<String>,
}

fn body<T>(b: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::invalid(format!("bad request body: {}", e.body_text())))
}

fn runtime(s: &str) -> Result<Runtime, ApiError> {
    Runtime::parse(s).map_err(|e| ApiError::invalid(format!("Runtime: {e}")))
}

/// The caller's function `name_or_arn`, under the caller's name.
async fn record(
    state: &AppState,
    caller: &Caller,
    name_or_arn: &str,
) -> Result<FunctionRecord, ApiError> {
    let stored = caller.function(name_or_arn)?;
    let mut r = blocking(state, move |s| s.get_function(&stored))
        .await?
        .ok_or_else(|| ApiError::not_found(&function_name(name_or_arn).unwrap_or_default()))?;
    r.config.name = function_name(name_or_arn)?;
    Ok(r)
}

/// Stores `config` (named as the caller names it) with `archive` as its code; the record
/// comes back under the caller's name.
async fn save(
    state: &AppState,
    caller: &Caller,
    mut config: FunctionConfig,
    archive: Vec<u8>,
) -> Result<FunctionRecord, ApiError> {
    let name = std::mem::take(&mut config.name);
    config.name = caller.function(&name)?;
    let (mut rec, _) = store_function(state, config, archive).await?;
    rec.config.name = name;
    Ok(rec)
}

/// `POST /2015-03-31/functions` (CreateFunction).
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    req: Result<Json<CreateFunction>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(req)?;
    let name = function_name(&req.function_name)?;
    if req.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(ApiError::invalid("PackageType: only Zip is supported"));
    }
    let runtime = runtime(
        req.runtime
            .as_deref()
            .ok_or_else(|| ApiError::invalid("Runtime is required"))?,
    )?;
    let handler = req
        .handler
        .ok_or_else(|| ApiError::invalid("Handler is required"))?;
    let zip = req.code.zip()?;
    if record(&state, &caller, &name).await.is_ok() {
        return Err(conflict(&name));
    }
    let config = FunctionConfig {
        name,
        runtime,
        handler,
        memory_mib: req.memory_size.unwrap_or(128),
        timeout_s: req.timeout.unwrap_or(3),
        env: req.environment.unwrap_or_default().variables,
        reuse: false,
        egress: Vec::new(),
    };
    let rec = save(&state, &caller, config, zip).await?;
    Ok((StatusCode::CREATED, Json(configuration(&rec))))
}

/// `GET /2015-03-31/functions/` (ListFunctions).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let functions = own_functions(&state, &caller).await?;
    let configs: Vec<Value> = functions.iter().map(configuration).collect();
    Ok(Json(json!({ "Functions": configs })))
}

/// Refills of a function's warm slots that fail in a row before it is reported `Failed`.
const FAILED_AFTER: u32 = 3;

/// `State`/`StateReason` from what the node knows beyond the record: a function whose warm
/// slots fail to be built, again and again, is `Failed` with the reason (it returns to
/// `Active` when one is built).
fn with_node_state(state: &AppState, caller: &Caller, name: &str, mut c: Value) -> Value {
    let Ok(stored) = caller.function(name) else {
        return c;
    };
    let pool = state.worker.pool_status(&stored);
    if pool.failures >= FAILED_AFTER {
        c["State"] = "Failed".into();
        c["StateReasonCode"] = "InternalError".into();
        c["StateReason"] = format!(
            "{} attempts in a row to prepare a microVM for the function failed; the last: {}",
            pool.failures,
            pool.last_error.unwrap_or_default()
        )
        .into();
    }
    c
}

/// `GET /2015-03-31/functions/{name}` (GetFunction).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = record(&state, &caller, &name).await?;
    Ok(Json(json!({
        "Configuration": with_node_state(&state, &caller, &name, configuration(&r)),
        "Code": { "RepositoryType": "Ignition", "Location": "" },
    })))
}

/// `GET /2015-03-31/functions/{name}/configuration` (GetFunctionConfiguration).
pub(crate) async fn get_configuration(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = record(&state, &caller, &name).await?;
    Ok(Json(with_node_state(
        &state,
        &caller,
        &name,
        configuration(&r),
    )))
}

/// `PUT /2015-03-31/functions/{name}/code` (UpdateFunctionCode).
pub(crate) async fn update_code(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<UpdateCode>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(req)?;
    let r = record(&state, &caller, &name).await?;
    let zip = CodeSpec {
        zip_file: req.zip_file,
        s3_bucket: req.s3_bucket,
        image_uri: req.image_uri,
    }
    .zip()?;
    let rec = save(&state, &caller, r.config, zip).await?;
    Ok(Json(configuration(&rec)))
}

/// `PUT /2015-03-31/functions/{name}/configuration` (UpdateFunctionConfiguration).
pub(crate) async fn update_configuration(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<UpdateConfiguration>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(req)?;
    let r = record(&state, &caller, &name).await?;
    let mut config = r.config.clone();
    if let Some(rt) = &req.runtime {
        config.runtime = runtime(rt)?;
    }
    if let Some(h) = req.handler {
        config.handler = h;
    }
    if let Some(m) = req.memory_size {
        config.memory_mib = m;
    }
    if let Some(t) = req.timeout {
        config.timeout_s = t;
    }
    if let Some(e) = req.environment {
        config.env = e.variables;
    }
    // The stored code is the canonical tar; it goes through the same checks as an upload.
    let hash = r.code_sha256.clone();
    let tar = blocking(&state, move |s| s.get_bundle(&hash))
        .await?
        .ok_or_else(|| ApiError::internal(format!("the code of {} is missing", r.config.name)))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let archive = gz
        .write_all(&tar)
        .and_then(|()| gz.finish())
        .map_err(|e| ApiError::internal(format!("re-pack the code: {e}")))?;
    let rec = save(&state, &caller, config, archive).await?;
    Ok(Json(configuration(&rec)))
}

/// `DELETE /2015-03-31/functions/{name}` (DeleteFunction).
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = function_name(&name)?;
    crate::functions::delete(State(state), caller, Path(name)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_arns_and_dates() {
        assert_eq!(function_name("echo").unwrap(), "echo");
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:123456789012:function:echo").unwrap(),
            "echo"
        );
        assert!(function_name("arn:aws:lambda").is_err());
        assert!(function_name("bad name").is_err());
        assert_eq!(hex_to_base64("00ff"), "AP8=");
    }
}
