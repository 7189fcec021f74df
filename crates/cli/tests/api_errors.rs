//! Bad input at the HTTP API gets a clear error and never reaches a VM. The server here is real
//! (store, image, driver), but none of these requests boots a microVM.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use base64::Engine;
use common::{json, TestServer};
use serde_json::json as j;

fn deploy_body(runtime: &str, handler: &str, archive: &[u8]) -> serde_json::Value {
    j!({
        "runtime": runtime,
        "handler": handler,
        "code": base64::engine::general_purpose::STANDARD.encode(archive),
    })
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn tar_gz_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn put(server: &TestServer, name: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let resp = server
        .http()
        .put(format!("{}/v1/functions/{name}", server.url))
        .json(body)
        .send()
        .unwrap();
    let (s, _, b) = json(resp);
    (s, b)
}

#[test]
fn bad_requests_get_clear_errors() {
    let server = TestServer::start(&[]);
    let ok_zip = zip_of(&[("app.py", b"def handler(e, c):\n    return 1\n")]);

    // Deploys: zip and tar.gz are both accepted; a redeploy answers 200.
    assert_eq!(
        put(
            &server,
            "z",
            &deploy_body("python3", "app.handler", &ok_zip)
        )
        .0,
        201
    );
    assert_eq!(
        put(
            &server,
            "z",
            &deploy_body("python3", "app.handler", &ok_zip)
        )
        .0,
        200
    );
    let tgz = tar_gz_of(&[("pkg/mod.py", b"def h(e, c):\n    return 1\n")]);
    assert_eq!(
        put(&server, "t", &deploy_body("python3.11", "pkg.mod.h", &tgz)).0,
        201
    );
    // A Python the guest image does not have is refused, naming what it has.
    let (s, b) = put(&server, "t2", &deploy_body("python3.12", "pkg.mod.h", &tgz));
    assert_eq!(s, 400, "{b}");
    assert!(
        b["errorMessage"].as_str().unwrap().contains("python3.11"),
        "{b}"
    );

    // Unknown function.
    let (s, h, b) = json(server.invoke("nope", "{}"));
    assert_eq!(s, 404);
    assert_eq!(h["x-amzn-errortype"], "ResourceNotFoundException");
    assert!(b["errorMessage"].as_str().unwrap().contains("nope"));

    // Invalid name.
    let (s, _, b) = json(server.invoke("bad.name", "{}"));
    assert_eq!(s, 400, "{b}");
    assert!(b["errorMessage"].as_str().unwrap().contains("bad.name"));
    let (s, _) = put(
        &server,
        &"x".repeat(65),
        &deploy_body("python3", "app.handler", &ok_zip),
    );
    assert_eq!(s, 400);

    // Payload over 6 MiB.
    let big = format!("\"{}\"", "a".repeat(6 * 1024 * 1024 + 10));
    let (s, h, _) = json(server.invoke("z", &big));
    assert_eq!(s, 413);
    assert_eq!(h["x-amzn-errortype"], "RequestTooLargeException");

    // Payload that is not JSON.
    let (s, h, _) = json(server.invoke("z", "{not json"));
    assert_eq!(s, 400);
    assert_eq!(h["x-amzn-errortype"], "InvalidRequestContentException");

    // Corrupt archive.
    let mut corrupt = ok_zip.clone();
    corrupt.truncate(corrupt.len() / 2);
    let (s, b) = put(
        &server,
        "c",
        &deploy_body("python3", "app.handler", &corrupt),
    );
    assert_eq!(s, 400);
    assert!(
        b["errorMessage"].as_str().unwrap().contains("corrupt"),
        "{b}"
    );
    let (s, b) = put(
        &server,
        "c",
        &deploy_body("python3", "app.handler", b"plain text"),
    );
    assert_eq!(s, 400);
    assert!(
        b["errorMessage"]
            .as_str()
            .unwrap()
            .contains("not a zip or tar.gz"),
        "{b}"
    );

    // The handler's file is missing from the bundle.
    let (s, b) = put(
        &server,
        "m",
        &deploy_body("python3", "main.handler", &ok_zip),
    );
    assert_eq!(s, 400);
    assert!(
        b["errorMessage"].as_str().unwrap().contains("main.py"),
        "{b}"
    );
    let (s, b) = put(&server, "p", &deploy_body("provided", "x", &ok_zip));
    assert_eq!(s, 400);
    assert!(
        b["errorMessage"].as_str().unwrap().contains("bootstrap"),
        "{b}"
    );

    // Path traversal in the archive is refused, naming the entry.
    let evil = zip_of(&[("app.py", b"x"), ("../../etc/evil", b"x")]);
    let (s, b) = put(&server, "e", &deploy_body("python3", "app.handler", &evil));
    assert_eq!(s, 400);
    assert!(
        b["errorMessage"]
            .as_str()
            .unwrap()
            .contains("../../etc/evil"),
        "{b}"
    );

    // Out-of-range configuration names the field.
    let mut body = deploy_body("python3", "app.handler", &ok_zip);
    body["memory_mib"] = j!(1);
    let (s, b) = put(&server, "mem", &body);
    assert_eq!(s, 400);
    assert!(
        b["errorMessage"].as_str().unwrap().contains("memory"),
        "{b}"
    );
    let (s, b) = put(&server, "rt", &deploy_body("cobol", "app.handler", &ok_zip));
    assert_eq!(s, 400);
    assert!(
        b["errorMessage"].as_str().unwrap().contains("runtime"),
        "{b}"
    );
    let (s, b) = put(&server, "junk", &j!({"runtime": "python3"}));
    assert_eq!(s, 400);
    assert!(
        b["errorMessage"].as_str().unwrap().contains("handler"),
        "{b}"
    );

    // Nothing failed was stored.
    let resp = server
        .http()
        .get(format!("{}/v1/functions", server.url))
        .send()
        .unwrap();
    let (_, _, list) = json(resp);
    let names: Vec<_> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["t", "z"]);
    let resp = server
        .http()
        .delete(format!("{}/v1/functions/none", server.url))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    server.stop_and_check_clean();
}

#[test]
fn asking_for_firecracker_where_it_is_missing_fails_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--vmm", "firecracker"])
        .args(["--firecracker", "/nonexistent/firecracker", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot run /nonexistent/firecracker"), "{err}");
}
