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
    runtime: String,
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
    code: String,
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
    let runtime = Runtime::parse(&req.runtime).map_err(|e| ApiError::invalid(e.to_string()))?;
    let egress = parse_egress(&req.egress, &state.egress_deny)?;
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
    };
    let archive = base64::engine::general_purpose::STANDARD
        .decode(req.code.as_bytes())
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
    let (bundle, _expanding) = expand(archive, "invalid code").await?;
    check_handler(&config, &bundle)?;
    crate::layers::check_total_size(bundle.tar().len() as u64, &config.layers)?;
    let existed = {
        let name = config.name.clone();
        blocking(state, move |s| s.get_function(&name))
            .await?
            .is_some()
    };
    let name = config.name.clone();
    let quotas = state.quotas.of_function(&config.name);
    let record = blocking(state, move |s| {
        s.put_function_within(&config, bundle.tar(), &quotas)
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
