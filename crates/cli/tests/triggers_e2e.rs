//! What invokes a function besides Invoke, in front of real microVMs: function URLs (made with
//! boto3, called with curl: a query string, a JSON body, a cookie, binary bytes; Lambda's status
//! mapping for handler errors and timeouts; an `AWS_IAM` URL that refuses unsigned requests and
//! takes SigV4-signed ones) and schedules (made with boto3's EventBridge Scheduler client,
//! `rate(1 minute)` waited for in real time). The two tests run side by side.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestServer;
use serde_json::Value;

/// `curl` a URL: (status, headers as written, body).
fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl (./scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (
        status,
        std::fs::read_to_string(headers)
            .unwrap()
            .to_ascii_lowercase(),
        std::fs::read(body).unwrap(),
    )
}

#[test]
fn function_urls_made_with_boto3_answer_curl_from_a_microvm() {
    let server = TestServer::start_secure(&[]);
    let (id, secret) = server.create_key("acme");
    let script = common::repo_root().join("crates/cli/tests/fixtures/sdk/function_url.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([server.url.as_str(), &id, &secret])
        .output()
        .expect("python3 with boto3 (./scripts/setup.sh installs python3-boto3)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = doc["web"]["url"].as_str().unwrap().to_owned();
    let private = doc["private"]["url"].as_str().unwrap().to_owned();
    assert!(
        web.starts_with(&format!("{}/lambda-url/", server.url)),
        "{doc}"
    );
    assert_eq!(doc["private"]["auth"], "AWS_IAM");
    assert_eq!(doc["conflict"], "ResourceConflictException");
    assert_eq!(doc["missing-alias"], "ResourceNotFoundException");
    assert_eq!(doc["get"], web.as_str());
    assert_eq!(doc["listed"][0], web.as_str());
    assert_eq!(doc["updated-cors"][0], "https://app.example");

    // The public URL, with curl: query, JSON body and cookie reach the handler in the 2.0
    // event; its status, headers, cookies and body come back.
    let (status, headers, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-b",
        "session=abc; lang=en",
        "--data",
        r#"{"order": 7}"#,
        &format!("{web}orders?limit=5&tag=a&tag=b"),
    ]);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains("x-handler: web"), "{headers}");
    assert!(headers.contains("set-cookie: seen=1; path=/"), "{headers}");
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["version"], "2.0");
    assert_eq!(seen["rawPath"], "/orders");
    assert_eq!(seen["rawQueryString"], "limit=5&tag=a&tag=b");
    assert_eq!(
        seen["query"],
        serde_json::json!({"limit": "5", "tag": "a,b"})
    );
    assert_eq!(
        seen["cookies"],
        serde_json::json!(["session=abc", "lang=en"])
    );
    assert_eq!(seen["body"], r#"{"order": 7}"#);
    assert_eq!(seen["isBase64Encoded"], false);
    assert_eq!(seen["method"], "POST");

    // Binary bytes round-trip (base64 into the event, base64-decoded out of the result).
    let dir = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = dir.path().join("blob");
    std::fs::write(&file, &blob).unwrap();
    let (status, _, body) = curl(&[
        "-H",
        "content-type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{web}bytes"),
    ]);
    assert_eq!(status, 200);
    assert_eq!(body, blob);

    // A handler error is a 502, a timeout a 504.
    assert_eq!(curl(&[&format!("{web}fail")]).0, 502);
    assert_eq!(curl(&[&format!("{web}sleep")]).0, 504);

    // AWS_IAM: unsigned is refused; signed by the tenant's key (botocore's SigV4) is served.
    let (status, _, body) = curl(&[&private]);
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(doc["signed"]["status"], 201, "{doc}");
    assert_eq!(doc["signed"]["body"]["rawPath"], "/signed");
    assert_eq!(doc["signed"]["body"]["body"], r#"{"signed": true}"#);
    server.stop_and_check_clean();
}

#[test]
fn a_schedule_made_with_boto3_fires_every_minute_in_real_time() {
    let server = TestServer::start_secure(&[]);
    let (id, secret) = server.create_key("acme");
    let token = format!("{id}:{secret}");
    let script = common::repo_root().join("crates/cli/tests/fixtures/sdk/scheduler.py");
    let made = std::time::Instant::now();
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([server.url.as_str(), &id, &secret])
        .output()
        .expect("python3 with boto3 (./scripts/setup.sh installs python3-boto3)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["arn"],
        format!(
            "arn:aws:scheduler:local:{}:schedule/default/every-minute",
            ignition_types::account_id("acme")
        )
    );
    assert_eq!(doc["expression"], "rate(1 minute)");
    assert_eq!(doc["state"], "ENABLED");
    assert_eq!(doc["retries"], 2);
    assert_eq!(doc["listed"], serde_json::json!(["every-minute"]));
    assert_eq!(doc["bad"], "ValidationException");
    assert_eq!(doc["missing"], "ResourceNotFoundException");
    let listed = server.cli_as(&token, &["schedule", "ls"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("every-minute") && listed.contains("rate(1 minute)"),
        "{listed}"
    );

    // The first firing is a minute after the schedule was made; it runs in a microVM and its
    // log is the function's, like any invocation's.
    let runs = || {
        let logs = server.cli_as(&token, &["fn", "logs", "tick"]);
        String::from_utf8_lossy(&logs.stdout)
            .matches("tick from scheduler")
            .count()
    };
    common::wait_for("the first scheduled run", Duration::from_secs(150), || {
        runs() >= 1
    });
    let first = made.elapsed();
    assert!(
        first >= Duration::from_secs(55),
        "the first run came {first:?} after the schedule was made, before its minute"
    );
    assert_eq!(runs(), 1, "one firing per due time");
    let rm = server.cli_as(&token, &["schedule", "rm", "every-minute"]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    server.stop_and_check_clean();
}
