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
//! Signature checks follow AWS's published algorithm: the canonical request (method, the path
//! URI-encoded again, the sorted query, the signed headers, the payload's SHA-256), the string
//! to sign with the credential scope, and the HMAC-SHA256 key chain. The signature's time must
//! be within 15 minutes of the server's; comparisons are constant-time.

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{blocking, ApiError, AppState};

type HmacSha256 = Hmac<Sha256>;

use ignition_types::FunctionId;
pub use ignition_types::DEFAULT_TENANT;
/// How far a signature's time may be from the server's.
const MAX_SKEW_S: i64 = 15 * 60;
/// Bodies are read to hash them; no request is larger than a deploy.
const MAX_SIGNED_BODY: usize = crate::MAX_DEPLOY_BODY;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant.
    pub tenant: String,
}

impl Caller {
    /// The stored name of the caller's function `name` (a name or an ARN).
    pub(crate) fn function(&self, name_or_arn: &str) -> Result<String, ApiError> {
        let name = crate::lambda::function_name(name_or_arn)?;
        Ok(FunctionId::new(&self.tenant, &name).stored())
    }

    /// The caller's name for the stored function `stored`, or `None` when it is not theirs.
    pub(crate) fn owns<'a>(&self, stored: &'a str) -> Option<&'a str> {
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

fn denied(kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, kind, message)
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; were it ever to refuse one, an empty MAC matches nothing.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// RFC 3986 encoding as SigV4 wants it: everything but unreserved characters (and `/` when
/// `keep_slash`).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of an `AWS4-HMAC-SHA256` authorization header.
#[derive(Debug, PartialEq, Eq)]
struct SigV4Header<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_sigv4(value: &str) -> Option<SigV4Header<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256")?.trim();
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let h = SigV4Header {
        access_key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    };
    (scope.next()? == "aws4_request").then_some(h)
}

/// Seconds since the epoch of an `x-amz-date` (`YYYYMMDDTHHMMSSZ`).
fn amz_date_unix(d: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| d.get(r)?.parse::<i64>().ok();
    if d.len() != 16 || d.as_bytes()[8] != b'T' || d.as_bytes()[15] != b'Z' {
        return None;
    }
    let (y, m, day) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(9..11)?, n(11..13)?, n(13..15)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The signature a request should carry, signed with `secret`.
fn expected_signature(
    parts: &Parts,
    body: &[u8],
    h: &SigV4Header<'_>,
    amz_date: &str,
    secret: &str,
) -> String {
    let query = parts.uri.query().unwrap_or("");
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    let canonical_query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_headers: String = h
        .signed_headers
        .iter()
        .map(|name| {
            let values: Vec<String> = parts
                .headers
                .get_all(*name)
                .iter()
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            format!("{name}:{}\n", values.join(","))
        })
        .collect();
    let payload_hash = parts
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v != "UNSIGNED-PAYLOAD")
        .map_or_else(|| hex_sha256(body), str::to_owned);
    let canonical_request = format!(
        "{}\n{}\n{canonical_query}\n{canonical_headers}\n{}\n{payload_hash}",
        parts.method,
        uri_encode(parts.uri.path(), true),
        h.signed_headers.join(";"),
    );
    let scope = format!("{}/{}/{}/aws4_request", h.date, h.region, h.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical_request.as_bytes())
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), h.date.as_bytes());
    let k_region = hmac(&k_date, h.region.as_bytes());
    let k_service = hmac(&k_region, h.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, to_sign.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Who a request claims to be, found from its headers alone: a bearer token is checked at
/// once; a signature needs the body, which is read only after the key is known to exist and the
/// signature's time is acceptable (strangers cannot make the server buffer bodies).
enum Identity {
    Checked(Caller),
    Signed(ignition_store::AccessKey),
}

async fn identify(state: &AppState, parts: &Parts) -> Result<Identity, ApiError> {
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
        if !constant_time_eq(key.secret_access_key.as_bytes(), secret.as_bytes()) {
            return Err(denied(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        }
        return Ok(Identity::Checked(Caller { tenant: key.tenant }));
    }
    let h = parse_sigv4(auth).ok_or_else(|| {
        denied(
            "IncompleteSignatureException",
            "Authorization is neither AWS4-HMAC-SHA256 nor Bearer",
        )
    })?;
    let amz_date = amz_date(parts)?;
    let at = amz_date_unix(amz_date).ok_or_else(|| {
        denied(
            "IncompleteSignatureException",
            "x-amz-date is not YYYYMMDDTHHMMSSZ",
        )
    })?;
    if (now_unix() - at).abs() > MAX_SKEW_S || !amz_date.starts_with(h.date) {
        return Err(denied(
            "InvalidSignatureException",
            "Signature expired: the request time is more than 15 minutes from the server's",
        ));
    }
    if !h.signed_headers.contains(&"host") {
        return Err(denied(
            "IncompleteSignatureException",
            "the host header must be signed",
        ));
    }
    Ok(Identity::Signed(lookup(h.access_key_id.to_owned()).await?))
}

fn amz_date(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| denied("IncompleteSignatureException", "x-amz-date is missing"))
}

/// Checks the signature of a request [`identify`] found signed with `key`.
fn verify(parts: &Parts, body: &[u8], key: &ignition_store::AccessKey) -> Result<Caller, ApiError> {
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let h = parse_sigv4(auth)
        .ok_or_else(|| denied("IncompleteSignatureException", "malformed signature"))?;
    let want = expected_signature(parts, body, &h, amz_date(parts)?, &key.secret_access_key);
    if !constant_time_eq(want.as_bytes(), h.signature.as_bytes()) {
        return Err(denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    Ok(Caller {
        tenant: key.tenant.clone(),
    })
}

/// The middleware: attaches the [`Caller`] or answers 403.
pub(crate) async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.dev_mode || (req.method() == axum::http::Method::GET && req.uri().path() == "/") {
        let mut req = req;
        let caller = Caller {
            tenant: DEFAULT_TENANT.to_owned(),
        };
        req.extensions_mut().insert(caller.clone());
        let mut resp = next.run(req).await;
        // For the access log, which runs outside this layer.
        resp.extensions_mut().insert(caller);
        return resp;
    }
    let (parts, body) = req.into_parts();
    let (caller, body) = match identify(&state, &parts).await {
        Err(e) => return e.into_response(),
        Ok(Identity::Checked(caller)) => (caller, body),
        Ok(Identity::Signed(key)) => {
            let Ok(bytes) = to_bytes(body, MAX_SIGNED_BODY).await else {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    "request body too large",
                )
                .into_response();
            };
            match verify(&parts, &bytes, &key) {
                Ok(caller) => (caller, Body::from(bytes)),
                Err(e) => return e.into_response(),
            }
        }
    };
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(caller);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published SigV4 example (the "get-vanilla" request of the SigV4 test suite):
    /// GET / on example.amazonaws.com, service "service", region us-east-1.
    #[test]
    fn the_published_example_verifies() {
        let req = axum::http::Request::builder()
            .method("GET")
            .uri("/")
            .header("host", "example.amazonaws.com")
            .header("x-amz-date", "20150830T123600Z")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let h = parse_sigv4(auth).unwrap();
        let sig = expected_signature(
            &parts,
            b"",
            &h,
            "20150830T123600Z",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(sig, h.signature);
        // One changed byte of the secret, or of the path, and it does not.
        let other = expected_signature(
            &parts,
            b"",
            &h,
            "20150830T123600Z",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEX",
        );
        assert_ne!(other, h.signature);
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(amz_date_unix("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(amz_date_unix("2015-08-30"), None);
        assert_eq!(
            uri_encode("/2015-03-31/functions/arn:aws", true),
            "/2015-03-31/functions/arn%3Aaws"
        );
        assert_eq!(uri_encode("a b/c", false), "a%20b%2Fc");
        assert!(parse_sigv4("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/s/other, SignedHeaders=host, Signature=00").is_none());
    }

    #[test]
    fn tenants_see_only_their_functions() {
        let acme = Caller {
            tenant: "acme".into(),
        };
        let dev = Caller {
            tenant: DEFAULT_TENANT.into(),
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
