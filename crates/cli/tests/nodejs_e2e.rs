//! Node.js functions, end to end in real microVMs: Ignition's JavaScript runtime client, its
//! module loading, its errors, its logs, and its randomness after a snapshot restore.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{code_dir, host_kernel_release, json, log_tail, repo_root, TestServer};
use serde_json::Value;

/// Node under TCG takes a second or two to load; the default 3 s would be tight.
const TIMEOUT: [&str; 2] = ["--timeout", "30"];

/// Files zipped and base64-encoded, as `Code.ZipFile` and `Content.ZipFile` carry them.
fn zip_files(files: &[(&str, &str)]) -> String {
    use base64::Engine;
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(w.finish().unwrap().into_inner())
}

fn invoke_ok(server: &TestServer, name: &str, payload: &str) -> (Value, String) {
    let (status, headers, body) =
        json(server.invoke_with(name, &[("X-Amz-Log-Type", "Tail")], payload));
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.get("x-amz-function-error").is_none(),
        "{name}: {body}"
    );
    (body, log_tail(&headers))
}

/// Invokes a function that must fail; its error document and log.
fn invoke_err(server: &TestServer, name: &str) -> (Value, String) {
    let (status, headers, body) =
        json(server.invoke_with(name, &[("X-Amz-Log-Type", "Tail")], "{}"));
    assert_eq!(status, 200, "a function error is not an HTTP error: {body}");
    assert_eq!(
        headers["x-amz-function-error"], "Unhandled",
        "{name}: {body}"
    );
    (body, log_tail(&headers))
}

#[test]
fn hello_node_answers_through_the_cli_the_lambda_api_and_bench() {
    let server = TestServer::start(&[]);
    let code = repo_root().join("examples/hello-node");
    server.deploy("hello-node", "nodejs18.x", "index.handler", &code, &TIMEOUT);

    let out = server.cli(&["fn", "invoke", "hello-node", "--data", r#"{"name":"Ada"}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["message"], "Hello, Ada!");
    assert!(
        result["node"].as_str().unwrap().starts_with("v18."),
        "{result}"
    );
    assert_ne!(result["kernel"].as_str().unwrap(), host_kernel_release());
    assert_eq!(result["memory_mib"], "128");

    // Lambda's Invoke, with the log tail: console lines carry the request id.
    let (status, headers, body) = json(server.invoke_with(
        "hello-node",
        &[("X-Amz-Log-Type", "Tail")],
        r#"{"name":"Lambda"}"#,
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Hello, Lambda!");
    let request_id = headers["x-amzn-requestid"].to_str().unwrap();
    assert_eq!(body["request_id"], request_id);
    let logs = log_tail(&headers);
    assert!(
        logs.contains(&format!("\t{request_id}\tINFO\tgreeting Lambda")),
        "{logs}"
    );
    let config = server.get_json("/2015-03-31/functions/hello-node");
    assert_eq!(config["Configuration"]["Runtime"], "nodejs18.x", "{config}");

    // Lambda's CreateFunction, with the example zipped as a client would send it.
    let index = std::fs::read_to_string(code.join("index.mjs")).unwrap();
    let (status, _, created) = json(
        server
            .http()
            .post(format!("{}/2015-03-31/functions", server.url))
            .json(&serde_json::json!({
                "FunctionName": "hello-node-api",
                "Runtime": "nodejs18.x",
                "Role": "arn:aws:iam::123456789012:role/ignored",
                "Handler": "index.handler",
                "Code": { "ZipFile": zip_files(&[("index.mjs", &index)]) },
                "Timeout": 30,
            }))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["Runtime"], "nodejs18.x");
    let (body, _) = invoke_ok(&server, "hello-node-api", r#"{"name":"API"}"#);
    assert_eq!(body["message"], "Hello, API!");

    // The benchmark, small: every mode runs and nothing fails.
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = server.cli(&[
        "bench",
        "--function",
        "hello-node",
        "--samples",
        "3",
        "--concurrency",
        "2",
        "--invocations",
        "6",
        "--memory-slots",
        "1",
        "--json",
        report.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["modes"]["restore"]["n"], 3, "{report}");
    assert_eq!(report["modes"]["pool"]["n"], 3, "{report}");
    assert_eq!(report["loaded"]["pool"]["n"], 6, "{report}");
    server.stop_and_check_clean();
}

const GREET_MODULE: &str = "module.exports = (who) => `hello ${who}`;\n";

const COMMONJS: &str = r"
const greet = require('greet');
exports.handler = async (event, context) => {
  console.log('cjs says', greet(event.who));
  console.warn({ level: 'warn' });
  return {
    greeting: greet(event.who),
    requestId: context.awsRequestId,
    functionName: context.functionName,
    functionVersion: context.functionVersion,
    memory: context.memoryLimitInMB,
    remaining: context.getRemainingTimeInMillis(),
    arn: context.invokedFunctionArn,
    logGroup: context.logGroupName,
  };
};
";

const ES_MODULE: &str = r"
import { greeting } from './lib/words.mjs';
const loaded = await Promise.resolve('top-level await ran');
export const handler = async (event) => ({ kind: 'esm', greeting: greeting(event.who), loaded });
";

const CALLBACK: &str = r"
exports.handler = function (event, context, callback) {
  setTimeout(() => callback(null, { kind: 'callback', doubled: event.n * 2 }), 10);
};
";

#[test]
fn commonjs_es_module_and_callback_handlers_with_node_modules_and_context() {
    let server = TestServer::start(&[]);
    let code = code_dir(&[
        ("cjs.js", COMMONJS),
        ("node_modules/greet/index.js", GREET_MODULE),
        ("esm.mjs", ES_MODULE),
        (
            "lib/words.mjs",
            "export const greeting = (who) => `hi ${who}`;\n",
        ),
        ("cb.js", CALLBACK),
        ("typed/package.json", r#"{"type": "module"}"#),
        (
            "typed/app.js",
            "export const handler = async () => ({ kind: 'module-typed .js' });\n",
        ),
        (
            "nested.js",
            "exports.api = { get: async () => 'nested export' };\n",
        ),
    ]);
    for (name, handler) in [
        ("cjs", "cjs.handler"),
        ("esm", "esm.handler"),
        ("cb", "cb.handler"),
        ("typed", "typed/app.handler"),
        ("nested", "nested.api.get"),
    ] {
        server.deploy(name, "nodejs", handler, code.path(), &TIMEOUT);
    }

    let (status, headers, body) =
        json(server.invoke_with("cjs", &[("X-Amz-Log-Type", "Tail")], r#"{"who":"Ada"}"#));
    assert_eq!(status, 200, "{body}");
    let request_id = headers["x-amzn-requestid"].to_str().unwrap();
    assert_eq!(body["greeting"], "hello Ada", "node_modules resolved");
    assert_eq!(body["requestId"], request_id);
    assert_eq!(body["functionName"], "cjs");
    assert_eq!(body["functionVersion"], "$LATEST");
    assert_eq!(body["memory"], "128");
    assert_eq!(body["logGroup"], "/aws/lambda/cjs");
    assert!(
        body["arn"].as_str().unwrap().ends_with(":function:cjs"),
        "{body}"
    );
    let remaining = body["remaining"].as_u64().unwrap();
    assert!(
        remaining > 20_000 && remaining <= 30_000,
        "remaining time within the 30 s timeout: {remaining}"
    );
    let logs = log_tail(&headers);
    assert!(
        logs.contains(&format!("\t{request_id}\tINFO\tcjs says hello Ada")),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("\t{request_id}\tWARN\t{{ level: 'warn' }}")),
        "{logs}"
    );

    let (esm, _) = invoke_ok(&server, "esm", r#"{"who":"Grace"}"#);
    assert_eq!(
        esm,
        serde_json::json!({"kind": "esm", "greeting": "hi Grace", "loaded": "top-level await ran"})
    );
    let (cb, _) = invoke_ok(&server, "cb", r#"{"n":21}"#);
    assert_eq!(cb, serde_json::json!({"kind": "callback", "doubled": 42}));
    let (typed, _) = invoke_ok(&server, "typed", "{}");
    assert_eq!(typed["kind"], "module-typed .js");
    let (nested, _) = invoke_ok(&server, "nested", "{}");
    assert_eq!(nested, "nested export");
    server.stop_and_check_clean();
}

const ERRORS: &str = r"
function inner(n) {
  throw new TypeError(`bad input ${n}`);
}
exports.throws = async () => {
  console.log('about to fail');
  inner(42);
};
class QuotaError extends Error {
  constructor(message) {
    super(message);
    this.name = 'QuotaError';
  }
}
exports.rejects = () => Promise.reject(new QuotaError('over quota'));
exports.callback = (event, context, callback) => callback(new Error('through the callback'));
exports.uncaught = async () => {
  setTimeout(() => {
    throw new RangeError('out of range later');
  }, 5);
  await new Promise(() => {});
};
exports.oddName = async () => {
  const err = new Error('odd');
  err.name = 'Odd\r\nName';
  throw err;
};
exports.unhandled = async () => {
  Promise.reject(new Error('nobody awaits me'));
  await new Promise(() => {});
};
";

#[test]
fn thrown_errors_rejected_promises_and_uncaught_exceptions_are_reported_as_lambda_does() {
    let server = TestServer::start(&[]);
    let code = code_dir(&[
        ("errors.js", ERRORS),
        (
            "missing.js",
            "require('not-installed');\nexports.handler = async () => 1;\n",
        ),
        ("syntax.js", "exports.handler = async () => {\n"),
        ("noexport.js", "exports.other = async () => 1;\n"),
    ]);
    for (name, handler) in [
        ("throws", "errors.throws"),
        ("rejects", "errors.rejects"),
        ("callback", "errors.callback"),
        ("uncaught", "errors.uncaught"),
        ("unhandled", "errors.unhandled"),
        ("odd-name", "errors.oddName"),
        ("missing", "missing.handler"),
        ("syntax", "syntax.handler"),
        ("noexport", "noexport.handler"),
    ] {
        server.deploy(name, "nodejs18.x", handler, code.path(), &TIMEOUT);
    }

    let (body, logs) = invoke_err(&server, "throws");
    assert_eq!(body["errorType"], "TypeError", "{body}");
    assert_eq!(body["errorMessage"], "bad input 42");
    let trace = body["trace"].to_string();
    assert!(
        trace.contains("at inner"),
        "the trace names the frames: {body}"
    );
    assert!(logs.contains("INFO\tabout to fail"), "{logs}");
    assert!(logs.contains("Invoke Error"), "{logs}");

    let (body, _) = invoke_err(&server, "rejects");
    assert_eq!(
        (&body["errorType"], &body["errorMessage"]),
        (&"QuotaError".into(), &"over quota".into()),
        "{body}"
    );
    let (body, _) = invoke_err(&server, "callback");
    assert_eq!(body["errorMessage"], "through the callback", "{body}");

    // The error's name is the function's: a line break in it stays in the document.
    let (body, _) = invoke_err(&server, "odd-name");
    assert_eq!(
        (&body["errorType"], &body["errorMessage"]),
        (&"Odd\r\nName".into(), &"odd".into()),
        "{body}"
    );

    // An error nobody catches ends the runtime; it is the invocation's error, and the next
    // invocation runs in a VM of its own.
    for _ in 0..2 {
        let (body, _) = invoke_err(&server, "uncaught");
        assert_eq!(body["errorType"], "RangeError", "{body}");
        assert_eq!(body["errorMessage"], "out of range later");
    }
    let (body, _) = invoke_err(&server, "unhandled");
    assert_eq!(
        body["errorType"], "Runtime.UnhandledPromiseRejection",
        "{body}"
    );
    assert_eq!(body["errorMessage"], "Error: nobody awaits me");

    for (name, error_type, says) in [
        ("missing", "Runtime.ImportModuleError", "not-installed"),
        ("syntax", "Runtime.UserCodeSyntaxError", "SyntaxError"),
        ("noexport", "Runtime.HandlerNotFound", "noexport.js.handler"),
    ] {
        let (body, _) = invoke_err(&server, name);
        assert_eq!(body["errorType"], error_type, "{name}: {body}");
        assert!(
            body["errorMessage"].as_str().unwrap().contains(says),
            "{name}: {body}"
        );
    }

    // Deploying a handler whose file is not in the bundle is refused up front.
    let out = server.cli(&[
        "fn",
        "deploy",
        "nofile",
        "--runtime",
        "nodejs18.x",
        "--handler",
        "absent.handler",
        "--code",
        code.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("absent.js or absent.mjs or absent.cjs"),
        "{stderr}"
    );
    server.stop_and_check_clean();
}

/// Random state from every source a Node function reaches, drawn after module initialization.
const RANDOM_ESM: &str = r"
import crypto, { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
const INIT = Math.random();
export const handler = async () => {
  const seen = fs.existsSync('/tmp/mark');
  fs.writeFileSync('/tmp/mark', 'x');
  return {
    init: INIT,
    math: Math.random(),
    uuid: randomUUID(),
    bytes: randomBytes(16).toString('hex'),
    required: crypto.randomUUID(),
    filled: crypto.randomFillSync(Buffer.alloc(16)).toString('hex'),
    int: crypto.randomInt(2 ** 47),
    values: Buffer.from(crypto.webcrypto.getRandomValues(new Uint8Array(16))).toString('hex'),
    seen,
  };
};
";

#[test]
fn node_vms_restored_from_one_snapshot_do_not_share_random_state() {
    let server = TestServer::start(&[]);
    let code = code_dir(&[("rnd.mjs", RANDOM_ESM)]);
    server.deploy("rnd", "nodejs18.x", "rnd.handler", code.path(), &TIMEOUT);
    let restored = || {
        let (status, headers, body) =
            json(server.invoke_with("rnd", &[("x-ignition-start", "restore")], "{}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-ignition-start"], "restore");
        body
    };
    let (a, b) = (restored(), restored());
    assert_eq!(
        a["init"], b["init"],
        "both come from one snapshot taken after the module loaded"
    );
    let shared: Vec<&str> = [
        "math", "uuid", "bytes", "required", "filled", "int", "values",
    ]
    .into_iter()
    .filter(|key| a[key] == b[key])
    .collect();
    assert!(
        shared.is_empty(),
        "drawn anew in each restored VM, but the same in both: {shared:?}"
    );
    assert_eq!((&a["seen"], &b["seen"]), (&false.into(), &false.into()));
    let uuid = a["uuid"].as_str().unwrap();
    assert_eq!(
        (uuid.len(), &uuid[14..15]),
        (36, "4"),
        "a version 4 UUID: {uuid}"
    );
    let math = a["math"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&math), "{math}");
    assert_eq!(server.get_json("/v1/stats")["worker"]["snapshots_built"], 1);
    server.stop_and_check_clean();
}

/// A Node.js function finds its layers' packages where Lambda's Node.js runtime looks:
/// `/opt/nodejs/node_modules` and `/opt/nodejs/node18/node_modules`.
#[test]
fn a_node_function_requires_packages_from_its_layer() {
    let server = TestServer::start(&[]);
    let (status, _, layer) = json(
        server
            .http()
            .post(format!("{}/2018-10-31/layers/node-libs/versions", server.url))
            .json(&serde_json::json!({
                "Content": {"ZipFile": zip_files(&[
                    ("nodejs/node_modules/shared/index.js", "module.exports = 'shared from /opt';\n"),
                    ("nodejs/node18/node_modules/versioned/index.js", "module.exports = 'for node 18';\n"),
                ])},
                "CompatibleRuntimes": ["nodejs18.x"],
            }))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 201, "{layer}");
    let arn = layer["LayerVersionArn"].as_str().unwrap();
    let code = code_dir(&[(
        "app.js",
        "exports.handler = async () => [require('shared'), require('versioned')];\n",
    )]);
    server.deploy(
        "layered",
        "nodejs18.x",
        "app.handler",
        code.path(),
        &["--timeout", "30", "--layer", arn],
    );
    let (body, _) = invoke_ok(&server, "layered", "{}");
    assert_eq!(body, serde_json::json!(["shared from /opt", "for node 18"]));
    server.stop_and_check_clean();
}
