//! Requests to function URLs: plain HTTP in, Lambda's payload format 2.0 event to the
//! function, its answer back as HTTP, as Lambda function URLs do. A middleware outside
//! authentication, since a URL with `AuthType: NONE` is public; one with `AWS_IAM` needs a
//! request signed (or a bearer token) by a key of the function's tenant. CORS preflights are
//! answered here from the URL's `Cors`, without invoking anything.
//!
//! Everything the function returns is hostile: its status, header names and values are checked
//! before they reach the client, and framing headers (`content-length`, `transfer-encoding`, ...)
//! are the node's alone. Refusals are `{"Message": ...}` with `x-amzn-ErrorType`, as Lambda's.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ignition_proto::Outcome;
use ignition_store::{Cors, FunctionUrl, UrlAuth};
use ignition_types::FunctionId;
use ignition_worker::{ExecError, StartMode};
use serde_json::{json, Map, Value};

use crate::auth::{discard, identify, read_body_within, verify, Identity};
use crate::clock::{common_log_time, now_ms};
use crate::function_urls::request_host;
use crate::invoke::{run_sync, Ran};
use crate::{blocking, ApiError, AppState, MAX_INVOKE_PAYLOAD};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The middleware: serves requests for function URLs, passes every other one on.
pub(crate) async fn serve(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = request_host(req.headers(), req.uri()).map(str::to_owned);
    let path = req.uri().path().to_owned();
    let Some((id, raw_path)) = state
        .urls
        .route(host.as_deref(), &path)
        .map(|(id, p)| (id.to_owned(), p.to_owned()))
    else {
        return next.run(req).await;
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = match handle(&state, &id, &raw_path, host.as_deref(), req, &request_id).await {
        Ok(r) => r,
        Err(e) => refusal(e.status, e.error_type, &e.message),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

/// A URL's refusal, in Lambda's shape.
fn refusal(status: StatusCode, error_type: &'static str, message: &str) -> Response {
    let mut r = (status, axum::Json(json!({ "Message": message }))).into_response();
    r.headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_static(error_type));
    r
}

fn url_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        "Not Found",
    )
}

fn forbidden(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "AccessDeniedException",
        format!("Forbidden: {why}"),
    )
}

async fn handle(
    state: &AppState,
    id: &str,
    raw_path: &str,
    host: Option<&str>,
    req: Request,
    request_id: &str,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let url = if ignition_store::is_url_id(id) {
        let id = id.to_owned();
        blocking(state, move |s| s.function_url_by_id(&id)).await?
    } else {
        None
    };
    let Some(url) = url else {
        discard(body, state.body_timeout);
        return Err(url_not_found());
    };
    let origin = parts
        .headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let (Some(cors), Some(origin)) = (&url.cors, &origin) {
        if parts.method == Method::OPTIONS
            && parts.headers.contains_key("access-control-request-method")
        {
            discard(body, state.body_timeout);
            return Ok(preflight(cors, origin));
        }
    }
    let body = authorized_body(state, &url, &parts, body).await?;
    let event = event(&parts, raw_path, host, &url, &body, request_id);
    let target = match &url.qualifier {
        Some(q) => format!("{}:{q}", url.function),
        None => url.function.clone(),
    };
    let Ran {
        outcome,
        executor,
        executed,
        ..
    } = run_sync(
        state,
        &target,
        request_id,
        event.to_string().into_bytes(),
        None,
        StartMode::Auto,
    )
    .await
    .map_err(|e| match e.status {
        StatusCode::TOO_MANY_REQUESTS => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "Rate Exceeded.",
        ),
        _ => e,
    })?;
    let mut resp = match outcome {
        Ok(exec) => match &exec.result.outcome {
            Outcome::Success(result) => http_response(result).unwrap_or_else(|why| {
                tracing::info!(%request_id, why, "a function URL's response is malformed");
                refusal(
                    StatusCode::BAD_GATEWAY,
                    "ServiceException",
                    "Internal Server Error",
                )
            }),
            Outcome::FunctionError(_) | Outcome::InitError(_) => refusal(
                StatusCode::BAD_GATEWAY,
                "ServiceException",
                "Internal Server Error",
            ),
            Outcome::Timeout { .. } => refusal(
                StatusCode::GATEWAY_TIMEOUT,
                "ServiceException",
                "Gateway Timeout",
            ),
        },
        Err(ExecError::Timeout(_)) => refusal(
            StatusCode::GATEWAY_TIMEOUT,
            "ServiceException",
            "Gateway Timeout",
        ),
        Err(ExecError::QueueFull(_)) => refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "Rate Exceeded.",
        ),
        Err(e) => {
            tracing::warn!(%request_id, error = %e, node = %executor, "a function URL's invocation failed");
            refusal(
                StatusCode::BAD_GATEWAY,
                "ServiceException",
                "Internal Server Error",
            )
        }
    };
    let h = resp.headers_mut();
    if let (Some(cors), Some(origin)) = (&url.cors, &origin) {
        cors_headers(h, cors, origin, false);
    }
    for (k, v) in [
        ("X-Amz-Executed-Version", &executed),
        ("x-ignition-node", &executor),
    ] {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    }
    Ok(resp)
}

/// The request's body, once the caller may call the URL: anyone for `NONE`; for `AWS_IAM` a
/// key of the function's own tenant, or of an account its resource policy lets call the URL
/// (checked before the body is read, then the signature with it). Development mode has no keys: its URLs are all open.
async fn authorized_body(
    state: &AppState,
    url: &FunctionUrl,
    parts: &Parts,
    body: Body,
) -> Result<Bytes, ApiError> {
    let read = |body| read_body_within(parts, body, MAX_INVOKE_PAYLOAD, state.body_timeout);
    if url.auth == UrlAuth::None || state.dev_mode {
        return read(body).await.map_err(too_large);
    }
    let owner = FunctionId::from_stored(&url.function).tenant;
    let identity = match identify(state, parts).await {
        Ok(i) => i,
        Err(e) => {
            discard(body, state.body_timeout);
            return Err(forbidden(&e.message));
        }
    };
    let (caller, bytes) = match identity {
        Identity::Checked(caller) => (caller, read(body).await.map_err(too_large)?),
        Identity::Signed(key) => {
            let bytes = read(body).await.map_err(too_large)?;
            let caller = verify(parts, &bytes, &key).map_err(|e| forbidden(&e.message))?;
            (caller, bytes)
        }
    };
    if caller.tenant != owner {
        let allowed = crate::policies::allows_url(
            state,
            &url.function,
            url.qualifier.as_deref().unwrap_or_default(),
            &caller.account_id(),
            "AWS_IAM",
        )
        .await?;
        if !allowed {
            return Err(forbidden(
                "the key is not of the function's account, and its policy does not let that account call the URL",
            ));
        }
    }
    Ok(bytes)
}

fn too_large(e: ApiError) -> ApiError {
    if e.status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            format!("Request must be smaller than {MAX_INVOKE_PAYLOAD} bytes"),
        )
    } else {
        e
    }
}

/// Whether a body of this content type goes to the function as text (else base64).
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.to_ascii_lowercase();
    ct.starts_with("text/")
        || [
            "json",
            "xml",
            "javascript",
            "x-www-form-urlencoded",
            "graphql",
        ]
        .iter()
        .any(|t| ct.contains(t))
}

/// Lambda's payload format 2.0 event for a request.
fn event(
    parts: &Parts,
    raw_path: &str,
    host: Option<&str>,
    url: &FunctionUrl,
    body: &[u8],
    request_id: &str,
) -> Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        if name == axum::http::header::COOKIE {
            // The console's session is the node's, not the function's: a browser signed in to
            // the console sends it to a URL on the same host, and a function that read it could
            // act as the person signed in.
            let session = format!("{}=", crate::auth::SESSION_COOKIE);
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty() && !c.starts_with(&session))
                    .map(str::to_owned),
            );
            continue;
        }
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let raw_query = parts.uri.query().unwrap_or("");
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(raw_query.as_bytes()) {
        query
            .entry(k.into_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let source_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let at_ms = now_ms();
    let domain = host.unwrap_or("localhost");
    let mut e = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": url.url_id,
            "domainName": domain,
            "domainPrefix": url.url_id,
            "http": {
                "method": parts.method.as_str(),
                "path": raw_path,
                "protocol": format!("{:?}", parts.version),
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent"),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": common_log_time(at_ms.div_euclid(1000)),
            "timeEpoch": at_ms,
        },
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        e["cookies"] = cookies.into();
    }
    if !query.is_empty() {
        e["queryStringParameters"] = json!(query);
    }
    if !body.is_empty() {
        let content_type = headers.get("content-type").map(String::as_str);
        match std::str::from_utf8(body) {
            Ok(text) if is_text(content_type) => e["body"] = text.into(),
            _ => {
                e["body"] = BASE64.encode(body).into();
                e["isBase64Encoded"] = true.into();
            }
        }
    }
    e
}

/// Headers that frame the connection or the message: the node's to write, never a function's.
const FRAMING: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// The HTTP response for a function's result, as Lambda maps it: an object with `statusCode`
/// gives the status, `headers`, `cookies` and `body` (base64-decoded when `isBase64Encoded`);
/// anything else is a 200 whose body is the result as JSON. `Err`: why the result cannot be
/// a response (the client gets a 502).
fn http_response(result: &[u8]) -> Result<Response, &'static str> {
    let doc: Option<Map<String, Value>> =
        serde_json::from_slice::<Value>(result)
            .ok()
            .and_then(|v| match v {
                Value::Object(o) if o.contains_key("statusCode") => Some(o),
                _ => None,
            });
    let Some(doc) = doc else {
        let mut r = (StatusCode::OK, result.to_vec()).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    };
    let status = doc
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or("statusCode is not an HTTP status from 200 to 599")?;
    let base64 = doc
        .get("isBase64Encoded")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let body: Vec<u8> = match doc.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if base64 => BASE64
            .decode(s.as_bytes())
            .map_err(|_| "isBase64Encoded is true and body is not base64")?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.remove(axum::http::header::CONTENT_TYPE);
    if let Some(headers) = doc.get("headers") {
        let headers = headers.as_object().ok_or("headers is not an object")?;
        for (k, v) in headers {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => return Err("a header's value is not a string"),
            };
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| "a header's name is not valid")?;
            if FRAMING.contains(&name.as_str())
                || (name == axum::http::header::SET_COOKIE && sets_session_cookie(&value))
            {
                continue;
            }
            let value =
                HeaderValue::from_str(&value).map_err(|_| "a header's value is not valid")?;
            h.append(name, value);
        }
    }
    if let Some(cookies) = doc.get("cookies") {
        for c in cookies.as_array().ok_or("cookies is not a list")? {
            let c = c.as_str().ok_or("a cookie is not a string")?;
            if sets_session_cookie(c) {
                continue;
            }
            let value =
                HeaderValue::from_str(c).map_err(|_| "a cookie is not a valid header value")?;
            h.append(axum::http::header::SET_COOKIE, value);
        }
    }
    Ok(resp)
}

/// Whether a `Set-Cookie` value sets the console's session cookie: a function answering on the
/// node's host must not plant a session (the browser would then act in the planter's account)
/// or shadow one with a narrower path. Dropped, whatever the case of its name.
fn sets_session_cookie(set_cookie: &str) -> bool {
    set_cookie
        .split(['=', ';'])
        .next()
        .is_some_and(|n| n.trim().eq_ignore_ascii_case(crate::auth::SESSION_COOKIE))
}

/// Whether `origin` may call, and what `Access-Control-Allow-Origin` says to it.
fn allowed_origin(cors: &Cors, origin: &str) -> Option<String> {
    let origins = cors.allow_origins.as_deref().unwrap_or_default();
    let credentials = cors.allow_credentials.unwrap_or(false);
    if origins.iter().any(|o| o == "*") {
        // A wildcard does not carry credentials: the origin itself is named then.
        return Some(if credentials {
            origin.to_owned()
        } else {
            "*".to_owned()
        });
    }
    origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
        .then(|| origin.to_owned())
}

fn cors_headers(h: &mut HeaderMap, cors: &Cors, origin: &str, preflight: bool) {
    // The URL's configuration decides, not the function.
    for name in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
    ] {
        h.remove(name);
    }
    h.append(axum::http::header::VARY, HeaderValue::from_static("Origin"));
    let Some(allow) = allowed_origin(cors, origin) else {
        return;
    };
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set("access-control-allow-origin", allow);
    if cors.allow_credentials == Some(true) {
        set("access-control-allow-credentials", "true".to_owned());
    }
    let join = |l: &Option<Vec<String>>| l.as_ref().filter(|l| !l.is_empty()).map(|l| l.join(","));
    if preflight {
        if let Some(m) = join(&cors.allow_methods) {
            set("access-control-allow-methods", m);
        }
        if let Some(hs) = join(&cors.allow_headers) {
            set("access-control-allow-headers", hs);
        }
        if let Some(age) = cors.max_age {
            set("access-control-max-age", age.to_string());
        }
    } else if let Some(e) = join(&cors.expose_headers) {
        set("access-control-expose-headers", e);
    }
}

/// The answer to a CORS preflight, from the URL's configuration alone.
fn preflight(cors: &Cors, origin: &str) -> Response {
    let mut resp = StatusCode::OK.into_response();
    cors_headers(resp.headers_mut(), cors, origin, true);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(r: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(axum::body::to_bytes(r.into_body(), usize::MAX))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_consoles_session_cookie_never_reaches_a_function() {
        let req = axum::http::Request::builder()
            .method("GET")
            .uri("/lambda-url/x/path")
            .header("cookie", "a=1; ignition_session=SECRETTOKEN; b=2")
            .header("cookie", "ignition_session=SECRETTOKEN")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let url = FunctionUrl {
            function: "acme.f".into(),
            qualifier: None,
            url_id: "x".repeat(32),
            auth: ignition_store::UrlAuth::None,
            cors: None,
            created_at: 0,
            updated_at: 0,
        };
        let e = event(&parts, "/path", Some("node"), &url, b"", "req");
        assert_eq!(e["cookies"], serde_json::json!(["a=1", "b=2"]));
        assert!(!e.to_string().contains("SECRETTOKEN"), "{e}");
    }

    #[test]
    fn a_function_cannot_set_the_consoles_session_cookie() {
        let r = http_response(
            br#"{"statusCode": 200, "headers": {"Set-Cookie": "IGNITION_SESSION=planted"},
                "cookies": ["ignition_session=planted; Path=/ui", "a=1"]}"#,
        )
        .unwrap();
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1"]);
    }

    #[test]
    fn a_result_with_status_code_is_an_http_response() {
        let r = http_response(
            br#"{"statusCode": 201, "headers": {"x-a": "1", "content-length": "999", "x-n": 5},
                "cookies": ["a=1", "b=2; Path=/"], "body": "AAEC", "isBase64Encoded": true}"#,
        )
        .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()["x-n"], "5");
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2; Path=/"]);
        assert_ne!(
            r.headers().get("content-length").map(|v| v.as_bytes()),
            Some(&b"999"[..]),
            "framing is the node's"
        );
        assert_eq!(body_of(r), [0, 1, 2]);
    }

    #[test]
    fn anything_else_is_a_200_with_the_json() {
        let r = http_response(br#"{"message": "hi"}"#).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(body_of(r), br#"{"message": "hi"}"#);
        assert_eq!(body_of(http_response(b"[1,2]").unwrap()), b"[1,2]");
    }

    #[test]
    fn malformed_results_are_refused() {
        for bad in [
            &br#"{"statusCode": 99}"#[..],
            br#"{"statusCode": "200"}"#,
            br#"{"statusCode": 200, "headers": {"x": "a\r\nset-cookie: evil"}}"#,
            br#"{"statusCode": 200, "headers": {"bad name": "v"}}"#,
            br#"{"statusCode": 200, "headers": {"x": {"nested": 1}}}"#,
            br#"{"statusCode": 200, "body": "%%%", "isBase64Encoded": true}"#,
            br#"{"statusCode": 200, "cookies": "a=1"}"#,
        ] {
            assert!(
                http_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cors_names_only_allowed_origins() {
        let cors = Cors {
            allow_origins: Some(vec!["https://app.example".into()]),
            allow_methods: Some(vec!["GET".into(), "POST".into()]),
            max_age: Some(300),
            ..Cors::default()
        };
        let ok = preflight(&cors, "https://app.example");
        assert_eq!(
            ok.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(ok.headers()["access-control-allow-methods"], "GET,POST");
        assert_eq!(ok.headers()["access-control-max-age"], "300");
        let other = preflight(&cors, "https://evil.example");
        assert!(other.headers().get("access-control-allow-origin").is_none());
        let any = Cors {
            allow_origins: Some(vec!["*".into()]),
            ..Cors::default()
        };
        assert_eq!(allowed_origin(&any, "https://x").as_deref(), Some("*"));
    }

    #[test]
    fn bodies_are_text_unless_binary() {
        assert!(is_text(None));
        assert!(is_text(Some("application/json; charset=utf-8")));
        assert!(is_text(Some("text/plain")));
        assert!(!is_text(Some("application/octet-stream")));
        assert!(!is_text(Some("image/png")));
    }
}
