//! The HTTP API of a node: function management and invocation.
//!
//! Paths:
//! - `GET /`: readiness (answers once the node can run VMs).
//! - `GET /v1/functions`, `GET|PUT|DELETE /v1/functions/{name}`: manage functions.
//! - `POST /v1/functions/{name}/invoke` and Lambda's `POST /2015-03-31/functions/{name}/invocations`:
//!   invoke synchronously; the body is the event, the response body the function's result.
//! - `GET|PUT /v1/functions/{name}/pool`: the function's warm pool, and its provisioned minimum.
//! - `GET /v1/stats`: the worker's counters; `POST /v1/floor`: time one bare VMM start-up.
//! - `GET /v1/functions/{name}/logs?since=SEQ&request_id=ID`: invocation logs.
//! - `GET /v1/functions/{name}/history?minutes=N`: the function's per-minute history on this
//!   node and its last invocations ([`history`]).
//! - `GET /metrics`: Prometheus metrics.
//! - `GET|PUT /v1/tenants/{tenant}/quotas` (operators) and Lambda's GetAccountSettings
//!   ([`quotas`]).
//! - Lambda's function URL configuration under `/2021-10-31/functions/{name}/url[s]`
//!   ([`function_urls`]), and the URLs themselves at `/lambda-url/<url-id>/...` or, with
//!   `--url-domain`, at `<url-id>.DOMAIN` ([`url_requests`]).
//! - EventBridge Scheduler's API under `/schedules` ([`schedules`]), fired by
//!   [`spawn_schedule_firer`].
//! - Lambda's control plane under `/2015-03-31/functions` (module `lambda`), and asynchronous
//!   invocations (`X-Amz-Invocation-Type: Event`, [`events`]) with their failure destination at
//!   `GET /v1/functions/{name}/failed-events`.
//!
//! Errors are JSON `{"errorType": ..., "errorMessage": ...}` with Lambda's error type names, also
//! in the `x-amzn-ErrorType` header, so Lambda clients recognize them.

mod access_log;
mod admin;
pub mod auth;
mod clock;
mod concurrency;
mod destinations;
mod error;
mod event_invoke_config;
pub mod events;
mod function_concurrency;
mod function_urls;
mod functions;
pub mod history;
mod images;
mod invoke;
mod lambda;
mod layers;
mod log_sink;
mod metrics;
mod permits;
mod policies;
mod provisioned;
mod quotas;
mod schedule_firer;
mod schedules;
mod sigv4;
mod tags;
mod url_requests;
mod versions;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use ignition_store::Store;
use ignition_worker::Worker;
use serde_json::json;

pub use clock::now_ms;
pub use concurrency::Concurrency;
pub use error::ApiError;
pub use events::{spawn_dispatcher, EventConfig};
pub use function_urls::{validate_url_domain, UrlSettings};
pub use log_sink::{spawn_log_writer, LogSink};
pub use metrics::Metrics;
pub use permits::spawn_leasing;
pub use provisioned::restore as restore_provisioned;
pub use quotas::Quotas;
pub use schedule_firer::{fire_due, spawn_schedule_firer, GRACE_MS};

/// Largest deploy request: a base64-encoded archive of about 70 MiB (Lambda takes 50 MiB zipped
/// in a request) plus the JSON around it.
pub(crate) const MAX_DEPLOY_BODY: usize = 96 * 1024 * 1024;
/// Largest synchronous invocation payload (Lambda's limit).
pub const MAX_INVOKE_PAYLOAD: usize = 6 * 1024 * 1024;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Functions and bundles.
    pub store: Arc<Store>,
    /// Runs invocations (pools, snapshots, VMs).
    pub worker: Arc<Worker>,
    /// This node's queue and slots, and its cluster: every invocation goes through it.
    pub node: Arc<ignition_cluster::Node>,
    /// This node's id (reported in `x-ignition-node`).
    pub node_id: String,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Retries of asynchronous invocations.
    pub events: EventConfig,
    /// Node-wide and reserved concurrency.
    pub concurrency: Arc<Concurrency>,
    /// Local development mode: no authentication, every request is the default tenant's.
    pub dev_mode: bool,
    /// How long a client may take to send a request's body once its headers are in.
    pub body_timeout: std::time::Duration,
    /// What no function reaches: a rule that could only reach it is refused at deploy.
    pub egress_deny: Arc<ignition_net::EgressDeny>,
    /// Where function URLs live.
    pub urls: UrlSettings,
    /// Tenants' quotas.
    pub quotas: Arc<Quotas>,
    /// Container images, for functions packaged as one.
    pub images: Arc<ignition_oci::Images>,
    /// Invocation logs waiting to be written to the store.
    pub logs: Arc<LogSink>,
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The router with every route, and `pages` beside them: routes that authenticate on their own
/// (the web console's), behind the same access log and function URL routing but not the API's
/// authentication.
pub fn router_with(state: AppState, pages: Router<AppState>) -> Router {
    let invoke = post(invoke::invoke).layer(DefaultBodyLimit::max(MAX_INVOKE_PAYLOAD + 1));
    Router::new()
        .route("/", get(health))
        .route("/v1/functions", get(functions::list))
        .route(
            "/v1/functions/{name}",
            get(functions::get)
                .put(functions::put)
                .delete(functions::delete)
                .layer(DefaultBodyLimit::max(MAX_DEPLOY_BODY)),
        )
        .route("/v1/functions/{name}/invoke", invoke.clone())
        .route(
            "/v1/functions/{name}/pool",
            get(admin::pool_status).put(admin::set_pool),
        )
        .route("/v1/functions/{name}/failed-events", get(events::failed))
        .route("/v1/functions/{name}/logs", get(functions::logs))
        .route("/v1/functions/{name}/history", get(functions::history))
        .route("/v1/stats", get(admin::stats))
        .route("/v1/floor", post(admin::floor))
        .route(
            "/v1/images",
            axum::routing::put(images::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/metrics", get(metrics::render))
        .route("/2015-03-31/functions/{name}/invocations", invoke)
        .route(
            "/2015-03-31/functions",
            post(lambda::create)
                .get(lambda::list)
                .layer(DefaultBodyLimit::max(MAX_DEPLOY_BODY)),
        )
        .route("/2015-03-31/functions/", get(lambda::list))
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            axum::routing::put(function_concurrency::put).delete(function_concurrency::delete),
        )
        .route(
            "/2019-09-30/functions/{name}/concurrency",
            get(function_concurrency::get),
        )
        .route(
            "/2015-03-31/functions/{name}",
            get(lambda::get).delete(lambda::delete),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(lambda::get_configuration)
                .put(lambda::update_configuration)
                .layer(DefaultBodyLimit::max(MAX_DEPLOY_BODY)),
        )
        .route(
            "/2015-03-31/functions/{name}/versions",
            get(versions::list).post(versions::publish),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases",
            get(versions::list_aliases).post(versions::create_alias),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases/{alias}",
            get(versions::get_alias)
                .put(versions::update_alias)
                .delete(versions::delete_alias),
        )
        .route(
            "/2015-03-31/functions/{name}/code",
            axum::routing::put(lambda::update_code).layer(DefaultBodyLimit::max(MAX_DEPLOY_BODY)),
        )
        .route(
            "/2021-10-31/functions/{name}/url",
            post(function_urls::create)
                .get(function_urls::get)
                .put(function_urls::update)
                .delete(function_urls::delete),
        )
        .route(
            "/2021-10-31/functions/{name}/urls",
            get(function_urls::list),
        )
        .route(
            "/v1/tenants/{tenant}/quotas",
            get(quotas::get).put(quotas::put),
        )
        .route(
            "/2016-08-19/account-settings",
            get(quotas::account_settings),
        )
        .route(
            "/2016-08-19/account-settings/",
            get(quotas::account_settings),
        )
        .route(
            "/2017-03-31/tags/{arn}",
            get(tags::list).post(tags::tag).delete(tags::untag),
        )
        .route(
            "/2015-03-31/functions/{name}/policy",
            get(policies::get).post(policies::add),
        )
        .route(
            "/2015-03-31/functions/{name}/policy/{sid}",
            axum::routing::delete(policies::remove),
        )
        .route(
            "/2020-06-30/functions/{name}/code-signing-config",
            get(lambda::code_signing_config),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            get(event_invoke_config::get)
                .put(event_invoke_config::put)
                .post(event_invoke_config::update)
                .delete(event_invoke_config::delete),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config/list",
            get(event_invoke_config::list),
        )
        .route(
            "/2019-09-30/functions/{name}/provisioned-concurrency",
            get(provisioned::get)
                .put(provisioned::put)
                .delete(provisioned::delete),
        )
        .route("/2018-10-31/layers", get(layers::list))
        .route(
            "/2018-10-31/layers/{name}/versions",
            get(layers::list_versions)
                .post(layers::publish)
                .layer(DefaultBodyLimit::max(MAX_DEPLOY_BODY)),
        )
        .route(
            "/2018-10-31/layers/{name}/versions/{version}",
            get(layers::get).delete(layers::delete),
        )
        .route("/schedules", get(schedules::list))
        .route(
            "/schedules/{name}",
            post(schedules::create)
                .get(schedules::get)
                .put(schedules::update)
                .delete(schedules::delete),
        )
        .fallback(unknown_operation)
        .method_not_allowed_fallback(unknown_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .merge(pages)
        // Function URLs are served before authentication: a public one has none.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            url_requests::serve,
        ))
        .layer(axum::middleware::from_fn(access_log::log))
        .with_state(state)
}

/// A path no operation has: Lambda's `UnknownOperationException`, so SDKs say what happened.
async fn unknown_operation(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "UnknownOperationException",
        format!("no operation is {method} {}", uri.path()),
    )
}

/// A path whose operations take other methods.
async fn unknown_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "UnknownOperationException",
        format!("{} has no operation for method {method}", uri.path()),
    )
}

async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "node": state.node_id,
        "image": state.worker.image().id,
    }))
}

/// `?Qualifier=` (a version or an alias), as Lambda's operations take it.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    pub(crate) qualifier: Option<String>,
}

/// A JSON request body, or Lambda's answer to one that is not (the message names the problem).
pub(crate) fn json_body<T>(
    b: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::invalid(format!("bad request body: {}", e.body_text())))
}

/// Runs a store operation off the async threads.
pub(crate) async fn blocking<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, ignition_store::StoreError> + Send + 'static,
{
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
        .map_err(store_error)
}

/// A store error as the client sees it: a quota's own answer, or a server error.
pub(crate) fn store_error(e: ignition_store::StoreError) -> ApiError {
    match e {
        ignition_store::StoreError::QuotaExceeded { quota, limit } => {
            quotas::exceeded(quota, limit)
        }
        // A value the store refuses is the client's to change.
        ignition_store::StoreError::Invalid(message) => ApiError::invalid(message),
        // The shared store is down or failing over: the client may try again; what went
        // wrong (hosts, the server's words) is the operator's, in the log.
        e @ (ignition_store::StoreError::Postgres { .. }
        | ignition_store::StoreError::Unavailable) => {
            tracing::warn!(error = %e, "the shared store failed");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "the cluster's store (PostgreSQL) is unavailable: nothing was changed; try again shortly",
            )
        }
        e => ApiError::internal(e.to_string()),
    }
}
