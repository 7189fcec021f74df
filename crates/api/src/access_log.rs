//! One access-log line per API request (target `ignition::access`): method, path, status,
//! duration, tenant and request id. Every response carries an `x-amzn-RequestId`, as Lambda's
//! do; a handler that chose one (an invocation's) keeps it.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::Caller;

const REQUEST_ID: &str = "x-amzn-RequestId";

/// The middleware; outermost, so that refusals by authentication are logged too.
pub(crate) async fn log(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key(REQUEST_ID) {
        let id = uuid::Uuid::new_v4().to_string();
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
    }
    let request_id = resp
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let tenant = resp
        .extensions()
        .get::<Caller>()
        .map_or("-", |c| c.tenant.as_str());
    tracing::info!(
        target: "ignition::access",
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        tenant,
        request_id,
        "request"
    );
    resp
}
