//! Pulls from a real registry (Debian's `docker-registry`, on loopback, plain HTTP as an
//! insecure registry) and reads real archives (`skopeo` writes the `docker save` one). Every
//! image is built by the test itself; nothing is pulled from outside.
#![cfg(feature = "registry-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ignition_oci::{ImageError, Images, ImagesOptions, RegistryOptions};

/// A layer's files: `(path, body)`, a body of `None` being a directory.
type Files<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

/// A layer (an uncompressed tar) of `(path, body)` files; a body of `None` is a directory.
fn layer(files: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in files {
        let mut h = tar::Header::new_gnu();
        match body {
            Some(body) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(body.len() as u64);
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
            }
        }
        h.set_mode(0o755);
        // Raw names, so that a hostile `../x` goes in as it is.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, body.unwrap_or_default()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes an OCI image layout at `dir` with one image of `layers`, for `arch`; returns the
/// manifest's digest.
fn layout(dir: &Path, layers: &[Files<'_>], arch: &str) -> String {
    let tars: Vec<Vec<u8>> = layers.iter().map(|files| layer(files)).collect();
    let config = serde_json::json!({"Entrypoint": ["/bin/run"], "Cmd": ["app.handler"],
        "Env": ["PATH=/bin", "GREETING=hi"], "WorkingDir": "/app", "User": "1000:1000"});
    ignition_oci::layout::write(dir, &tars, &config, arch, "latest").unwrap()
}

fn tar_dir(dir: &Path, out: &Path) {
    ignition_oci::layout::archive(dir, out).unwrap();
}

fn hello_layers() -> Vec<Files<'static>> {
    vec![
        vec![
            ("bin/", None),
            ("bin/run", Some(b"#!/bin/sh\necho run\n")),
            ("app/", None),
            ("app/old", Some(b"old")),
        ],
        vec![
            ("app/.wh.old", Some(b"")),
            ("app/handler.txt", Some(b"hello from the image")),
        ],
    ]
}

/// Reads `path` from the ext4 image at `image` with debugfs (no mount needed).
fn read_from_image(image: &Path, path: &str) -> Option<Vec<u8>> {
    let debugfs = ["/usr/sbin/debugfs", "/sbin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let out = Command::new(debugfs)
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !stderr.contains("not found")).then_some(out.stdout)
}

type Registry = ignition_oci::test_registry::TestRegistry;
use ignition_oci::test_registry::Auth;

fn registry() -> Registry {
    registry_with(Auth::None)
}

/// A registry that takes only `user:password` (HTTP basic, from an htpasswd file), when given.
fn registry_with_auth(user: Option<(&str, &str)>) -> Registry {
    registry_with(match user {
        Some((u, p)) => Auth::Basic(u, p),
        None => Auth::None,
    })
}

fn registry_with(auth: Auth<'_>) -> Registry {
    ignition_oci::test_registry::start(auth).unwrap()
}

fn push(layout_dir: &Path, dest: &str) {
    push_as(layout_dir, dest, None);
}

fn push_as(layout_dir: &Path, dest: &str, creds: Option<&str>) {
    ignition_oci::test_registry::push(layout_dir, dest, creds).unwrap();
}

fn images(dir: &Path, insecure: &str, timeout: Duration) -> Images {
    Images::new(
        dir,
        ImagesOptions {
            registry: RegistryOptions {
                insecure: vec![insecure.to_owned()],
                timeout,
                ..Default::default()
            },
            max_image_bytes: 64 << 20,
            cache_bytes: 1 << 30,
            drive_bytes: 256 << 20,
        },
    )
    .unwrap()
}

fn cached_images(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "img"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_pushed_to_a_registry_is_pulled_verified_and_flattened() {
    let reg = registry();
    let work = tempfile::tempdir().unwrap();
    let digest = layout(&work.path().join("hello"), &hello_layers(), "amd64");
    push(&work.path().join("hello"), &format!("{}/hello:1", reg.addr));
    let cache = work.path().join("cache");
    let images = images(&cache, &reg.addr, Duration::from_secs(30));

    let got = images.pull(&format!("{}/hello:1", reg.addr)).await.unwrap();
    assert_eq!(
        got.image.digest, digest,
        "skopeo keeps the manifest as built"
    );
    assert_eq!(
        got.pinned.as_deref(),
        Some(format!("{}/hello@{digest}", reg.addr).as_str())
    );
    assert_eq!(got.image.config.entrypoint, ["/bin/run"]);
    assert_eq!(got.image.config.working_dir, "/app");
    assert_eq!(
        read_from_image(&got.image.path, "/app/handler.txt").unwrap(),
        b"hello from the image"
    );
    assert!(
        read_from_image(&got.image.path, "/app/old").is_none(),
        "the whiteout removed it"
    );
    assert!(read_from_image(&got.image.path, "/bin/run").is_some());

    // By digest, and again by tag: the cache answers, one image for both.
    let again = images
        .pull(&format!("{}/hello@{digest}", reg.addr))
        .await
        .unwrap();
    assert_eq!(again.image.path, got.image.path);
    assert_eq!(cached_images(&cache), 1);

    // A tag that moves resolves to the new manifest.
    let mut v2 = hello_layers();
    v2[1][1] = ("app/handler.txt", Some(b"version two"));
    let digest2 = layout(&work.path().join("hello2"), &v2, "amd64");
    push(
        &work.path().join("hello2"),
        &format!("{}/hello:1", reg.addr),
    );
    let moved = images.pull(&format!("{}/hello:1", reg.addr)).await.unwrap();
    assert_eq!(moved.image.digest, digest2);
    assert_eq!(
        read_from_image(&moved.image.path, "/app/handler.txt").unwrap(),
        b"version two"
    );

    // Bad input, each its own error, nothing cached.
    let missing = images
        .pull(&format!("{}/nothing:1", reg.addr))
        .await
        .unwrap_err();
    assert!(matches!(missing, ImageError::NotFound(_)), "{missing}");
    let no_tag = images
        .pull(&format!("{}/hello:nope", reg.addr))
        .await
        .unwrap_err();
    assert!(matches!(no_tag, ImageError::NotFound(_)), "{no_tag}");
    assert!(matches!(
        images.pull("Not A Reference").await.unwrap_err(),
        ImageError::InvalidReference { .. }
    ));
    assert_eq!(cached_images(&cache), 2);
    drop(reg);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_blob_a_hostile_layer_and_a_foreign_platform_are_refused() {
    let reg = registry();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let images = images(&cache, &reg.addr, Duration::from_secs(30));

    // A layer blob changed in the registry's storage after the push.
    layout(
        &work.path().join("t"),
        &[vec![("f", Some(b"the real bytes"))]],
        "amd64",
    );
    push(&work.path().join("t"), &format!("{}/tampered:1", reg.addr));
    let mut tampered = 0;
    for e in walk(&reg.storage.join("docker/registry/v2/blobs")) {
        if e.ends_with("data") {
            let bytes = std::fs::read(&e).unwrap();
            if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut other = bytes.clone();
                let n = other.len();
                other[n - 9] ^= 0xff; // inside the gzip trailer's CRC: same length, other digest
                std::fs::write(&e, other).unwrap();
                tampered += 1;
            }
        }
    }
    assert_eq!(tampered, 1);
    let e = images
        .pull(&format!("{}/tampered:1", reg.addr))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");

    // A layer with `../`.
    let outside = work.path().join("escape");
    layout(
        &work.path().join("evil"),
        &[vec![("../escape", Some(b"x"))]],
        "amd64",
    );
    push(&work.path().join("evil"), &format!("{}/evil:1", reg.addr));
    let e = images
        .pull(&format!("{}/evil:1", reg.addr))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::BadLayer { layer: 1, .. }), "{e}");
    assert!(e.to_string().contains("`..`"), "{e}");
    assert!(!outside.exists());

    // An image for another platform.
    layout(
        &work.path().join("arm"),
        &[vec![("f", Some(b"x"))]],
        "arm64",
    );
    push(&work.path().join("arm"), &format!("{}/arm:1", reg.addr));
    let e = images
        .pull(&format!("{}/arm:1", reg.addr))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::NoPlatform { .. }), "{e}");

    assert_eq!(cached_images(&cache), 0, "nothing half-stored");
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "no scratch left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stalls_times_out_and_https_is_the_default() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let images = images(&work.path().join("cache"), &addr, Duration::from_secs(2));
    let started = std::time::Instant::now();
    let e = images.pull(&format!("{addr}/stalled:1")).await.unwrap_err();
    assert!(matches!(e, ImageError::Unreachable { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(listener);

    // A registry not listed as insecure is spoken to over HTTPS, which a plain HTTP one fails.
    let reg = registry();
    let strict = images_with(&work.path().join("cache2"), Vec::new());
    layout(&work.path().join("h"), &hello_layers(), "amd64");
    push(&work.path().join("h"), &format!("{}/hello:1", reg.addr));
    let e = strict
        .pull(&format!("{}/hello:1", reg.addr))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Refused { .. } | ImageError::Unreachable { .. }
        ),
        "{e}"
    );
}

fn images_with(dir: &Path, insecure: Vec<String>) -> Images {
    Images::new(
        dir,
        ImagesOptions {
            registry: RegistryOptions {
                insecure,
                timeout: Duration::from_secs(10),
                ..Default::default()
            },
            max_image_bytes: 64 << 20,
            cache_bytes: 1 << 30,
            drive_bytes: 256 << 20,
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn archives_in_both_formats_give_the_same_filesystem() {
    let work = tempfile::tempdir().unwrap();
    let layout_dir = work.path().join("hello");
    let digest = layout(&layout_dir, &hello_layers(), "amd64");
    let oci_tar = work.path().join("hello-oci.tar");
    tar_dir(&layout_dir, &oci_tar);
    let images = images(
        &work.path().join("cache"),
        "unused:1",
        Duration::from_secs(10),
    );

    let oci = images.from_archive(&oci_tar, "hello-oci.tar").unwrap();
    assert_eq!(
        oci.image.digest, digest,
        "known by its manifest, as when pulled"
    );
    assert!(oci.pinned.is_none());
    assert_eq!(
        read_from_image(&oci.image.path, "/app/handler.txt").unwrap(),
        b"hello from the image"
    );

    // `docker save`'s older format, written by skopeo.
    let docker_tar = work.path().join("hello-docker.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--insecure-policy"])
        .arg(format!("oci:{}:latest", layout_dir.display()))
        .arg(format!("docker-archive:{}:hello:1", docker_tar.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docker = images
        .from_archive(&docker_tar, "hello-docker.tar")
        .unwrap();
    assert_eq!(
        read_from_image(&docker.image.path, "/app/handler.txt").unwrap(),
        b"hello from the image"
    );
    assert_eq!(docker.image.config, oci.image.config);

    // A tampered layer in an OCI archive; an index without linux/amd64; not an archive.
    let bad_dir = work.path().join("bad");
    layout(&bad_dir, &[vec![("f", Some(b"x"))]], "amd64");
    for e in walk(&bad_dir.join("blobs")) {
        let bytes = std::fs::read(&e).unwrap();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut other = bytes.clone();
            let n = other.len();
            other[n - 9] ^= 0xff;
            std::fs::write(&e, other).unwrap();
        }
    }
    let bad_tar = work.path().join("bad.tar");
    tar_dir(&bad_dir, &bad_tar);
    let e = images.from_archive(&bad_tar, "bad.tar").unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    let arm_dir = work.path().join("arm");
    layout(&arm_dir, &[vec![("f", Some(b"x"))]], "arm64");
    let arm_tar = work.path().join("arm.tar");
    tar_dir(&arm_dir, &arm_tar);
    let e = images.from_archive(&arm_tar, "arm.tar").unwrap_err();
    assert!(matches!(e, ImageError::NoPlatform { .. }), "{e}");
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all").unwrap();
    assert!(matches!(
        images.from_archive(&junk, "junk.tar").unwrap_err(),
        ImageError::Malformed(_)
    ));
    // Read again, the OCI archive is the image already cached; the older format has no
    // manifest, so its image is known by its configuration's digest: a second entry.
    assert_eq!(
        images.from_archive(&oci_tar, "again").unwrap().image.path,
        oci.image.path
    );
    assert_eq!(cached_images(&work.path().join("cache")), 2);
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

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_wants_credentials_gets_them_and_refuses_strangers() {
    let reg = registry_with_auth(Some(("puller", "s3cret")));
    let work = tempfile::tempdir().unwrap();
    layout(&work.path().join("h"), &hello_layers(), "amd64");
    push_as(
        &work.path().join("h"),
        &format!("{}/private:1", reg.addr),
        Some("puller:s3cret"),
    );
    let reference = format!("{}/private:1", reg.addr);

    let anonymous = images(&work.path().join("c1"), &reg.addr, Duration::from_secs(30));
    let e = anonymous.pull(&reference).await.unwrap_err();
    assert!(matches!(e, ImageError::Refused { .. }), "{e}");

    let with = |password: &str| {
        let mut credentials = std::collections::HashMap::new();
        credentials.insert(
            reg.addr.clone(),
            ignition_oci::Credentials {
                username: "puller".into(),
                password: password.into(),
            },
        );
        Images::new(
            &work.path().join(format!("c-{password}")),
            ImagesOptions {
                registry: RegistryOptions {
                    insecure: vec![reg.addr.clone()],
                    credentials,
                    timeout: Duration::from_secs(30),
                },
                max_image_bytes: 64 << 20,
                cache_bytes: 1 << 30,
                drive_bytes: 256 << 20,
            },
        )
        .unwrap()
    };
    let got = with("s3cret").pull(&reference).await.unwrap();
    assert_eq!(
        read_from_image(&got.image.path, "/app/handler.txt").unwrap(),
        b"hello from the image"
    );
    let e = with("wrong").pull(&reference).await.unwrap_err();
    assert!(matches!(e, ImageError::Refused { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_over_the_limit_is_refused_from_a_registry_and_from_an_archive() {
    let reg = registry();
    let work = tempfile::tempdir().unwrap();
    // Incompressible: its compressed layer is as large as its content.
    let noise: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    layout(
        &work.path().join("big"),
        &[vec![("noise", Some(&noise[..]))]],
        "amd64",
    );
    push(&work.path().join("big"), &format!("{}/big:1", reg.addr));
    let small = Images::new(
        &work.path().join("cache"),
        ImagesOptions {
            registry: RegistryOptions {
                insecure: vec![reg.addr.clone()],
                timeout: Duration::from_secs(30),
                ..Default::default()
            },
            max_image_bytes: 2 << 20,
            cache_bytes: 1 << 30,
            drive_bytes: 256 << 20,
        },
    )
    .unwrap();
    let e = small
        .pull(&format!("{}/big:1", reg.addr))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageError::TooLarge { limit_mib: 2, .. }),
        "{e}"
    );
    let tar = work.path().join("big.tar");
    tar_dir(&work.path().join("big"), &tar);
    let e = small.from_archive(&tar, "big.tar").unwrap_err();
    assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    assert_eq!(cached_images(&work.path().join("cache")), 0);
}

/// A token server as Docker's token authentication specifies it: `GET /token?service=&scope=`
/// with the client's basic credentials (`puller:s3cret` only) answers a JWT (ES256, its
/// certificate in `x5c`) granting the scope asked for. Returns its realm URL, the certificate
/// (PEM), and how many tokens it issued.
fn token_server() -> (
    String,
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use base64::Engine;
    use std::io::{BufRead, Write};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["token-issuer".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&issued);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap_or_default();
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("puller:s3cret")
                );
                if line.to_ascii_lowercase().starts_with("authorization:")
                    && line.trim_end().ends_with(&expected)
                {
                    authorized = true;
                }
            }
            let mut out = stream;
            if !authorized {
                let _ = out.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            // scope=repository:NAME:ACTIONS
            let target = request
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let scope = target
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("scope="))
                .map(|s| s.replace("%3A", ":").replace("%2C", ","))
                .unwrap_or_default();
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            let access = match parts.as_slice() {
                [kind, name, actions] => {
                    serde_json::json!([{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}])
                }
                _ => serde_json::json!([]),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
            let claims = serde_json::json!({"iss": "test-issuer", "sub": "puller", "aud": "test-registry",
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": now.to_string(), "access": access});
            let signing_input = format!(
                "{}.{}",
                b64.encode(serde_json::to_vec(&header).unwrap()),
                b64.encode(serde_json::to_vec(&claims).unwrap())
            );
            let signature = signer.sign(&rng, signing_input.as_bytes()).unwrap();
            let token = format!("{signing_input}.{}", b64.encode(signature.as_ref()));
            let body =
                serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                    .to_string();
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = out.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    .as_bytes(),
            );
        }
    });
    (realm, cert.pem(), issued)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_behind_a_token_server_is_pulled_from_with_a_token_for_the_credentials() {
    let (realm, cert, issued) = token_server();
    let reg = registry_with(Auth::Token(&realm, &cert));
    let work = tempfile::tempdir().unwrap();
    layout(&work.path().join("h"), &hello_layers(), "amd64");
    push_as(
        &work.path().join("h"),
        &format!("{}/tokened:1", reg.addr),
        Some("puller:s3cret"),
    );
    let pushed = issued.load(std::sync::atomic::Ordering::Relaxed);
    assert!(pushed > 0, "skopeo's push went through the token server");
    let reference = format!("{}/tokened:1", reg.addr);

    let anonymous = images(&work.path().join("c1"), &reg.addr, Duration::from_secs(30));
    let e = anonymous.pull(&reference).await.unwrap_err();
    assert!(matches!(e, ImageError::Refused { .. }), "{e}");

    let mut credentials = std::collections::HashMap::new();
    credentials.insert(
        reg.addr.clone(),
        ignition_oci::Credentials {
            username: "puller".into(),
            password: "s3cret".into(),
        },
    );
    let with = Images::new(
        &work.path().join("c2"),
        ImagesOptions {
            registry: RegistryOptions {
                insecure: vec![reg.addr.clone()],
                credentials,
                timeout: Duration::from_secs(30),
            },
            max_image_bytes: 64 << 20,
            cache_bytes: 1 << 30,
            drive_bytes: 256 << 20,
        },
    )
    .unwrap();
    let got = with.pull(&reference).await.unwrap();
    assert_eq!(
        read_from_image(&got.image.path, "/app/handler.txt").unwrap(),
        b"hello from the image"
    );
    assert!(
        issued.load(std::sync::atomic::Ordering::Relaxed) > pushed,
        "the pull used a token"
    );
}

/// Writes at `dir` a layout whose index lists one image per `(architecture, message)`; the
/// manifests' digests, in order.
fn multi_platform_layout(dir: &Path, images: &[(&str, &'static [u8])]) -> Vec<String> {
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for (arch, message) in images {
        // Each image is written into the same blob store; its index entry is kept.
        let digest = layout(dir, &[vec![("app/handler.txt", Some(*message))]], arch);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        entries.push(index["manifests"][0].clone());
        digests.push(digest);
    }
    // The layout names one image, `latest`: the index of the platforms' manifests, a blob.
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let hex = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&inner))
    };
    std::fs::write(dir.join("blobs/sha256").join(&hex), &inner).unwrap();
    let outer = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": format!("sha256:{hex}"), "size": inner.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&outer).unwrap()).unwrap();
    digests
}

fn push_all(layout_dir: &Path, dest: &str) {
    // `--all` pushes the index itself, not one platform's image.
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--insecure-policy",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:latest", layout_dir.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_in_a_registry_resolves_to_its_linux_amd64_image_or_is_refused_without_one() {
    let reg = registry();
    let work = tempfile::tempdir().unwrap();
    let both = work.path().join("both");
    let digests = multi_platform_layout(&both, &[("arm64", b"arm"), ("amd64", b"amd")]);
    push_all(&both, &format!("{}/multi:1", reg.addr));
    let arm_only = work.path().join("arm");
    multi_platform_layout(&arm_only, &[("arm64", b"arm"), ("s390x", b"s390x")]);
    push_all(&arm_only, &format!("{}/nox86:1", reg.addr));

    let cache = work.path().join("cache");
    let images = images(&cache, &reg.addr, Duration::from_secs(30));
    let got = images.pull(&format!("{}/multi:1", reg.addr)).await.unwrap();
    assert_eq!(got.image.digest, digests[1], "the amd64 entry's manifest");
    assert_eq!(
        read_from_image(&got.image.path, "/app/handler.txt").unwrap(),
        b"amd"
    );
    assert_eq!(
        got.pinned.unwrap(),
        format!("{}/multi@{}", reg.addr, digests[1])
    );
    let e = images
        .pull(&format!("{}/nox86:1", reg.addr))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::NoPlatform { .. }), "{e}");
    assert_eq!(cached_images(&cache), 1);

    // The same layouts as archives: an index inside the layout's index.
    let tar = work.path().join("both.tar");
    tar_dir(&both, &tar);
    assert_eq!(
        images.from_archive(&tar, "both.tar").unwrap().image.digest,
        digests[1]
    );
    let tar = work.path().join("arm.tar");
    tar_dir(&arm_only, &tar);
    let e = images.from_archive(&tar, "arm.tar").unwrap_err();
    assert!(matches!(e, ImageError::NoPlatform { .. }), "{e}");
}
