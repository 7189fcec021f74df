//! Authentication and tenants.
//!
//! Every request but the health check (`GET /`) must be authenticated, unless the server runs
//! in its explicit local development mode (`--dev`): either AWS Signature Version 4 made with
//! an access key the operator created (what AWS SDKs and the AWS CLI send), or
//! `Authorization: Bearer ACCESS_KEY_ID:SECRET` (what Ignition's CLI sends). The key's tenant
//! becomes the request's [`Caller`]; a tenant sees, invokes and changes only its own functions
//! (stored as `TENANT.NAME`; the development mode's tenant is the default one, whose functions
//! keep their bare names).
//!
//! Signatures are checked by [`crate::sigv4`], which binds the body and every header that
//! changes what a request does.
//!
//! The web console's pages call the same API from the browser with neither: a session cookie
//! ([`SESSION_COOKIE`], HttpOnly, `SameSite=Strict`) opened by signing in with a key, and, on
//! every request that changes state, the session's CSRF token in [`CSRF_HEADER`] from the
//! node's own origin.

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{blocking, ApiError, AppState};

use ignition_types::FunctionId;
pub use ignition_types::DEFAULT_TENANT;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant (for an operator's key, [`ignition_store::OPERATOR`], which owns nothing).
    pub tenant: String,
    /// Whether the caller may use node-wide endpoints (metrics, stats, the VMM floor probe).
    pub operator: bool,
}

impl Caller {
    /// The caller a key makes.
    pub fn of(key: &ignition_store::AccessKey) -> Self {
        Self {
            tenant: key.tenant.clone(),
            operator: key.is_operator(),
        }
    }

    /// The caller's account id (every ARN it sees carries it).
    pub(crate) fn account_id(&self) -> String {
        ignition_types::account_id(&self.tenant)
    }

    /// The stored name of the caller's function `name` (a name, a partial ARN or an ARN). An
    /// ARN naming another account's function is refused: another tenant's functions are not
    /// the caller's to see or change.
    pub fn function(&self, name_or_arn: &str) -> Result<String, ApiError> {
        let name = crate::lambda::function_name(name_or_arn)?;
        self.in_own_account(name_or_arn)?;
        Ok(FunctionId::new(&self.tenant, &name).stored())
    }

    /// Refuses `resource` (a name, a partial ARN or an ARN) when it names another account.
    fn in_own_account(&self, resource: &str) -> Result<(), ApiError> {
        match crate::lambda::account_of(resource) {
            Some(account) if account != self.account_id() => Err(denied(
                "AccessDeniedException",
                format!(
                    "User: arn:aws:iam::{}:user/ignition is not authorized to perform this action on resource: {resource} (account {account} is not yours)",
                    self.account_id()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a request whose path names a function (`.../functions/{name}/...`) or a tagged
    /// resource (`.../tags/{arn}`) by an ARN of another account: every handler then meets only
    /// the caller's own account, whichever way it turns the ARN into a name.
    fn path_in_own_account(&self, path: &str) -> Result<(), ApiError> {
        let path = crate::sigv4::percent_decode(path);
        let mut segments = path.split('/');
        while let Some(s) = segments.next() {
            if s == "functions" || s == "tags" {
                if let Some(resource) = segments.next() {
                    self.in_own_account(resource)?;
                }
            }
        }
        Ok(())
    }

    /// The caller's name for the stored function `stored`, or `None` when it is not theirs.
    pub fn owns<'a>(&self, stored: &'a str) -> Option<&'a str> {
        let id = FunctionId::from_stored(stored);
        (id.tenant == self.tenant).then(|| &stored[stored.len() - id.name.len()..])
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            denied(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        })
    }
}

/// A caller with an operator's key (`ignition key create --operator`): what node-wide
/// endpoints take, so that a tenant's key gets 403 `AccessDeniedException` there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operator;

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.operator {
            Ok(Self)
        } else {
            Err(denied(
                "AccessDeniedException",
                "this endpoint is the operator's: it needs a key made by `ignition key create --operator`",
            ))
        }
    }
}

fn denied(kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, kind, message)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Who a request claims to be, found from its headers alone: a bearer token is checked at
/// once; a signature needs the body, which is read only after the key is known to exist and the
/// signature's time is acceptable (strangers cannot make the server buffer bodies).
pub(crate) enum Identity {
    Checked(Caller),
    Signed(ignition_store::AccessKey),
}

pub(crate) async fn identify(state: &AppState, parts: &Parts) -> Result<Identity, ApiError> {
    if parts.headers.get("authorization").is_none() {
        if let Some(token) = session_token(&parts.headers) {
            return session_request(state, parts, token.to_owned())
                .await
                .map(Identity::Checked);
        }
    }
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            denied(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        })?;
    let lookup = |id: String| async move {
        blocking(state, move |s| s.key(&id)).await?.ok_or_else(|| {
            denied(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        })
    };
    if let Some(token) = auth.strip_prefix("Bearer ") {
        let (id, secret) = token.trim().split_once(':').ok_or_else(|| {
            denied(
                "UnrecognizedClientException",
                "a bearer token is ACCESS_KEY_ID:SECRET",
            )
        })?;
        let key = lookup(id.to_owned()).await?;
        if !crate::sigv4::constant_time_eq(key.secret_access_key.as_bytes(), secret.as_bytes()) {
            return Err(denied(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        }
        return Ok(Identity::Checked(Caller::of(&key)));
    }
    let h = crate::sigv4::header_of(parts).map_err(sig_denied)?;
    crate::sigv4::check_headers(parts, &h, now_unix()).map_err(sig_denied)?;
    Ok(Identity::Signed(lookup(h.access_key_id.to_owned()).await?))
}

/// The cookie that carries a web console session (see [`session`]).
pub const SESSION_COOKIE: &str = "ignition_session";
/// The header in which a console session's state-changing request echoes its CSRF token.
pub const CSRF_HEADER: &str = "x-ignition-csrf";

/// The console session cookie's value in `headers`, if there is one.
pub fn session_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The live console session `token` opens, with its caller; `None` when it has expired, was
/// signed out, or its key was deleted.
pub async fn session(
    state: &AppState,
    token: String,
) -> Result<Option<(Caller, ignition_store::Session)>, ApiError> {
    let found = blocking(state, move |s| s.session(&token)).await?;
    Ok(found.map(|session| (Caller::of(&session.key), session)))
}

/// Whether `secret` is `key`'s secret (compared in constant time).
pub fn secret_matches(key: &ignition_store::AccessKey, secret: &str) -> bool {
    crate::sigv4::constant_time_eq(key.secret_access_key.as_bytes(), secret.as_bytes())
}

/// Whether `given` is `session`'s CSRF token (compared in constant time).
pub fn csrf_matches(session: &ignition_store::Session, given: &[u8]) -> bool {
    crate::sigv4::constant_time_eq(given, session.csrf.as_bytes())
}

/// Whether a request may change state: a method other than GET, HEAD and OPTIONS.
pub fn changes_state(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a browser's request comes from this node's own pages: its `Origin`, when it sends
/// one, is the node it is sent to. Browsers send `Origin` on every cross-site request that
/// changes state, so a page elsewhere cannot pass for one of the console's.
pub fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    });
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

/// A request authenticated by a console session: the session must be live and, for a request
/// that changes state, come from the node's own origin with the session's CSRF token.
async fn session_request(
    state: &AppState,
    parts: &Parts,
    token: String,
) -> Result<Caller, ApiError> {
    let Some((caller, session)) = session(state, token).await? else {
        return Err(denied(
            "UnrecognizedClientException",
            "the console session has expired or was signed out; sign in again",
        ));
    };
    if changes_state(&parts.method) {
        let echoed = parts
            .headers
            .get(CSRF_HEADER)
            .map(axum::http::HeaderValue::as_bytes)
            .unwrap_or_default();
        if !same_origin(&parts.headers) || !csrf_matches(&session, echoed) {
            return Err(denied(
                "AccessDeniedException",
                format!("a console session's request that changes state must come from the console with its {CSRF_HEADER} token"),
            ));
        }
    }
    Ok(caller)
}

fn sig_denied(e: crate::sigv4::SigV4Error) -> ApiError {
    denied(e.error_type(), e.to_string())
}

/// Checks the whole signature of a request [`identify`] found signed with `key`.
pub(crate) fn verify(
    parts: &Parts,
    body: &[u8],
    key: &ignition_store::AccessKey,
) -> Result<Caller, ApiError> {
    crate::sigv4::verify(parts, body, &key.secret_access_key, now_unix()).map_err(sig_denied)?;
    Ok(Caller::of(key))
}

/// The middleware: attaches the [`Caller`] or answers 403. It is also where a request's body
/// is read, once, and only after the caller is known (a stranger makes the node buffer
/// nothing): at most the route's limit ([`body_limit`]) and within the node's body timeout,
/// so that a client trickling its body cannot hold memory or a connection for long.
pub(crate) async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let open = parts.method == axum::http::Method::GET && parts.uri.path() == "/";
    // An image archive (up to --max-image-mib) is streamed to disk by its handler, not read
    // here, unless a signature needs its bytes.
    let streamed = parts.method == axum::http::Method::PUT && parts.uri.path() == "/v1/images";
    let (caller, bytes) = if state.dev_mode || open {
        // Development mode has no keys: its one caller is also its operator.
        let caller = Caller {
            tenant: DEFAULT_TENANT.to_owned(),
            operator: state.dev_mode,
        };
        if streamed {
            return pass_through(parts, body, caller, next).await;
        }
        match read_body(&parts, body, state.body_timeout).await {
            Ok(bytes) => (caller, bytes),
            Err(e) => return e.into_response(),
        }
    } else {
        match identify(&state, &parts).await {
            Err(e) => {
                discard(body, state.body_timeout);
                return e.into_response();
            }
            Ok(Identity::Checked(caller)) if streamed => {
                return pass_through(parts, body, caller, next).await;
            }
            Ok(Identity::Checked(caller)) => {
                match read_body(&parts, body, state.body_timeout).await {
                    Ok(bytes) => (caller, bytes),
                    Err(e) => return e.into_response(),
                }
            }
            Ok(Identity::Signed(key)) => {
                let bytes = match read_body(&parts, body, state.body_timeout).await {
                    Ok(bytes) => bytes,
                    Err(e) => return e.into_response(),
                };
                match verify(&parts, &bytes, &key) {
                    Ok(caller) => (caller, bytes),
                    Err(e) => return e.into_response(),
                }
            }
        }
    };
    // An invocation may name another account's function: its policy decides, in the handler.
    let invoke = parts.method == axum::http::Method::POST
        && parts.uri.path().starts_with("/2015-03-31/functions/")
        && parts.uri.path().ends_with("/invocations");
    if !invoke {
        if let Err(e) = caller.path_in_own_account(parts.uri.path()) {
            return e.into_response();
        }
    }
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    // For the access log, which runs outside this layer (the open health check has no caller).
    if state.dev_mode || !open {
        resp.extensions_mut().insert(caller);
    }
    resp
}

/// Runs a route that reads its own body, for `caller`.
async fn pass_through(
    parts: axum::http::request::Parts,
    body: Body,
    caller: Caller,
    next: Next,
) -> Response {
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(caller);
    resp
}

/// The largest body a route takes: an invocation's event (Lambda's 6 MiB, one byte more so
/// that the invoke handler answers an oversized one in Lambda's words), a deploy's archive, or
/// a small JSON document for everything else.
pub(crate) fn body_limit(method: &axum::http::Method, path: &str) -> usize {
    use axum::http::Method;
    let invoke = path.ends_with("/invocations") || path.ends_with("/invoke");
    let deploy = (*method == Method::PUT
        && (path.starts_with("/v1/functions/") && path.matches('/').count() == 3
            || path.ends_with("/code")
            || path.ends_with("/configuration")))
        || (*method == Method::POST
            && (path.trim_end_matches('/') == "/2015-03-31/functions"
                || path.starts_with("/2018-10-31/layers/") && path.ends_with("/versions")))
        || (*method == Method::PUT && path == "/v1/images");
    if invoke {
        crate::MAX_INVOKE_PAYLOAD + 1
    } else if deploy {
        crate::MAX_DEPLOY_BODY
    } else {
        SMALL_BODY
    }
}

/// The most of a refused request's body [`discard`] reads.
const MAX_DISCARD: usize = 128 * 1024 * 1024;

/// Reads and drops, in the background, the body of a request answered without it (refused
/// before it was read), at most [`MAX_DISCARD`] bytes within `timeout`. Nothing is kept; the
/// point is the client: a connection closed while it still sends makes its kernel reset the
/// connection, and the client sees a broken pipe instead of the refusal.
pub(crate) fn discard(body: Body, timeout: std::time::Duration) {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0usize;
        let _ = tokio::time::timeout(timeout, async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > MAX_DISCARD {
                    break;
                }
            }
        })
        .await;
    });
}

/// Bodies of routes that take neither code nor events.
const SMALL_BODY: usize = 1024 * 1024;

async fn read_body(
    parts: &Parts,
    body: Body,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, ApiError> {
    read_body_within(
        parts,
        body,
        body_limit(&parts.method, parts.uri.path()),
        timeout,
    )
    .await
}

/// Reads a request's body: at most `limit` bytes (413 past it, a declared length refused
/// before a byte is read), within `timeout` (408 past it).
pub(crate) async fn read_body_within(
    parts: &Parts,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        let message = if limit == crate::MAX_INVOKE_PAYLOAD + 1 {
            format!(
                "Request must be smaller than {} bytes for the InvokeFunction operation",
                crate::MAX_INVOKE_PAYLOAD
            )
        } else {
            format!("the request body is over this operation's limit of {limit} bytes")
        };
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            message,
        )
    };
    // A declared length over the limit is refused before a byte is read.
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        discard(body, timeout);
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            format!("the request body did not arrive within {timeout:?}"),
        )),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_see_only_their_functions() {
        let acme = Caller {
            tenant: "acme".into(),
            operator: false,
        };
        let dev = Caller {
            tenant: DEFAULT_TENANT.into(),
            operator: true,
        };
        assert_eq!(acme.function("hello").unwrap(), "acme.hello");
        assert_eq!(dev.function("hello").unwrap(), "hello");
        assert_eq!(acme.owns("acme.hello"), Some("hello"));
        assert_eq!(acme.owns("other.hello"), None);
        assert_eq!(acme.owns("hello"), None);
        assert_eq!(dev.owns("hello"), Some("hello"));
        assert_eq!(dev.owns("acme.hello"), None);
        assert!(
            acme.function("acme.hello").is_err(),
            "a name cannot reach into a namespace"
        );
    }
}
