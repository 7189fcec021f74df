//! Lambda's control-plane API (`/2015-03-31/functions`), so that AWS SDKs and the AWS CLI,
//! pointed at Ignition, manage functions: CreateFunction (code as `Code.ZipFile`, or a
//! container image as `Code.ImageUri`, see [`crate::images`]),
//! ListFunctions, GetFunction, GetFunctionConfiguration, UpdateFunctionCode,
//! UpdateFunctionConfiguration, DeleteFunction. Shapes, status codes and error types follow
//! the public Lambda API reference; unknown fields are ignored as AWS does, invalid values are
//! refused with a message that names the field. `FunctionName` may be a name or an ARN.
//!
//! Versions and aliases are in [`crate::versions`]. Not here: code from S3.

use std::collections::BTreeMap;
use std::io::Write;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use ignition_store::{validate_name, FunctionConfig, FunctionRecord, Runtime};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::iso8601;
use crate::functions::{own_functions, store_function};
use crate::{blocking, ApiError, AppState, QualifierQuery};

/// The account and region in ARNs (there is one of each).
/// The ARN of `name` (which may carry `:QUALIFIER`) in `account`.
pub(crate) fn function_arn(account: &str, name: &str) -> String {
    format!("arn:aws:lambda:local:{account}:function:{name}")
}

/// The parts of what Lambda accepts as a function's name: a name, a qualified name
/// (`NAME:QUALIFIER`), a partial ARN (`ACCOUNT:function:NAME[:QUALIFIER]`) or an ARN
/// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`): (name, qualifier).
fn name_parts(name_or_arn: &str) -> Result<(&str, Option<&str>), ApiError> {
    let parts: Vec<&str> = name_or_arn.split(':').collect();
    let bad = || {
        ApiError::invalid(format!(
            "FunctionName: {name_or_arn:?} is not a function name or ARN"
        ))
    };
    let (name, q) = match parts.as_slice() {
        ["arn", _, "lambda", _, _, "function", name] => (*name, None),
        ["arn", _, "lambda", _, _, "function", name, q] => (*name, Some(*q)),
        ["arn", ..] => return Err(bad()),
        [account, "function", name] if account.bytes().all(|b| b.is_ascii_digit()) => (*name, None),
        [account, "function", name, q] if account.bytes().all(|b| b.is_ascii_digit()) => {
            (*name, Some(*q))
        }
        [name] => (*name, None),
        [name, q] => (*name, Some(*q)),
        _ => return Err(bad()),
    };
    Ok((name, q.filter(|q| !q.is_empty())))
}

/// The account a partial ARN or an ARN names, if it names one.
pub(crate) fn account_of(name_or_arn: &str) -> Option<&str> {
    let parts: Vec<&str> = name_or_arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "lambda", _, account, "function", ..] | [account, "function", ..] => {
            Some(*account)
        }
        _ => None,
    }
}

/// The function's name in what Lambda accepts as one ([`name_parts`]).
pub(crate) fn function_name(name_or_arn: &str) -> Result<String, ApiError> {
    let (name, _) = name_parts(name_or_arn)?;
    validate_name(name).map_err(|e| ApiError::invalid(format!("FunctionName: {e}")))?;
    Ok(name.to_owned())
}

/// The qualifier in a qualified name, partial ARN or ARN, if any.
pub(crate) fn qualifier(name_or_arn: &str) -> Option<String> {
    name_parts(name_or_arn)
        .ok()
        .and_then(|(_, q)| q)
        .map(str::to_owned)
}

fn conflict(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "ResourceConflictException",
        format!("Function already exist: {name}"),
    )
}

/// The runtime as Lambda's API answers it: the name it was made with (`python3` and `nodejs`,
/// the CLI's short forms, are the guest image's `python3.X` and `nodejsX.x`).
fn lambda_runtime(c: &FunctionConfig) -> &str {
    match (c.runtime, c.runtime_name.as_str()) {
        (Runtime::Python3, "" | "python3") | (Runtime::Nodejs, "" | "nodejs") => {
            c.runtime.lambda_name()
        }
        (Runtime::Provided, "") => "provided",
        (_, name) => name,
    }
}

/// A `FunctionConfiguration`.
pub(crate) fn configuration(account: &str, r: &FunctionRecord) -> Value {
    let c = &r.config;
    let sha = hex_to_base64(&r.code_sha256);
    let mut doc = json!({
        "FunctionName": c.name,
        "FunctionArn": function_arn(account, &c.name),
        "Runtime": lambda_runtime(c),
        "Role": format!("arn:aws:iam::{account}:role/ignition"),
        "Handler": c.handler,
        "CodeSize": r.code_size,
        "CodeSha256": sha,
        "Description": c.description,
        "RevisionId": revision_id(r),
        "Timeout": c.timeout_s,
        "MemorySize": c.memory_mib,
        "LastModified": iso8601(r.updated_at),
        "Version": "$LATEST",
        "Environment": { "Variables": c.env },
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
    });
    if !c.layers.is_empty() {
        doc["Layers"] = crate::layers::configuration_layers(&c.layers);
    }
    if let (Some(image), Some(doc)) = (&c.image, doc.as_object_mut()) {
        // Lambda reports no runtime or handler for an image, and the image's digest as its
        // code's hash.
        doc.remove("Runtime");
        doc.remove("Handler");
        doc.insert("PackageType".into(), "Image".into());
        doc.insert("CodeSha256".into(), image.digest_hex().into());
        doc.insert("CodeSize".into(), 0.into());
        if let Some(r) = crate::images::config_response(image) {
            doc.insert("ImageConfigResponse".into(), r);
        }
    }
    doc
}

/// A resource's revision, as Lambda's `RevisionId` (a UUID's shape): it changes whenever the
/// configuration or the code does.
pub(crate) fn revision_id(r: &FunctionRecord) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(serde_json::to_vec(&r.config).unwrap_or_default());
    h.update(r.code_sha256.as_bytes());
    h.update(r.updated_at.to_le_bytes());
    revision_of_digest(&h.finalize())
}

/// A revision id from a digest: its first 16 bytes in a UUID's shape, as Lambda's look.
pub(crate) fn revision_of_digest(digest: &[u8]) -> String {
    let x = hex::encode(digest);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Refuses a change whose `RevisionId` is not the resource's current one (Lambda's optimistic
/// concurrency: the caller read an older revision).
pub(crate) fn check_revision(sent: Option<&str>, current: &FunctionRecord) -> Result<(), ApiError> {
    match sent {
        Some(id) if id != revision_id(current) => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id",
        )),
        _ => Ok(()),
    }
}

/// A hex digest as Lambda writes hashes (`CodeSha256`): base64 of its bytes.
pub(crate) fn hex_to_base64(hex: &str) -> String {
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
        if self.image_uri.is_some() {
            return Err(ApiError::invalid(
                "ImageUri is for functions of PackageType Image; this one is Zip",
            ));
        }
        if self.s3_bucket.is_some() {
            return Err(ApiError::invalid(
                "Code: Code.ZipFile or Code.ImageUri (code from S3 is not supported)",
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

    /// `ImageUri`, for a function of PackageType Image.
    fn image_uri(&self) -> Result<String, ApiError> {
        if self.zip_file.is_some() || self.s3_bucket.is_some() {
            return Err(ApiError::invalid(
                "a function of PackageType Image takes Code.ImageUri, not a zip",
            ));
        }
        self.image_uri
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ApiError::invalid("Code.ImageUri is required for PackageType Image"))
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
    description: Option<String>,
    #[serde(default)]
    publish: bool,
    tags: Option<BTreeMap<String, String>>,
    layers: Option<Vec<String>>,
    image_config: Option<crate::images::ImageConfig>,
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
    description: Option<String>,
    revision_id: Option<String>,
    layers: Option<Vec<String>>,
    image_config: Option<crate::images::ImageConfig>,
}

/// The body of UpdateFunctionCode.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UpdateCode {
    zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    s3_bucket: Option<String>,
    image_uri: Option<String>,
    #[serde(default)]
    publish: bool,
    revision_id: Option<String>,
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
    let req = crate::json_body(req)?;
    let name = function_name(&req.function_name)?;
    match req.package_type.as_deref() {
        None | Some("Zip") => {}
        Some("Image") => return create_image_function(state, caller, name, req).await,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "PackageType: {other:?} is not Zip or Image"
            )))
        }
    }
    if req.image_config.is_some() {
        return Err(ApiError::invalid(
            "ImageConfig is for functions of PackageType Image",
        ));
    }
    let runtime_name = req
        .runtime
        .clone()
        .ok_or_else(|| ApiError::invalid("Runtime is required"))?;
    let runtime = runtime(&runtime_name)?;
    let handler = req
        .handler
        .ok_or_else(|| ApiError::invalid("Handler is required"))?;
    let zip = req.code.zip()?;
    let tags = req.tags.unwrap_or_default();
    crate::tags::check(&tags)?;
    if record(&state, &caller, &name).await.is_ok() {
        return Err(conflict(&name));
    }
    let layers = crate::layers::resolve(&state, &caller, req.layers.unwrap_or_default()).await?;
    let config = FunctionConfig {
        name,
        runtime,
        runtime_name: runtime_name.clone(),
        handler,
        memory_mib: req.memory_size.unwrap_or(128),
        timeout_s: req.timeout.unwrap_or(3),
        env: req.environment.unwrap_or_default().variables,
        reuse: false,
        egress: Vec::new(),
        description: req.description.unwrap_or_default(),
        layers,
        image: None,
    };
    let rec = save(&state, &caller, config, zip).await?;
    created(&state, &caller, rec, tags, req.publish).await
}

/// CreateFunction's answer for the stored `rec`, once its `tags` are set and, with `publish`,
/// its first version is published.
async fn created(
    state: &AppState,
    caller: &Caller,
    rec: FunctionRecord,
    tags: BTreeMap<String, String>,
    publish_it: bool,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !tags.is_empty() {
        let stored = caller.function(&rec.config.name)?;
        blocking(state, move |s| s.tag(&stored, &tags)).await?;
    }
    if publish_it {
        return Ok((
            StatusCode::CREATED,
            Json(publish(state, caller, &rec.config.name).await?),
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(configuration(&caller.account_id(), &rec)),
    ))
}

/// CreateFunction with `PackageType: Image`: the image `Code.ImageUri` names is resolved and
/// fetched now, and the function keeps the digest it resolved to.
async fn create_image_function(
    state: AppState,
    caller: Caller,
    name: String,
    req: CreateFunction,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    crate::images::refuse_zip_settings(
        req.runtime.is_some() || req.handler.is_some(),
        req.layers.as_deref(),
    )?;
    let uri = req.code.image_uri()?;
    let tags = req.tags.unwrap_or_default();
    crate::tags::check(&tags)?;
    if record(&state, &caller, &name).await.is_ok() {
        return Err(conflict(&name));
    }
    let overrides = req.image_config.unwrap_or_default().into();
    let image = crate::images::resolve(&state, &uri, overrides).await?;
    let config = crate::images::image_function(
        name,
        image,
        req.memory_size.unwrap_or(128),
        req.timeout.unwrap_or(3),
        req.environment.unwrap_or_default().variables,
        req.description.unwrap_or_default(),
    );
    let rec = save(&state, &caller, config, Vec::new()).await?;
    created(&state, &caller, rec, tags, req.publish).await
}

/// Publishes `$LATEST` of the caller's function `name` (CreateFunction's and
/// UpdateFunctionCode's `Publish`): the new version's configuration.
async fn publish(state: &AppState, caller: &Caller, name: &str) -> Result<Value, ApiError> {
    let stored = caller.function(name)?;
    let max = state.quotas.of_function(&stored).versions;
    let user = name.to_owned();
    let (n, record) = blocking(state, move |s| s.publish_version(&stored, Some(max)))
        .await?
        .ok_or_else(|| ApiError::not_found(&user))?;
    Ok(crate::versions::version_config(
        &caller.account_id(),
        name,
        record,
        n,
    ))
}

/// `GET /2015-03-31/functions/` (ListFunctions).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let functions = own_functions(&state, &caller).await?;
    let (functions, next) = page.of(functions)?;
    let configs: Vec<Value> = functions
        .iter()
        .map(|f| configuration(&caller.account_id(), f))
        .collect();
    let mut doc = json!({ "Functions": configs });
    if let Some(m) = next {
        doc["NextMarker"] = m.into();
    }
    Ok(Json(doc))
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
    let pool = state.worker.pool_counts(&stored);
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

/// The qualifier a request names, in its ARN or name or in `?Qualifier=` (they must agree).
pub(crate) fn requested_qualifier(
    name_or_arn: &str,
    q: QualifierQuery,
) -> Result<Option<String>, ApiError> {
    match (qualifier(name_or_arn), q.qualifier) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid(format!(
            "the qualifier in FunctionName ({a}) and Qualifier ({b}) differ"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// The configuration a Get names: `$LATEST`'s, or a version's (directly or through an alias),
/// as Lambda reports it (`Version`, and the ARN qualified as asked).
async fn qualified_configuration(
    state: &AppState,
    caller: &Caller,
    name_or_arn: &str,
    q: QualifierQuery,
) -> Result<Value, ApiError> {
    Ok(qualified(state, caller, name_or_arn, q).await?.0)
}

/// [`qualified_configuration`], with the record it reports.
async fn qualified(
    state: &AppState,
    caller: &Caller,
    name_or_arn: &str,
    q: QualifierQuery,
) -> Result<(Value, FunctionRecord), ApiError> {
    let user = function_name(name_or_arn)?;
    match requested_qualifier(name_or_arn, q)?.filter(|q| q != "$LATEST") {
        None => {
            let r = record(state, caller, name_or_arn).await?;
            let c = with_node_state(
                state,
                caller,
                &user,
                configuration(&caller.account_id(), &r),
            );
            Ok((c, r))
        }
        Some(q) => {
            let target = format!("{}:{q}", caller.function(name_or_arn)?);
            let (_, mut r, version) = crate::invoke::resolve(state, &target)
                .await
                .map_err(|_| ApiError::not_found(&format!("{user}:{q}")))?;
            r.config.name = user.clone();
            let mut c = configuration(&caller.account_id(), &r);
            c["Version"] = version
                .map_or_else(|| "$LATEST".to_owned(), |v| v.to_string())
                .into();
            c["FunctionArn"] = function_arn(&caller.account_id(), &format!("{user}:{q}")).into();
            Ok((c, r))
        }
    }
}

/// `GET /2015-03-31/functions/{name}[?Qualifier=]` (GetFunction).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<Value>, ApiError> {
    let (c, r) = qualified(&state, &caller, &name, q).await?;
    let image = r.config.image;
    let stored = caller.function(&name)?;
    let code = match &image {
        Some(image) => crate::images::code_location(image),
        None => json!({ "RepositoryType": "Ignition", "Location": "" }),
    };
    let mut doc = json!({ "Configuration": c, "Code": code });
    let tags = crate::tags::of(&state, &stored).await?;
    if !tags.is_empty() {
        doc["Tags"] = json!(tags);
    }
    if let Some((_, r)) = state
        .concurrency
        .reservations()
        .into_iter()
        .find(|(f, _)| *f == stored)
    {
        doc["Concurrency"] = json!({ "ReservedConcurrentExecutions": r });
    }
    Ok(Json(doc))
}

/// `GET /2020-06-30/functions/{name}/code-signing-config` (GetFunctionCodeSigningConfig):
/// Ignition has no code signing, so none is set (Terraform reads it).
pub(crate) async fn code_signing_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = record(&state, &caller, &name).await?;
    Ok(Json(json!({
        "CodeSigningConfigArn": "",
        "FunctionName": r.config.name,
    })))
}

/// `?Marker=&MaxItems=` of Lambda's lists.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Page {
    #[serde(rename = "Marker")]
    marker: Option<String>,
    #[serde(rename = "MaxItems")]
    max_items: Option<usize>,
}

impl Page {
    pub(crate) fn new(marker: Option<String>, max_items: Option<usize>) -> Self {
        Self { marker, max_items }
    }

    /// The items of this page of `all` (at most `MaxItems`, 1-10000, from `Marker`), and the
    /// `NextMarker` when more follow.
    pub(crate) fn of<T>(&self, all: Vec<T>) -> Result<(Vec<T>, Option<String>), ApiError> {
        let max = self.max_items.unwrap_or(50);
        if !(1..=10_000).contains(&max) {
            return Err(ApiError::invalid("MaxItems: 1 to 10000"));
        }
        let start: usize = match &self.marker {
            None => 0,
            Some(m) => m.parse().map_err(|_| {
                ApiError::invalid(format!("Marker: {m:?} is not a marker this API gave"))
            })?,
        };
        let total = all.len();
        let page: Vec<T> = all.into_iter().skip(start).take(max).collect();
        let next = (start + max < total).then(|| (start + max).to_string());
        Ok((page, next))
    }
}

/// `GET /2015-03-31/functions/{name}/configuration[?Qualifier=]` (GetFunctionConfiguration).
pub(crate) async fn get_configuration(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        qualified_configuration(&state, &caller, &name, q).await?,
    ))
}

/// `PUT /2015-03-31/functions/{name}/code` (UpdateFunctionCode).
pub(crate) async fn update_code(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<UpdateCode>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = crate::json_body(req)?;
    let mut r = record(&state, &caller, &name).await?;
    check_revision(req.revision_id.as_deref(), &r)?;
    let code = CodeSpec {
        zip_file: req.zip_file,
        s3_bucket: req.s3_bucket,
        image_uri: req.image_uri,
    };
    let rec = match r.config.image.take() {
        // The image is resolved again: a tag that moved is followed now.
        Some(old) => {
            let image = crate::images::resolve(&state, &code.image_uri()?, old.overrides).await?;
            r.config.image = Some(image);
            save(&state, &caller, r.config, Vec::new()).await?
        }
        None => save(&state, &caller, r.config, code.zip()?).await?,
    };
    if req.publish {
        return Ok(Json(publish(&state, &caller, &rec.config.name).await?));
    }
    Ok(Json(configuration(&caller.account_id(), &rec)))
}

/// `PUT /2015-03-31/functions/{name}/configuration` (UpdateFunctionConfiguration).
pub(crate) async fn update_configuration(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<UpdateConfiguration>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = crate::json_body(req)?;
    let r = record(&state, &caller, &name).await?;
    check_revision(req.revision_id.as_deref(), &r)?;
    let mut config = r.config.clone();
    if let Some(ic) = req.image_config {
        let image = config.image.as_mut().ok_or_else(|| {
            ApiError::invalid("ImageConfig is for functions of PackageType Image")
        })?;
        image.overrides = ic.into();
    }
    if config.image.is_some() {
        crate::images::refuse_zip_settings(
            req.runtime.is_some() || req.handler.is_some(),
            req.layers.as_deref(),
        )?;
    }
    if let Some(rt) = &req.runtime {
        config.runtime = runtime(rt)?;
        config.runtime_name = rt.clone();
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
    if let Some(d) = req.description {
        config.description = d;
    }
    if let Some(arns) = req.layers {
        config.layers = crate::layers::resolve(&state, &caller, arns).await?;
    }
    if let Some(image) = &config.image {
        crate::images::check_process(&state, image).await?;
        let rec = save(&state, &caller, config, Vec::new()).await?;
        return Ok(Json(configuration(&caller.account_id(), &rec)));
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
    Ok(Json(configuration(&caller.account_id(), &rec)))
}

/// `DELETE /2015-03-31/functions/{name}` (DeleteFunction).
/// With a `Qualifier` (a version number), only that version goes, as on Lambda; a version
/// an alias points at cannot be deleted.
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, ApiError> {
    let qualifier = requested_qualifier(&name, q)?;
    let user = function_name(&name)?;
    let Some(q) = qualifier else {
        return crate::functions::delete(State(state), caller, Path(user)).await;
    };
    if q == "$LATEST" {
        return Err(ApiError::invalid(
            "$LATEST version cannot be deleted without deleting the function.",
        ));
    }
    let n: u32 = q.parse().map_err(|_| {
        ApiError::invalid(format!(
            "Qualifier: {q:?} is not a version number; only a version can be deleted on its own"
        ))
    })?;
    let stored = caller.function(&name)?;
    let s = stored.clone();
    let aliases = blocking(&state, move |st| st.list_aliases(&s)).await?;
    if let Some(a) = aliases.iter().find(|a| a.version == n) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!(
                "Unable to delete version because the following aliases reference it: [{}]",
                a.name
            ),
        ));
    }
    let s = stored.clone();
    if !blocking(&state, move |st| st.delete_version(&s, n)).await? {
        return Err(ApiError::not_found(&format!("{user}:{n}")));
    }
    state
        .worker
        .forget_function(&ignition_worker::version_spec_name(&stored, n))
        .await;
    Ok(StatusCode::NO_CONTENT)
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
        assert_eq!(function_name("123456789012:function:echo").unwrap(), "echo");
        assert_eq!(
            qualifier("123456789012:function:echo:live").as_deref(),
            Some("live")
        );
        assert_eq!(qualifier("echo:7").as_deref(), Some("7"));
        assert_eq!(
            qualifier("arn:aws:lambda:us-east-1:123456789012:function:echo:live").as_deref(),
            Some("live")
        );
        assert_eq!(qualifier("echo"), None);
        assert!(
            function_name("a:b:c").is_err(),
            "neither a name nor a partial ARN"
        );
        assert_eq!(hex_to_base64("00ff"), "AP8=");
    }
}
