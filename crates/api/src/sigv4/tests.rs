//! The verifier against AWS's published example and against an independent signer (the
//! `aws-sigv4` crate AWS's Rust SDK signs with): random methods, paths, queries, headers and
//! bodies verify; each single-field tampering of a signed request is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use axum::http::request::Parts;
use proptest::prelude::*;

use super::*;

const KEY_ID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// AWS's "get-vanilla" example of the SigV4 test suite: GET / on example.amazonaws.com.
#[test]
fn the_published_example_verifies() {
    let req = axum::http::Request::builder()
        .method("GET")
        .uri("/")
        .header("host", "example.amazonaws.com")
        .header("x-amz-date", "20150830T123600Z")
        .header("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    let at = amz_date_unix("20150830T123600Z").unwrap();
    assert_eq!(verify(&parts, b"", SECRET, at), Ok(()));
    assert!(verify(&parts, b"", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEX", at).is_err());
    assert!(
        verify(&parts, b"", SECRET, at + MAX_SKEW_S + 1).is_err(),
        "too late"
    );
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
    assert!(parse_header("AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/s/other, SignedHeaders=host, Signature=00").is_none());
}

/// A request as a client builds it, before signing.
#[derive(Debug, Clone)]
struct Plain {
    method: &'static str,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Plain {
    fn uri(&self) -> String {
        let q: Vec<String> = self
            .query
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace(' ', "%20")))
            .collect();
        if q.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, q.join("&"))
        }
    }

    /// Signed by `aws-sigv4` at `time`; the request's parts as the server would see them.
    fn signed(&self, time: SystemTime, with_payload_header: bool) -> Parts {
        let uri = format!("http://localhost:7070{}", self.uri());
        let mut headers: Vec<(String, String)> = self.headers.clone();
        headers.push(("host".into(), "localhost:7070".into()));
        if with_payload_header {
            headers.push(("x-amz-content-sha256".into(), hex_sha256(&self.body)));
        }
        let identity = Credentials::new(KEY_ID, SECRET, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("lambda")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            self.method,
            uri.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(&self.body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut req = axum::http::Request::builder()
            .method(self.method)
            .uri(self.uri());
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut req = req.body(()).unwrap();
        instructions.apply_to_request_http1x(&mut req);
        req.into_parts().0
    }
}

fn unix(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_~-][A-Za-z0-9_~:-]{0,11}"
}

fn plain() -> impl Strategy<Value = Plain> {
    (
        prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")],
        prop::collection::vec(word(), 1..4),
        prop::collection::vec((word(), "[a-z0-9 ]{0,8}"), 0..3),
        prop::collection::vec(
            (
                prop_oneof![
                    Just("x-amz-invocation-type".to_owned()),
                    Just("x-amz-log-type".to_owned()),
                    Just("content-type".to_owned()),
                    Just("x-ignition-start".to_owned()),
                    Just("x-custom".to_owned()),
                ],
                "[A-Za-z0-9][A-Za-z0-9 /]{0,10}[A-Za-z0-9]",
            ),
            0..3,
        ),
        prop::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(method, segments, query, headers, body)| {
            let mut seen = std::collections::HashSet::new();
            Plain {
                method,
                path: format!("/{}", segments.join("/")),
                query,
                headers: headers
                    .into_iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .collect(),
                body,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn requests_signed_by_aws_sigv4_verify(p in plain(), payload_header in any::<bool>()) {
        let now = SystemTime::now();
        let parts = p.signed(now, payload_header);
        prop_assert_eq!(verify(&parts, &p.body, SECRET, unix(now)), Ok(()));
    }

    #[test]
    fn every_single_tampering_is_refused(p in plain(), which in 0usize..7) {
        let now = SystemTime::now();
        let parts = p.signed(now, true);
        let mut t = parts.clone();
        let mut body = p.body.clone();
        match which {
            0 => t.method = if p.method == "GET" { axum::http::Method::POST } else { axum::http::Method::GET },
            1 => t.uri = format!("{}x", p.path).parse().unwrap(),
            2 => t.uri = format!("{}?tampered=1", p.path).parse().unwrap(),
            3 => body.push(b'!'),
            4 => {
                t.headers.insert("x-amz-invocation-type", "Event".parse().unwrap());
            }
            5 => {
                // A changed signed header: the date, an hour later.
                let later = unix(now) + 3600;
                let d = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(later).unwrap());
                let other = p.signed(d, true);
                t.headers.insert("x-amz-date", other.headers["x-amz-date"].clone());
            }
            _ => {
                t.headers.insert("host", "elsewhere:7070".parse().unwrap());
            }
        }
        prop_assume!(which != 4 || !p.headers.iter().any(|(k, v)| k == "x-amz-invocation-type" && v == "Event"));
        prop_assert!(verify(&t, &body, SECRET, unix(now)).is_err(), "tampering {} passed", which);
    }
}

#[test]
fn a_replay_with_another_body_is_refused_with_or_without_the_payload_header() {
    let now = SystemTime::now();
    let p = Plain {
        method: "PUT",
        path: "/2015-03-31/functions/f/code".into(),
        query: Vec::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"ZipFile":"AAAA"}"#.to_vec(),
    };
    let evil = br#"{"ZipFile":"BBBB"}"#;
    for with_header in [false, true] {
        let parts = p.signed(now, with_header);
        assert_eq!(verify(&parts, &p.body, SECRET, unix(now)), Ok(()));
        assert!(verify(&parts, evil, SECRET, unix(now)).is_err());
    }
    // Nor does a client's own claim of an unsigned payload pass.
    let mut parts = p.signed(now, true);
    parts
        .headers
        .insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
    let e = verify(&parts, evil, SECRET, unix(now)).unwrap_err();
    assert!(e.to_string().contains("UNSIGNED-PAYLOAD"), "{e}");
}

#[test]
fn an_unsigned_invocation_type_added_on_a_replay_is_refused() {
    let now = SystemTime::now();
    let p = Plain {
        method: "POST",
        path: "/2015-03-31/functions/f/invocations".into(),
        query: Vec::new(),
        headers: Vec::new(),
        body: b"{}".to_vec(),
    };
    let mut parts = p.signed(now, false);
    assert_eq!(verify(&parts, &p.body, SECRET, unix(now)), Ok(()));
    parts
        .headers
        .insert("x-amz-invocation-type", "Event".parse().unwrap());
    let e = verify(&parts, &p.body, SECRET, unix(now)).unwrap_err();
    assert_eq!(e.error_type(), "IncompleteSignatureException");
    assert!(e.to_string().contains("x-amz-invocation-type"), "{e}");
}
