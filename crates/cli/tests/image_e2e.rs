//! Functions packaged as container images, end to end in real microVMs: an image the test
//! builds itself (bash and its libraries from the host, a bash Lambda runtime as its entry
//! point), pushed to a real registry on loopback (Debian's `docker-registry`, with skopeo) and
//! deployed by reference, or deployed from an archive; what its process sees in the VM; a tag
//! that moves; and images the node refuses.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{host_kernel_release, json, repo_root, TestServer};
use serde_json::{json, Value};

/// A file of a layer: its path, mode, owner and bytes (`None`: a directory).
struct Entry {
    path: String,
    mode: u32,
    uid: u64,
    body: Option<Vec<u8>>,
}

fn file(path: &str, mode: u32, body: impl Into<Vec<u8>>) -> Entry {
    Entry {
        path: path.to_owned(),
        mode,
        uid: 0,
        body: Some(body.into()),
    }
}

fn dir(path: &str, uid: u64) -> Entry {
    Entry {
        path: path.to_owned(),
        mode: 0o755,
        uid,
        body: None,
    }
}

fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if e.body.is_some() {
            tar::EntryType::Regular
        } else {
            tar::EntryType::Directory
        });
        let body = e.body.clone().unwrap_or_default();
        h.set_size(body.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        // Raw names, so that a hostile `../x` goes in as it is.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        h.set_cksum();
        b.append(&h, &body[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// `/bin/bash` and the shared libraries it loads, from the host (Debian, as the guest).
/// A layer of symbolic links, `(path, target)`.
fn links(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, target) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_cksum();
        b.append_link(&mut h, path, target).unwrap();
    }
    b.into_inner().unwrap()
}

fn bash_layer() -> Vec<u8> {
    let out = Command::new("ldd").arg("/bin/bash").output().unwrap();
    let mut entries = vec![
        file("bin/bash", 0o755, std::fs::read("/bin/bash").unwrap()),
        // A lower layer's file that the upper one deletes.
        file("app/old.txt", 0o644, "deleted by a whiteout"),
    ];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux... (0x...)`
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            entries.push(file(
                p.trim_start_matches('/'),
                0o755,
                std::fs::read(p).unwrap(),
            ));
        }
    }
    layer(&entries)
}

/// The image: bash, then the app whose message is `message`; `entry_mode` is its entry
/// point's.
fn app_layer(message: &str, entry_mode: u32) -> Vec<u8> {
    let bootstrap =
        std::fs::read(repo_root().join("crates/cli/tests/fixtures/image/bootstrap")).unwrap();
    layer(&[
        dir("app", 1000),
        file("app/bootstrap", entry_mode, bootstrap),
        file("app/message.txt", 0o644, message),
        file("app/.wh.old.txt", 0o644, ""),
        file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000::/app:/bin/bash\n",
        ),
        file("etc/group", 0o644, "root:x:0:\napp:x:1000:\n"),
    ])
}

fn image_config() -> Value {
    json!({
        "Entrypoint": ["/app/bootstrap"],
        "Cmd": ["hello.handler"],
        "Env": ["PATH=/bin", "GREETING=hello from the image"],
        "WorkingDir": "/app",
        "User": "app",
    })
}

/// Writes an OCI layout of `layers` at `dir`; its manifest digest.
fn layout(dir: &Path, layers: &[Vec<u8>]) -> String {
    ignition_oci::layout::write(dir, layers, &image_config(), "amd64", "latest").unwrap()
}

/// A registry on loopback, storing in a temporary directory.
fn registry() -> ignition_oci::test_registry::TestRegistry {
    ignition_oci::test_registry::start(ignition_oci::test_registry::Auth::None).unwrap()
}

fn push(layout_dir: &Path, dest: &str) {
    ignition_oci::test_registry::push(layout_dir, dest, None).unwrap();
}

/// Deploys through the CLI; its stdout, or its stderr as the error.
fn deploy(server: &TestServer, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["fn", "deploy"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--timeout", "30"]);
    let out = server.cli(&all);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn invoke_ok(server: &TestServer, name: &str) -> Value {
    let (status, headers, body) = json(server.invoke(name, r#"{"k":"v"}"#));
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.get("x-amz-function-error").is_none(),
        "{name}: {body}"
    );
    body
}

fn lambda(server: &TestServer, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = server
        .http()
        .request(method, format!("{}{path}", server.url))
        .json(&body)
        .send()
        .unwrap();
    let (status, _, body) = json(resp);
    (status, body)
}

#[test]
fn a_container_image_from_a_registry_runs_as_a_function_and_keeps_its_digest() {
    let reg = registry();
    let work = tempfile::tempdir().unwrap();
    let base = bash_layer();
    let v1 = layout(
        &work.path().join("v1"),
        &[base.clone(), app_layer("version one", 0o755)],
    );
    let tag = format!("{}/hello:1", reg.addr);
    push(&work.path().join("v1"), &tag);
    let server = TestServer::start(&["--insecure-registry", &reg.addr]);

    deploy(&server, &["img", "--image", &tag]).unwrap();
    let ls = String::from_utf8(server.cli(&["fn", "ls"]).stdout).unwrap();
    let row = ls.lines().find(|l| l.starts_with("img ")).unwrap();
    assert!(row.contains(" image ") && row.contains(&tag), "{ls}");
    let body = invoke_ok(&server, "img");
    assert_eq!(body["uid"], 1000, "the image's USER: {body}");
    assert_eq!(body["cwd"], "/app", "its WORKDIR");
    assert_eq!(body["greeting"], "hello from the image", "its ENV");
    assert_eq!(
        body["args"], "hello.handler",
        "its CMD after its ENTRYPOINT"
    );
    assert_eq!(body["message"], "version one");
    assert_eq!(body["function"], "img");
    assert_eq!(body["event_bytes"], 9);
    assert!(
        body["written"].as_str().unwrap().starts_with("written by "),
        "the image's root is writable: {body}"
    );
    assert_ne!(body["kernel"].as_str().unwrap(), host_kernel_release());
    // Again: a VM restored from the function's snapshot, or one from its pool.
    assert_eq!(invoke_ok(&server, "img")["message"], "version one");

    // Lambda's view: the package type, the image as named and as resolved.
    let (status, got) = lambda(
        &server,
        reqwest::Method::GET,
        "/2015-03-31/functions/img",
        json!(null),
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["Configuration"]["PackageType"], "Image");
    assert!(got["Configuration"].get("Runtime").is_none(), "{got}");
    assert_eq!(
        got["Configuration"]["CodeSha256"],
        v1.trim_start_matches("sha256:")
    );
    assert_eq!(got["Code"]["ImageUri"], tag.as_str());
    assert_eq!(
        got["Code"]["ResolvedImageUri"],
        format!("{}/hello@{v1}", reg.addr)
    );

    // CreateFunction, Lambda's way, with an ImageConfig; and what Lambda refuses with it.
    let (status, created) = lambda(
        &server,
        reqwest::Method::POST,
        "/2015-03-31/functions",
        json!({"FunctionName": "viaapi", "PackageType": "Image", "Code": {"ImageUri": tag},
               "ImageConfig": {"WorkingDirectory": "/tmp", "EntryPoint": ["/app/bootstrap", "api"]},
               "Role": "arn:aws:iam::000000000000:role/x", "Timeout": 30}),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["PackageType"], "Image");
    let body = invoke_ok(&server, "viaapi");
    assert_eq!(body["cwd"], "/tmp");
    assert_eq!(
        body["args"], "api",
        "an EntryPoint given alone drops the image's CMD"
    );
    for (bad, why) in [
        (
            json!({"FunctionName": "bad1", "PackageType": "Image", "Code": {"ImageUri": tag}, "Runtime": "python3.11"}),
            "Runtime",
        ),
        (
            json!({"FunctionName": "bad2", "PackageType": "Image", "Code": {"ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}}),
            "ImageUri",
        ),
        (
            json!({"FunctionName": "bad3", "PackageType": "Image", "Code": {"ImageUri": tag}, "ImageConfig": {"WorkingDirectory": "relative"}}),
            "WorkingDirectory",
        ),
    ] {
        let (status, e) = lambda(&server, reqwest::Method::POST, "/2015-03-31/functions", bad);
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["errorType"], "InvalidParameterValueException", "{e}");
        assert!(e.to_string().contains(why), "{why}: {e}");
    }

    // The tag moves; the function does not until its code is updated.
    let v2 = layout(
        &work.path().join("v2"),
        &[base, app_layer("version two", 0o755)],
    );
    push(&work.path().join("v2"), &tag);
    assert_eq!(invoke_ok(&server, "img")["message"], "version one");
    let (status, updated) = lambda(
        &server,
        reqwest::Method::PUT,
        "/2015-03-31/functions/img/code",
        json!({ "ImageUri": tag }),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["CodeSha256"], v2.trim_start_matches("sha256:"));
    assert_eq!(invoke_ok(&server, "img")["message"], "version two");

    // ImageConfig overrides the image's CMD.
    let (status, c) = lambda(
        &server,
        reqwest::Method::PUT,
        "/2015-03-31/functions/img/configuration",
        json!({ "ImageConfig": { "Command": ["other.handler"] } }),
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        c["ImageConfigResponse"]["ImageConfig"]["Command"],
        json!(["other.handler"])
    );
    assert_eq!(invoke_ok(&server, "img")["args"], "other.handler");

    // Images the node refuses at deploy, each with its reason; nothing is created.
    let missing = deploy(
        &server,
        &["nope", "--image", &format!("{}/none:1", reg.addr)],
    );
    assert!(missing.unwrap_err().contains("does not exist"));
    let evil_dir = work.path().join("evil");
    layout(&evil_dir, &[layer(&[file("../escape", 0o644, "x")])]);
    push(&evil_dir, &format!("{}/evil:1", reg.addr));
    let evil = deploy(
        &server,
        &["evil", "--image", &format!("{}/evil:1", reg.addr)],
    );
    let evil = evil.unwrap_err();
    assert!(
        evil.contains("InvalidParameterValueException") && evil.contains("`..`"),
        "{evil}"
    );
    let tampered_dir = work.path().join("tampered");
    layout(
        &tampered_dir,
        &[layer(&[file("app/x", 0o644, "the real bytes")])],
    );
    push(&tampered_dir, &format!("{}/tampered:1", reg.addr));
    // Its layer's blob, changed in the registry's storage after the push.
    let layer_hex = walk(&tampered_dir.join("blobs"))
        .into_iter()
        .find(|b| std::fs::read(b).unwrap().starts_with(&[0x1f, 0x8b]))
        .and_then(|b| b.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap();
    let stored = reg
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer_hex[..2])
        .join(&layer_hex)
        .join("data");
    let mut bytes = std::fs::read(&stored).unwrap();
    let n = bytes.len();
    bytes[n - 9] ^= 0xff; // the gzip trailer's CRC: the same length, another digest
    std::fs::write(&stored, bytes).unwrap();
    let tampered = deploy(
        &server,
        &["tampered", "--image", &format!("{}/tampered:1", reg.addr)],
    );
    assert!(tampered.unwrap_err().contains("does not match its digest"));
    for name in ["nope", "evil", "tampered"] {
        let (status, _) = lambda(
            &server,
            reqwest::Method::GET,
            &format!("/2015-03-31/functions/{name}"),
            json!(null),
        );
        assert_eq!(status, 404, "{name} was not created");
    }
    assert!(!work.path().join("escape").exists());
    server.stop_and_check_clean();
}

#[test]
fn an_image_archive_deploys_without_a_registry() {
    let work = tempfile::tempdir().unwrap();
    let base = bash_layer();
    // Where the agent mounts inside the image, the image planted links to the guest's own
    // directories: the agent replaces them, and mounts nothing over its own root.
    let planted = links(&[("proc", "/etc"), ("tmp", "/var/runtime"), ("dev", "/")]);
    layout(
        &work.path().join("img"),
        &[base.clone(), app_layer("from an archive", 0o755), planted],
    );
    let archive = work.path().join("img.tar");
    ignition_oci::layout::archive(&work.path().join("img"), &archive).unwrap();
    let server = TestServer::start(&[]);
    deploy(
        &server,
        &["arch", "--image-archive", archive.to_str().unwrap()],
    )
    .unwrap();
    let body = invoke_ok(&server, "arch");
    assert_eq!(body["message"], "from an archive");
    assert_eq!(body["uid"], 1000);
    assert_ne!(
        body["kernel"].as_str().unwrap(),
        host_kernel_release(),
        "/proc is the guest's"
    );
    assert_eq!(invoke_ok(&server, "arch")["message"], "from an archive");

    // An entry point that is not executable: refused at deploy.
    layout(
        &work.path().join("noexec"),
        &[base.clone(), app_layer("x", 0o644)],
    );
    let noexec = work.path().join("noexec.tar");
    ignition_oci::layout::archive(&work.path().join("noexec"), &noexec).unwrap();
    let refused = deploy(
        &server,
        &["noexec", "--image-archive", noexec.to_str().unwrap()],
    );
    let refused = refused.unwrap_err();
    assert!(
        refused.contains("InvalidParameterValueException") && refused.contains("not executable"),
        "{refused}"
    );
    // One that is executable but cannot start (its interpreter is not in the image): deployed,
    // and its invocation is the function's init error, as on Lambda, not the node's.
    let broken = layer(&[
        dir("app", 1000),
        file("app/bootstrap", 0o755, "#!/no/such/interpreter\n"),
        file("app/message.txt", 0o644, "x"),
        file("etc/passwd", 0o644, "app:x:1000:1000::/app:/bin/bash\n"),
    ]);
    layout(&work.path().join("broken"), &[base, broken]);
    let broken = work.path().join("broken.tar");
    ignition_oci::layout::archive(&work.path().join("broken"), &broken).unwrap();
    deploy(
        &server,
        &["broken", "--image-archive", broken.to_str().unwrap()],
    )
    .unwrap();
    let (status, headers, body) = json(server.invoke("broken", "{}"));
    assert_eq!(status, 200, "{body}");
    assert!(headers.get("x-amz-function-error").is_some(), "{body}");
    assert_eq!(body["errorType"], "Runtime.InvalidEntrypoint", "{body}");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("/app/bootstrap"),
        "{body}"
    );

    // Not an archive: refused with its reason.
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar").unwrap();
    let refused = deploy(
        &server,
        &["junk", "--image-archive", junk.to_str().unwrap()],
    );
    assert!(refused
        .unwrap_err()
        .contains("InvalidParameterValueException"));
    // Uploads, accepted or refused, leave no scratch in the image cache.
    let cache = server.data_dir.path().join("images");
    let scratch: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    server.stop_and_check_clean();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
