//! Lambda's API over HTTP, against a real server with real microVMs: the control plane's
//! shapes and errors, asynchronous invocations (retries, the failure destination, durability
//! across a restart), `/metrics`, and an unmodified AWS SDK (boto3) managing and invoking
//! functions.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{json, wait_for, TestServer};
use serde_json::{json as j, Value};

fn zip(files: &[(&str, &str)]) -> String {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, body) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(body.as_bytes()).unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(w.finish().unwrap().into_inner())
}

fn create(server: &TestServer, name: &str, handler_body: &str) -> (u16, Value) {
    let (status, _, body) = json(
        server
            .http()
            .post(format!("{}/2015-03-31/functions", server.url))
            .json(&j!({
                "FunctionName": name,
                "Runtime": "python3.11",
                "Role": "arn:aws:iam::123456789012:role/ignored",
                "Handler": "app.handler",
                "Code": { "ZipFile": zip(&[("app.py", handler_body)]) },
                "Timeout": 20,
                "Unknown": "ignored as AWS does",
            }))
            .send()
            .unwrap(),
    );
    (status, body)
}

fn invoke_typed(
    server: &TestServer,
    name: &str,
    kind: &str,
    payload: &str,
) -> reqwest::blocking::Response {
    server.invoke_with(name, &[("X-Amz-Invocation-Type", kind)], payload)
}

#[test]
fn the_control_plane_speaks_lambdas_shapes_and_errors() {
    let server = TestServer::start(&[]);
    let (status, c) = create(&server, "shapes", "def handler(e, c):\n    return 1\n");
    assert_eq!(status, 201, "{c}");
    assert_eq!(
        c["FunctionArn"],
        "arn:aws:lambda:local:000000000000:function:shapes"
    );
    assert_eq!(c["Runtime"], "python3.11");
    assert_eq!(c["MemorySize"], 128);
    assert_eq!(c["Timeout"], 20);
    assert_eq!(c["Version"], "$LATEST");
    assert_eq!(c["State"], "Active");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(c["CodeSha256"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    let (status, e) = create(&server, "shapes", "x = 1\n");
    assert_eq!(
        (status, e["errorType"].as_str()),
        (409, Some("ResourceConflictException")),
        "{e}"
    );

    let get = |path: &str| {
        json(
            server
                .http()
                .get(format!("{}{path}", server.url))
                .send()
                .unwrap(),
        )
    };
    let (status, _, list) = get("/2015-03-31/functions/");
    assert_eq!(status, 200);
    assert_eq!(list["Functions"][0]["FunctionName"], "shapes");
    let (_, _, f) =
        get("/2015-03-31/functions/arn:aws:lambda:us-east-1:000000000000:function:shapes");
    assert_eq!(
        f["Configuration"]["Handler"], "app.handler",
        "an ARN names the function: {f}"
    );
    // The account part is not ignored: another account's ARN does not reach this one's function.
    let (status, _, e) = get("/2015-03-31/functions/arn:aws:lambda:us-east-1:1:function:shapes");
    assert_eq!(status, 403, "{e}");
    assert_eq!(e["errorType"], "AccessDeniedException");
    let (status, headers, e) = get("/2015-03-31/functions/missing");
    assert_eq!(status, 404);
    assert_eq!(headers["x-amzn-errortype"], "ResourceNotFoundException");
    assert_eq!(e["message"], "Function not found: missing");

    let put = |path: &str, body: Value| {
        json(
            server
                .http()
                .put(format!("{}{path}", server.url))
                .json(&body)
                .send()
                .unwrap(),
        )
    };
    let (status, _, e) = put(
        "/2015-03-31/functions/shapes/configuration",
        j!({ "Timeout": 0 }),
    );
    assert_eq!(
        (status, e["errorType"].as_str()),
        (400, Some("InvalidParameterValueException"))
    );
    assert!(
        e["errorMessage"].as_str().unwrap().contains("timeout"),
        "{e}"
    );
    let (status, _, e) = put("/2015-03-31/functions/shapes/code", j!({ "S3Bucket": "b" }));
    assert_eq!(status, 400);
    assert!(
        e["errorMessage"].as_str().unwrap().contains("ZipFile"),
        "{e}"
    );
    let (status, _, e) = put(
        "/2015-03-31/functions/shapes/configuration",
        j!({ "Runtime": "java21" }),
    );
    assert_eq!(status, 400, "{e}");
    assert!(
        e["errorMessage"].as_str().unwrap().starts_with("Runtime"),
        "{e}"
    );

    // Invocation types.
    let r = invoke_typed(&server, "shapes", "DryRun", "");
    assert_eq!(r.status(), 204);
    assert_eq!(invoke_typed(&server, "missing", "DryRun", "").status(), 404);
    let (status, _, e) = json(invoke_typed(&server, "shapes", "Sometimes", "{}"));
    assert_eq!(status, 400, "{e}");
    let big = format!("\"{}\"", "x".repeat(300 * 1024));
    let (status, _, e) = json(invoke_typed(&server, "shapes", "Event", &big));
    assert_eq!(
        (status, e["errorType"].as_str()),
        (413, Some("RequestTooLargeException"))
    );

    let r = server
        .http()
        .delete(format!("{}/2015-03-31/functions/shapes", server.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    server.stop_and_check_clean();
}

#[test]
fn async_invocations_retry_then_land_in_failed_events_and_metrics_count_them() {
    let server = TestServer::start(&["--async-retries", "2", "--async-retry-delay-ms", "200"]);
    assert_eq!(
        create(
            &server,
            "flaky",
            "def handler(e, c):\n    raise ValueError('nope ' + e['n'])\n"
        )
        .0,
        201
    );
    assert_eq!(
        create(&server, "fine", "def handler(e, c):\n    return e\n").0,
        201
    );
    let r = invoke_typed(&server, "flaky", "Event", r#"{"n": "1"}"#);
    assert_eq!(r.status(), 202);
    let request_id = r.headers()["x-amzn-requestid"].to_str().unwrap().to_owned();
    assert!(r.bytes().unwrap().is_empty());
    assert_eq!(
        invoke_typed(&server, "fine", "Event", r#"{"ok": 1}"#).status(),
        202
    );
    wait_for(
        "the event to exhaust its retries",
        Duration::from_secs(120),
        || {
            server.get_json("/v1/functions/flaky/failed-events")["events"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        },
    );
    let failed = server.get_json("/v1/functions/flaky/failed-events");
    let e = &failed["events"][0];
    assert_eq!(e["request_id"], request_id.as_str());
    assert_eq!(e["attempts"], 3, "one attempt and two retries: {failed}");
    assert!(
        e["last_error"]
            .as_str()
            .unwrap()
            .contains("ValueError: nope 1"),
        "{failed}"
    );
    let scrape = || {
        server
            .http()
            .get(format!("{}/metrics", server.url))
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    // The other event runs on its own schedule (its first invocation builds a snapshot).
    wait_for("the good event to run", Duration::from_secs(120), || {
        scrape().contains("function=\"fine\",start=")
    });
    let metrics = scrape();
    let count = |needle: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("ignition_invocations_total{") && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count("function=\"flaky\""), 3.0, "{metrics}");
    assert!(count("function=\"fine\"") >= 1.0, "{metrics}");
    assert!(
        metrics.contains("ignition_invocation_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ignition_node{name=\"events_failed\"} 1"),
        "{metrics}"
    );
    assert!(
        server.get_json("/v1/functions/fine/failed-events")["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    server.stop_and_check_clean();
}

#[test]
fn queued_events_survive_a_server_restart_within_the_nodes_limit() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    // A node that may run nothing: the event is accepted, throttled (not an attempt) and kept.
    let server = TestServer::start(&[
        "--data-dir",
        dir.as_str(),
        "--max-concurrency",
        "0",
        "--max-queued-events",
        "1",
    ]);
    assert_eq!(
        create(&server, "later", "def handler(e, c):\n    return e\n").0,
        201
    );
    assert_eq!(
        invoke_typed(&server, "later", "Event", r#"{"k": 1}"#).status(),
        202
    );
    // The node holds one event at most: the next is refused, and not stored.
    let (status, _, e) = json(invoke_typed(&server, "later", "Event", r#"{"k": 2}"#));
    assert_eq!(status, 429, "{e}");
    assert_eq!(e["errorType"], "TooManyRequestsException", "{e}");
    assert_eq!(e["Reason"], "EventQueueFull", "{e}");
    wait_for("the event to be throttled", Duration::from_secs(30), || {
        server
            .http()
            .get(format!("{}/metrics", server.url))
            .send()
            .unwrap()
            .text()
            .unwrap()
            .contains("outcome=\"throttled\"")
    });
    server.stop_and_check_clean();

    let server = TestServer::start(&["--data-dir", dir.as_str()]);
    wait_for("the stored event to run", Duration::from_secs(120), || {
        let m = server
            .http()
            .get(format!("{}/metrics", server.url))
            .send()
            .unwrap()
            .text()
            .unwrap();
        m.lines().any(|l| {
            l.starts_with("ignition_invocations_total{")
                && l.contains("function=\"later\"")
                && l.contains("outcome=\"success\"")
                && l.ends_with(" 1")
        })
    });
    assert!(
        server.get_json("/v1/functions/later/failed-events")["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    server.stop_and_check_clean();
}

#[test]
fn an_aws_sdk_manages_and_invokes_functions() {
    // A real deployment: authenticated, the SDK signs with an access key.
    let server = TestServer::start_secure(&[]);
    let (id, secret) = server.create_key("sdk");
    let stdout = python("lambda_client.py", &[&server.url, &id, &secret]);
    for want in [
        "create sdk-hello Active $LATEST",
        "conflict ResourceConflictException",
        "list sdk-hello",
        "get app.handler",
        "invoke 200 {\"hello\": \"sdk\", \"as\": \"sdk-hello:$LATEST\"}",
        "update-code True",
        "publish 1",
        "alias live 1",
        "invoke-v2 {\"v2\": \"again\"}",
        "invoke-alias 1 {\"hello\": \"pinned\", \"as\": \"sdk-hello:1\"}",
        "versions $LATEST,1",
        "update-config 7 {\"A\": \"1\"}",
        "event 202",
        "dryrun 204",
        "missing ResourceNotFoundException",
        "invalid InvalidParameterValueException True",
        "node-create nodejs18.x",
        "node-invoke {\"node\":\"v18\",\"id\":36}",
        "node-error Unhandled TypeError asked to fail TypeError: asked to fail",
        "deleted 0",
    ] {
        assert!(
            stdout.lines().any(|l| l == want),
            "missing {want:?} in:\n{stdout}"
        );
    }
    server.stop_and_check_clean();
}

#[test]
fn invocation_logs_are_kept_and_shown_by_the_cli() {
    let server = TestServer::start(&[]);
    let code = "def handler(e, c):\n    print('said', e['n'])\n    return e['n']\n";
    assert_eq!(create(&server, "talker", code).0, 201);
    let mut ids = Vec::new();
    for n in 1..=2 {
        let r = server.invoke("talker", &format!(r#"{{"n": {n}}}"#));
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["x-amzn-requestid"].to_str().unwrap().to_owned());
    }
    let out = || {
        let o = server.cli(&["fn", "logs", "talker"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Logs are kept just after the answer.
    wait_for("both logs", Duration::from_secs(10), || {
        out().contains("said 2")
    });
    let all = out();
    let (first, second) = (all.find("said 1").unwrap(), all.find("said 2").unwrap());
    assert!(first < second, "oldest first: {all}");
    assert!(
        all.contains(&format!("START RequestId: {}", ids[0])),
        "{all}"
    );
    assert!(
        all.contains(&format!("REPORT RequestId: {}", ids[1])),
        "{all}"
    );
    let one = server.cli(&["fn", "logs", "talker", "--request-id", &ids[1]]);
    let one = String::from_utf8_lossy(&one.stdout);
    assert!(one.contains("said 2") && !one.contains("said 1"), "{one}");
    let missing = server.cli(&["fn", "logs", "bad name"]);
    assert!(!missing.status.success());
    server.stop_and_check_clean();
}

#[test]
fn over_a_concurrency_limit_invokes_get_429() {
    let server = TestServer::start(&["--max-concurrency", "2"]);
    let slow = "import time\ndef handler(e, c):\n    time.sleep(3)\n    return 1\n";
    assert_eq!(create(&server, "slow", slow).0, 201);
    let put = |body: Value| {
        json(
            server
                .http()
                .put(format!(
                    "{}/2017-10-31/functions/slow/concurrency",
                    server.url
                ))
                .json(&body)
                .send()
                .unwrap(),
        )
    };
    let (status, _, r) = put(j!({ "ReservedConcurrentExecutions": 1 }));
    assert_eq!(
        (status, r["ReservedConcurrentExecutions"].as_u64()),
        (200, Some(1))
    );
    let (status, _, e) = put(j!({ "ReservedConcurrentExecutions": 5 }));
    assert_eq!(status, 400, "more than the node has: {e}");
    let background = |name: &'static str| {
        let url = server.url.clone();
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap()
                .post(format!("{url}/2015-03-31/functions/{name}/invocations"))
                .body("{}")
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let first = background("slow");
    // The first invocation holds its place for its whole run (a VM start and 3 s).
    std::thread::sleep(Duration::from_millis(1500));
    let (status, headers, e) = json(server.invoke("slow", "{}"));
    assert_eq!(status, 429, "{e}");
    assert_eq!(headers["x-amzn-errortype"], "TooManyRequestsException");
    assert_eq!(
        e["Reason"],
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );
    assert_eq!(first.join().unwrap(), 200);
    let got = server.get_json("/2019-09-30/functions/slow/concurrency");
    assert_eq!(got["ReservedConcurrentExecutions"], 1);

    // The node's own limit: 2, one of them held back for `slow`.
    assert_eq!(create(&server, "other", slow).0, 201);
    let first = background("other");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _, e) = json(server.invoke("other", "{}"));
    assert_eq!(
        (status, e["Reason"].as_str()),
        (429, Some("ConcurrentInvocationLimitExceeded"))
    );
    assert_eq!(first.join().unwrap(), 200);
    let r = server
        .http()
        .delete(format!(
            "{}/2017-10-31/functions/slow/concurrency",
            server.url
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        server.get_json("/2019-09-30/functions/slow/concurrency"),
        j!({})
    );
    server.stop_and_check_clean();
}

fn python(script: &str, args: &[&str]) -> String {
    let script = common::repo_root()
        .join("crates/cli/tests/fixtures/sdk")
        .join(script);
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 with boto3 (./scripts/setup.sh installs python3-boto3)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn requests_are_authenticated_and_tenants_see_only_their_own() {
    let server = TestServer::start_secure(&[]);
    let anon = reqwest::blocking::Client::new();
    let get = |path: &str| anon.get(format!("{}{path}", server.url)).send().unwrap();
    assert_eq!(
        get("/").status(),
        200,
        "the health check needs no credentials"
    );
    let (status, _, e) = json(get("/v1/functions"));
    assert_eq!(
        (status, e["errorType"].as_str()),
        (403, Some("MissingAuthenticationTokenException"))
    );
    let (status, _, _) = json(
        anon.post(format!("{}/2015-03-31/functions/x/invocations", server.url))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 403);

    let (acme_id, acme_secret) = server.create_key("acme");
    let (beta_id, beta_secret) = server.create_key("beta");
    let acme = format!("{acme_id}:{acme_secret}");
    let beta = format!("{beta_id}:{beta_secret}");
    let code = common::repo_root().join("examples/hello-python");
    let code = code.to_str().unwrap();
    let deploy = |token: &str| {
        server.cli_as(
            token,
            &[
                "fn",
                "deploy",
                "hello",
                "--runtime",
                "python3",
                "--handler",
                "app.handler",
                "--code",
                code,
            ],
        )
    };
    assert!(deploy(&acme).status.success());
    let out = server.cli_as(
        &acme,
        &["fn", "invoke", "hello", "--data", r#"{"name": "acme"}"#],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = server.cli_as(&beta, &["fn", "ls"]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("hello"),
        "beta sees nothing of acme's"
    );
    let out = server.cli_as(&beta, &["fn", "invoke", "hello"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ResourceNotFoundException"));
    let out = server.cli_as(&beta, &["fn", "rm", "hello"]);
    assert!(!out.status.success(), "beta cannot delete acme's function");
    // Names are per tenant: beta's own hello is another function.
    assert!(deploy(&beta).status.success());
    let out = server.cli_as(&beta, &["fn", "rm", "hello"]);
    assert!(out.status.success());
    let out = server.cli_as(&acme, &["fn", "ls"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello"),
        "acme's is still there"
    );
    let out = server.cli_as(&format!("{acme_id}:wrong"), &["fn", "ls"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("UnrecognizedClientException"));

    // Signature V4 from the AWS SDK: good, a wrong secret, an expired signature.
    let out = python("auth_client.py", &[&server.url, &acme_id, &acme_secret]);
    for want in [
        "good ok hello",
        "wrong-secret InvalidSignatureException",
        "expired InvalidSignatureException",
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "missing {want:?} in:\n{out}"
        );
    }
    let out = python("auth_client.py", &[&server.url, &beta_id, &beta_secret]);
    assert!(
        out.lines().any(|l| l == "good ok "),
        "beta lists nothing: {out}"
    );
    server.stop_and_check_clean();
}

#[test]
fn the_guest_has_lambdas_environment_and_the_callers_client_context() {
    let server = TestServer::start(&[]);
    let handler = "import os\n\
        KEYS = ['AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_EXECUTION_ENV', 'AWS_LAMBDA_FUNCTION_VERSION',\n\
                'AWS_LAMBDA_LOG_GROUP_NAME', 'AWS_LAMBDA_LOG_STREAM_NAME', 'AWS_LAMBDA_INITIALIZATION_TYPE', 'TZ']\n\
        def handler(e, c):\n\
        \x20   cc = c.client_context\n\
        \x20   return {'env': {k: os.environ.get(k) for k in KEYS}, 'group': c.log_group_name,\n\
        \x20           'custom': cc.custom if cc else None}\n";
    assert_eq!(create(&server, "envy", handler).0, 201);
    let context = base64::engine::general_purpose::STANDARD
        .encode(r#"{"custom": {"cart": "42"}, "env": {"platform": "test"}}"#);
    let (status, _, body) =
        json(server.invoke_with("envy", &[("X-Amz-Client-Context", context.as_str())], "{}"));
    assert_eq!(status, 200, "{body}");
    let env = &body["env"];
    assert_eq!(env["AWS_REGION"], "local", "{body}");
    assert_eq!(env["AWS_DEFAULT_REGION"], "local");
    assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_python3");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/envy");
    assert_eq!(env["AWS_LAMBDA_INITIALIZATION_TYPE"], "on-demand");
    assert_eq!(env["TZ"], ":UTC");
    assert!(env["AWS_LAMBDA_LOG_STREAM_NAME"].is_string());
    assert_eq!(body["group"], "/aws/lambda/envy");
    assert_eq!(body["custom"], j!({"cart": "42"}));
    // Without a client context, there is none; a bad one is refused before anything runs.
    let (_, _, body) = json(server.invoke("envy", "{}"));
    assert_eq!(body["custom"], Value::Null);
    let (status, _, e) =
        json(server.invoke_with("envy", &[("X-Amz-Client-Context", "not base64!")], "{}"));
    assert_eq!(
        (status, e["errorType"].as_str()),
        (400, Some("InvalidParameterValueException"))
    );
    // A function's own TZ is its own; a variable the platform sets is refused.
    let put = |vars: Value| {
        json(
            server
                .http()
                .put(format!(
                    "{}/2015-03-31/functions/envy/configuration",
                    server.url
                ))
                .json(&j!({ "Environment": { "Variables": vars } }))
                .send()
                .unwrap(),
        )
    };
    assert_eq!(put(j!({"TZ": "Europe/Paris"})).0, 200);
    let (_, _, body) = json(server.invoke("envy", "{}"));
    assert_eq!(body["env"]["TZ"], "Europe/Paris");
    let (status, _, e) = put(j!({"AWS_REGION": "eu-west-1"}));
    assert_eq!(status, 400, "{e}");
    server.stop_and_check_clean();
}
