//! Functions packaged as container images: what `ImageUri` and `ImageConfig` become, and the
//! upload of an image archive for hosts without a registry (`PUT /v1/images`, which answers
//! the `ImageUri` to deploy it by: `ignition-archive:sha256:...`).
//!
//! An image is resolved when a function is created or its code updated, and the function keeps
//! the digest it resolved to: a tag that moves later changes nothing until the next
//! UpdateFunctionCode, as on Lambda.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ignition_oci::ImageError;
use ignition_types::{FunctionImage, ImageOverrides, ARCHIVE_URI_PREFIX};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// Lambda's `ImageConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ImageConfig {
    entry_point: Option<Vec<String>>,
    command: Option<Vec<String>>,
    working_directory: Option<String>,
}

impl From<ImageConfig> for ImageOverrides {
    fn from(c: ImageConfig) -> Self {
        // Lambda treats an empty list as no override.
        Self {
            entry_point: c.entry_point.filter(|v| !v.is_empty()),
            command: c.command.filter(|v| !v.is_empty()),
            working_directory: c.working_directory.filter(|w| !w.is_empty()),
        }
    }
}

/// Refuses what only a bundle's function has: a runtime or handler, layers.
pub(crate) fn refuse_zip_settings(
    runtime_or_handler: bool,
    layers: Option<&[String]>,
) -> Result<(), ApiError> {
    if runtime_or_handler {
        return Err(ApiError::invalid(
            "Runtime and Handler are not used by functions of PackageType Image",
        ));
    }
    if layers.is_some_and(|l| !l.is_empty()) {
        return Err(ApiError::invalid(
            "Layers are not supported for functions of PackageType Image",
        ));
    }
    Ok(())
}

/// A function packaged as `image`: no runtime, handler or layers (the image is all of them),
/// no reuse and no egress until they are set.
pub(crate) fn image_function(
    name: String,
    image: FunctionImage,
    memory_mib: u32,
    timeout_s: u32,
    env: std::collections::BTreeMap<String, String>,
    description: String,
) -> ignition_store::FunctionConfig {
    ignition_store::FunctionConfig {
        name,
        runtime: ignition_store::Runtime::Provided,
        runtime_name: String::new(),
        handler: String::new(),
        memory_mib,
        timeout_s,
        env,
        reuse: false,
        egress: Vec::new(),
        description,
        layers: Vec::new(),
        image: Some(image),
    }
}

/// Lambda's error for an image that cannot be had; the node's own failures are its own.
fn api_error(uri: &str, e: ImageError) -> ApiError {
    match e {
        ImageError::Unreachable { .. } | ImageError::Io { .. } | ImageError::Mkfs(_) => {
            ApiError::internal(format!("ImageUri {uri}: {e}"))
        }
        e => ApiError::invalid(format!("ImageUri {uri}: {e}")),
    }
}

/// The image `uri` names now, fetched and flattened into the node's cache unless it is there,
/// with the function's `overrides`; refused when the process they make cannot be started.
pub(crate) async fn resolve(
    state: &AppState,
    uri: &str,
    overrides: ImageOverrides,
) -> Result<FunctionImage, ApiError> {
    let image = obtain(state, uri, overrides).await?;
    check_process(state, &image).await?;
    Ok(image)
}

async fn obtain(
    state: &AppState,
    uri: &str,
    overrides: ImageOverrides,
) -> Result<FunctionImage, ApiError> {
    if let Some(digest) = uri.strip_prefix(ARCHIVE_URI_PREFIX) {
        let image = state.images.cache().get(digest).ok_or_else(|| {
            ApiError::invalid(format!(
                "ImageUri {uri}: no uploaded archive has this digest on this node (upload it with PUT /v1/images, or `ignition fn deploy --image-archive`)"
            ))
        })?;
        return Ok(FunctionImage {
            uri: uri.to_owned(),
            resolved_uri: String::new(),
            digest: image.digest,
            run: image.config,
            overrides,
        });
    }
    let got = state
        .images
        .pull(uri)
        .await
        .map_err(|e| api_error(uri, e))?;
    Ok(FunctionImage {
        uri: uri.to_owned(),
        resolved_uri: got.pinned.unwrap_or_default(),
        digest: got.image.digest,
        run: got.image.config,
        overrides,
    })
}

/// Refuses `image` when its process cannot be started: its program is not an executable file
/// of the image. (An image no longer in the node's cache is not checked; it is fetched again
/// when it is needed, and a process that cannot start is then the function's init error.)
pub(crate) async fn check_process(state: &AppState, image: &FunctionImage) -> Result<(), ApiError> {
    let Some(cached) = state.images.cache().get(&image.digest) else {
        return Ok(());
    };
    let process = image.process();
    tokio::task::spawn_blocking(move || ignition_oci::entry_point::check(&cached.path, &process))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| api_error(&image.uri, e))
}

/// `Code` of GetFunction for an image function.
pub(crate) fn code_location(image: &FunctionImage) -> Value {
    let resolved = if image.resolved_uri.is_empty() {
        image.uri.clone()
    } else {
        image.resolved_uri.clone()
    };
    json!({ "RepositoryType": "ECR", "ImageUri": image.uri, "ResolvedImageUri": resolved })
}

/// `ImageConfigResponse` of a FunctionConfiguration, when the function overrides anything.
pub(crate) fn config_response(image: &FunctionImage) -> Option<Value> {
    let o = &image.overrides;
    if o.is_empty() {
        return None;
    }
    let mut c = serde_json::Map::new();
    if let Some(e) = &o.entry_point {
        c.insert("EntryPoint".into(), json!(e));
    }
    if let Some(cmd) = &o.command {
        c.insert("Command".into(), json!(cmd));
    }
    if let Some(w) = &o.working_directory {
        c.insert("WorkingDirectory".into(), json!(w));
    }
    Some(json!({ "ImageConfig": c }))
}

/// How long an archive's upload may take at least (the node's body timeout when longer).
const UPLOAD_TIME: std::time::Duration = std::time::Duration::from_secs(600);

/// A scratch directory of the image cache, removed when dropped: an upload cut short leaves
/// nothing.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `PUT /v1/images`: an image archive (an OCI image layout in a tar, or `docker save`
/// output) as the body, read into the node's image cache; answers the `ImageUri` that deploys
/// it. The body is streamed to disk, at most `--max-image-mib`.
pub(crate) async fn upload(
    State(state): State<AppState>,
    _caller: Caller,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let limit = state.images.max_image_bytes();
    let scratch = Scratch(
        state
            .images
            .cache()
            .scratch()
            .map_err(|e| ApiError::internal(e.to_string()))?,
    );
    let path = scratch.0.join("upload.tar");
    let mut out = tokio::fs::File::create(&path)
        .await
        .map_err(|e| ApiError::internal(format!("the upload's file: {e}")))?;
    // A large archive takes a while; one trickled in forever does not hold the connection.
    let deadline = tokio::time::Instant::now() + state.body_timeout.max(UPLOAD_TIME);
    let mut body = body;
    let mut total = 0u64;
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                "the archive did not arrive in time",
            ));
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| ApiError::invalid(format!("reading the archive: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                format!(
                    "the archive is larger than the node's limit of {} MiB",
                    limit >> 20
                ),
            ));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("the upload's file: {e}")))?;
    }
    out.flush()
        .await
        .map_err(|e| ApiError::internal(format!("the upload's file: {e}")))?;
    drop(out);
    let images = std::sync::Arc::clone(&state.images);
    let got = tokio::task::spawn_blocking(move || images.from_archive(&path, "the archive"))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| api_error("(archive)", e))?;
    drop(scratch);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "ImageUri": format!("{ARCHIVE_URI_PREFIX}{}", got.image.digest),
            "Digest": got.image.digest,
            "Bytes": got.image.bytes,
        })),
    ))
}
