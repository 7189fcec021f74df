//! Function management: create or update, get, list, delete.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use ignition_bundle::{Bundle, Limits};
use ignition_store::{FunctionConfig, FunctionRecord, Runtime};
use serde::Deserialize;

use crate::auth::Caller;
use crate::{blocking, ApiError, AppState};

/// The caller's functions, under the caller's names.
pub(crate) async fn own_functions(
    state: &AppState,
    caller: &Caller,
) -> Result<Vec<FunctionRecord>, ApiError> {
    let all = blocking(state, |s| s.list_functions()).await?;
    Ok(all
        .into_iter()
        .filter_map(|mut r| {
            let name = caller.owns(&r.config.name)?.to_owned();
            r.config.name = name;
            Some(r)
        })
        .collect())
}

/// The body of `PUT /v1/functions/{name}`. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct DeployRequest {
    /// With `handler` and `code`, for a function whose code is a bundle.
    #[serde(default)]
    runtime: String,
    #[serde(default)]
    handler: String,
    #[serde(default = "default_memory")]
    memory_mib: u32,
    #[serde(default = "default_timeout")]
    timeout_s: u32,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    reuse: bool,
    /// Egress rules, `CIDR:PORT[-PORT][/tcp|/udp]`; none: no egress at all.
    #[serde(default)]
    egress: Vec<String>,
    /// The code: a zip or tar.gz archive, base64-encoded.
    #[serde(default)]
    code: Option<String>,
    /// Instead of `runtime`, `handler` and `code`: a container image (a registry reference,
    /// or the `ImageUri` that `PUT /v1/images` answered for an archive).
    #[serde(default)]
    image: Option<String>,
    /// With `image`: Lambda's `ImageConfig` (`EntryPoint`, `Command`, `WorkingDirectory`).
    #[serde(default)]
    image_config: Option<crate::images::ImageConfig>,
    /// Free text, at most 256 characters.
    #[serde(default)]
    description: String,
    /// Layer version ARNs, in order; absent: a function that exists keeps its layers.
    layers: Option<Vec<String>>,
}

/// More rules than this is a policy that should be a network, not a list.
const MAX_EGRESS_RULES: usize = 64;

/// Parses and canonicalizes egress rules; the error names the field and the bad rule.
fn parse_egress(
    rules: &[String],
    deny: &ignition_net::EgressDeny,
) -> Result<Vec<ignition_net::EgressRule>, ApiError> {
    if rules.len() > MAX_EGRESS_RULES {
        return Err(ApiError::invalid(format!(
            "egress: {} rules; at most {MAX_EGRESS_RULES} are allowed",
            rules.len()
        )));
    }
    let mut parsed =
        ignition_net::parse_rules(rules).map_err(|e| ApiError::invalid(format!("egress: {e}")))?;
    parsed.dedup();
    if let Some(why) = parsed.iter().find_map(|r| deny.refusal(r)) {
        return Err(ApiError::invalid(format!("egress: {why}")));
    }
    Ok(parsed)
}

fn default_memory() -> u32 {
    128
}

fn default_timeout() -> u32 {
    3
}

/// Checks that the handler the configuration names is in the bundle.
pub(crate) fn check_handler(config: &FunctionConfig, bundle: &Bundle) -> Result<(), ApiError> {
    match config.runtime {
        Runtime::Python3 | Runtime::Nodejs => {
            let files = config.handler_files();
            if !files.iter().any(|f| bundle.contains(f)) {
                return Err(ApiError::invalid(format!(
                    "handler {:?} needs {} in the code bundle, which does not have it",
                    config.handler,
                    files.join(" or ")
                )));
            }
        }
        Runtime::Provided => {
            // As on Lambda, a custom runtime may come in a layer (`/opt/bootstrap`).
            if !bundle.contains("bootstrap") {
                if !config.layers.is_empty() {
                    return Ok(());
                }
                return Err(ApiError::invalid(
                    "runtime provided needs an executable named bootstrap at the top of the code bundle (or in one of its layers)",
                ));
            }
            if !bundle.is_executable("bootstrap") {
                return Err(ApiError::invalid(
                    "bootstrap in the code bundle is not executable",
                ));
            }
        }
    }
    Ok(())
}

pub(crate) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let stored = caller.function(&name)?;
    let Json(req) =
        body.map_err(|e| ApiError::invalid(format!("bad deploy request: {}", e.body_text())))?;
    let egress = parse_egress(&req.egress, &state.egress_deny)?;
    if let Some(uri) = &req.image {
        if req.code.is_some() || !req.runtime.is_empty() || !req.handler.is_empty() {
            return Err(ApiError::invalid(
                "image: a function is either an image or code with a runtime and handler",
            ));
        }
        if req.layers.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(ApiError::invalid("layers: an image function has no layers"));
        }
        let overrides = req.image_config.unwrap_or_default().into();
        let image = crate::images::resolve(&state, uri, overrides).await?;
        let config = FunctionConfig {
            reuse: req.reuse,
            egress,
            ..crate::images::image_function(
                stored,
                image,
                req.memory_mib,
                req.timeout_s,
                req.env,
                req.description,
            )
        };
        let (mut record, existed) = store_function(&state, config, Vec::new()).await?;
        record.config.name = name;
        let status = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        return Ok((status, Json(record)));
    }
    if req.image_config.is_some() {
        return Err(ApiError::invalid("image_config: only with image"));
    }
    // Without an image, the three fields a bundle's function needs, each named when missing.
    for (field, missing) in [
        ("runtime", req.runtime.is_empty()),
        ("handler", req.handler.is_empty()),
        ("code", req.code.is_none()),
    ] {
        if missing {
            return Err(ApiError::invalid(format!(
                "bad deploy request: {field} is required (or image, for a container image)"
            )));
        }
    }
    let runtime = Runtime::parse(&req.runtime).map_err(|e| ApiError::invalid(e.to_string()))?;
    let code = req.code.unwrap_or_default();
    let layers = match req.layers {
        Some(arns) => crate::layers::resolve(&state, &caller, arns).await?,
        None => {
            let s = stored.clone();
            blocking(&state, move |st| st.get_function(&s))
                .await?
                .map(|r| r.config.layers)
                .unwrap_or_default()
        }
    };
    let config = FunctionConfig {
        name: stored,
        runtime,
        runtime_name: req.runtime.clone(),
        handler: req.handler,
        memory_mib: req.memory_mib,
        timeout_s: req.timeout_s,
        env: req.env,
        reuse: req.reuse,
        egress,
        description: req.description,
        layers,
        image: None,
    };
    let archive = base64::engine::general_purpose::STANDARD
        .decode(code.as_bytes())
        .map_err(|e| ApiError::invalid(format!("invalid code: not base64 ({e})")))?;
    let (mut record, existed) = store_function(&state, config, archive).await?;
    record.config.name = name;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(record)))
}

/// Bundles being expanded and stored at once on this node: each holds up to its expanded size
/// (250 MiB) in memory until it is stored, so a tenant's burst of deploys waits its turn
/// instead of taking the node's memory.
static EXPANDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Checks and normalizes a code archive (zip or tar.gz) into a canonical bundle, within the
/// node's limits, holding one of [`EXPANDING`]'s permits (kept until the bundle is stored);
/// a refusal's message starts with `what`.
pub(crate) async fn expand(
    archive: Vec<u8>,
    what: &'static str,
) -> Result<(Bundle, tokio::sync::SemaphorePermit<'static>), ApiError> {
    let permit = EXPANDING
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("expanding code: {e}")))?;
    let bundle = tokio::task::spawn_blocking(move || {
        ignition_bundle::from_archive(&archive, Limits::default())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::invalid(format!("{what}: {e}")))?;
    Ok((bundle, permit))
}

/// A tar with nothing in it: its end-of-archive blocks.
const EMPTY_TAR: [u8; 1024] = [0; 1024];

/// Validates `config`, checks and normalizes the code `archive` (zip or tar.gz), stores both,
/// and drops what was prepared for the old version. Returns the record and whether the function
/// existed before.
pub(crate) async fn store_function(
    state: &AppState,
    config: FunctionConfig,
    archive: Vec<u8>,
) -> Result<(FunctionRecord, bool), ApiError> {
    config
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    // An image function's code is its image, kept in the node's image cache; its bundle is
    // the empty tar.
    let (bundle, _expanding) = if config.image.is_some() {
        (None, None)
    } else {
        let (bundle, expanding) = expand(archive, "invalid code").await?;
        check_handler(&config, &bundle)?;
        crate::layers::check_total_size(bundle.tar().len() as u64, &config.layers)?;
        (Some(bundle), Some(expanding))
    };
    let existed = {
        let name = config.name.clone();
        blocking(state, move |s| s.get_function(&name))
            .await?
            .is_some()
    };
    let name = config.name.clone();
    let quotas = state.quotas.of_function(&config.name);
    let record = blocking(state, move |s| {
        let tar = bundle.as_ref().map_or(&EMPTY_TAR[..], Bundle::tar);
        s.put_function_within(&config, tar, &quotas)
    })
    .await?;
    // Snapshots, warm slots and reused VMs hold the old code.
    state.worker.invalidate(&name).await;
    Ok((record, existed))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<FunctionRecord>, ApiError> {
    let n = caller.function(&name)?;
    let mut record = blocking(&state, move |s| s.get_function(&n))
        .await?
        .ok_or_else(|| ApiError::not_found(&name))?;
    record.config.name = name;
    Ok(Json(record))
}

/// `GET /v1/functions`: the caller's functions, each with its `$LATEST` function URL (`url`,
/// null when it has none).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let functions = own_functions(&state, &caller).await?;
    let stored = functions
        .iter()
        .map(|f| ignition_types::FunctionId::new(&caller.tenant, &f.config.name).stored())
        .collect();
    let host = crate::function_urls::request_host(&headers, &uri).unwrap_or("localhost");
    let urls = crate::function_urls::latest_addresses(&state, host, stored).await?;
    let listed: Vec<serde_json::Value> = functions
        .iter()
        .zip(urls)
        .map(|(f, url)| {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            v["url"] = url.into();
            v
        })
        .collect();
    Ok(Json(serde_json::json!({ "functions": listed })))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let stored = caller.function(&name)?;
    let n = stored.clone();
    if blocking(&state, move |s| s.delete_function(&n)).await? {
        let name = stored;
        state.worker.forget_function(&name).await;
        let n = name.clone();
        blocking(&state, move |s| {
            s.delete_logs(&n)?;
            s.set_reserved_concurrency(&n, None)
        })
        .await?;
        let _ = state.concurrency.set(&name, None);
        state.metrics.history.forget(&name);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(&name))
    }
}

/// Query of `GET /v1/functions/{name}/logs`.
#[derive(Debug, Deserialize)]
pub(crate) struct LogQuery {
    /// Entries after this sequence number (to follow).
    #[serde(default)]
    since: i64,
    /// Only this invocation's.
    request_id: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

/// `GET /v1/functions/{name}/logs`: the function's invocation logs, oldest first.
pub(crate) async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stored = caller.function(&name)?;
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let n = stored;
    let entries = blocking(&state, move |s| {
        s.logs(&n, q.since, q.request_id.as_deref(), limit)
    })
    .await?;
    let next = entries.last().map_or(q.since, |e| e.seq);
    Ok(Json(
        serde_json::json!({ "function": name, "logs": entries, "next": next }),
    ))
}

/// Query of `GET /v1/functions/{name}/history`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    /// Minutes to look back (default 60, at most a day).
    #[serde(default = "default_history_minutes")]
    minutes: u64,
}

fn default_history_minutes() -> u64 {
    60
}

/// `GET /v1/functions/{name}/history`: the function's minutes on this node (invocations,
/// errors, throttles, P50/P99 duration, cold and warm medians) and its last invocations.
pub(crate) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stored = caller.function(&name)?;
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))?;
    if q.minutes == 0 || q.minutes > crate::history::MINUTES {
        return Err(ApiError::invalid(format!(
            "minutes must be 1 to {}",
            crate::history::MINUTES
        )));
    }
    let s = stored.clone();
    if blocking(&state, move |st| st.get_function(&s))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(&name));
    }
    let now = crate::history::now_ms();
    let since = (now / 60_000).saturating_sub(q.minutes - 1) * 60_000;
    let past = state.metrics.history.past(&stored, since);
    Ok(Json(serde_json::json!({
        "function": name,
        "node": state.node_id,
        "minutes": past.minutes,
        "recent": past.recent,
        "last_invoked_ms": past.last_invoked_ms,
    })))
}
