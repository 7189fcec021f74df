//! AWS Signature Version 4, as a verifier: pure functions of the request's parts, its body and
//! a secret, so that they are tested against an independent signer without a server.
//!
//! What a valid signature proves here is more than AWS's algorithm alone requires, because a
//! captured request must not be replayable with anything changed:
//! - the payload hash is always computed from the body, and a sent `x-amz-content-sha256`
//!   must equal it (`UNSIGNED-PAYLOAD` is refused), so the body is bound;
//! - `host`, `x-amz-date`, `content-type`, every `x-amz-*` header and every `x-ignition-*`
//!   header the request carries must be among the signed headers, so none can be added or
//!   changed on a replay (an unsigned `X-Amz-Invocation-Type: Event` is refused);
//! - the request time must be within 15 minutes of the server's, and the credential scope's
//!   date must be the request's.
//!
//! The canonical request follows AWS's published algorithm: the method, the path URI-encoded
//! again, the sorted query, the signed headers with their values' whitespace folded, the
//! payload's SHA-256; then the string to sign with the credential scope and the HMAC-SHA256 key
//! chain. Comparisons are constant-time.

use axum::http::request::Parts;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a signature's time may be from the server's, seconds.
pub(crate) const MAX_SKEW_S: i64 = 15 * 60;

/// Why a signed request is refused; each maps to AWS's error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SigV4Error {
    /// Something the signature needs is missing or malformed (`IncompleteSignatureException`).
    #[error("{0}")]
    Incomplete(String),
    /// The signature, its time or the payload hash does not match
    /// (`InvalidSignatureException`).
    #[error("{0}")]
    Invalid(String),
}

impl SigV4Error {
    /// AWS's name for the error.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            Self::Incomplete(_) => "IncompleteSignatureException",
            Self::Invalid(_) => "InvalidSignatureException",
        }
    }
}

/// The parts of an `AWS4-HMAC-SHA256` authorization header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SigV4Header<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    pub(crate) signed_headers: Vec<&'a str>,
    pub(crate) signature: &'a str,
}

pub(crate) fn parse_header(value: &str) -> Option<SigV4Header<'_>> {
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

/// The request's `Authorization` header, parsed.
pub(crate) fn header_of(parts: &Parts) -> Result<SigV4Header<'_>, SigV4Error> {
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    parse_header(auth).ok_or_else(|| {
        SigV4Error::Incomplete("Authorization is neither AWS4-HMAC-SHA256 nor Bearer".to_owned())
    })
}

fn amz_date(parts: &Parts) -> Result<&str, SigV4Error> {
    parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SigV4Error::Incomplete("x-amz-date is missing".to_owned()))
}

/// What can be checked before the body is read: the time, the scope's date and which headers
/// are signed. A request that fails here never makes the server buffer its body.
pub(crate) fn check_headers(
    parts: &Parts,
    h: &SigV4Header<'_>,
    now_unix: i64,
) -> Result<(), SigV4Error> {
    let date = amz_date(parts)?;
    let at = amz_date_unix(date)
        .ok_or_else(|| SigV4Error::Incomplete("x-amz-date is not YYYYMMDDTHHMMSSZ".to_owned()))?;
    if (now_unix - at).abs() > MAX_SKEW_S || !date.starts_with(h.date) {
        return Err(SigV4Error::Invalid(
            "Signature expired: the request time is more than 15 minutes from the server's"
                .to_owned(),
        ));
    }
    for must in ["host", "x-amz-date"] {
        if !h.signed_headers.contains(&must) {
            return Err(SigV4Error::Incomplete(format!(
                "the {must} header must be signed"
            )));
        }
    }
    for name in parts.headers.keys() {
        let name = name.as_str();
        let bound =
            name == "content-type" || name.starts_with("x-amz-") || name.starts_with("x-ignition-");
        if bound && !h.signed_headers.contains(&name) {
            return Err(SigV4Error::Incomplete(format!(
                "the {name} header is sent but not signed: sign every x-amz-*, x-ignition-* and content-type header"
            )));
        }
    }
    Ok(())
}

/// Verifies a signed request whole: [`check_headers`], the payload hash against the body, and
/// the signature made with `secret`.
pub(crate) fn verify(
    parts: &Parts,
    body: &[u8],
    secret: &str,
    now_unix: i64,
) -> Result<(), SigV4Error> {
    let h = header_of(parts)?;
    check_headers(parts, &h, now_unix)?;
    let payload_hash = hex_sha256(body);
    if let Some(sent) = parts.headers.get("x-amz-content-sha256") {
        let sent = sent.to_str().unwrap_or_default();
        if sent == "UNSIGNED-PAYLOAD" {
            return Err(SigV4Error::Invalid(
                "UNSIGNED-PAYLOAD is not accepted: sign the payload".to_owned(),
            ));
        }
        if !constant_time_eq(sent.as_bytes(), payload_hash.as_bytes()) {
            return Err(SigV4Error::Invalid(
                "x-amz-content-sha256 does not match the SHA-256 of the body".to_owned(),
            ));
        }
    }
    let want = signature(parts, &payload_hash, &h, amz_date(parts)?, secret);
    if !constant_time_eq(want.as_bytes(), h.signature.as_bytes()) {
        return Err(SigV4Error::Invalid(
            "The request signature we calculated does not match the signature you provided."
                .to_owned(),
        ));
    }
    Ok(())
}

pub(crate) fn hex_sha256(data: &[u8]) -> String {
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

pub(crate) fn percent_decode(s: &str) -> String {
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

/// Seconds since the epoch of an `x-amz-date` (`YYYYMMDDTHHMMSSZ`).
pub(crate) fn amz_date_unix(d: &str) -> Option<i64> {
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

/// The signature a request should carry, signed with `secret`, for a body hashing to
/// `payload_hash`.
fn signature(
    parts: &Parts,
    payload_hash: &str,
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

/// Whether `a` and `b` are equal, in time that depends on their length only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
