//! The API's boundary against hostile clients, on nodes started in-process with the in-process
//! guest (no VM is involved in any of it): TLS, safe defaults, and what a client can hold
//! before it is trusted (connections, slow headers and bodies, bodies before authentication).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ignition_in_process_guest::{placeholder_image, InProcessGuest};
use ignition_node::{ImageSource, NetworkMode, NodeConfig, NodeError, RunningNode, TlsFiles};

fn config(dir: &std::path::Path) -> NodeConfig {
    let mut c = NodeConfig::new(dir.join("data"));
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.image = ImageSource::Ready(placeholder_image(&dir.join("image")).unwrap());
    c.vmm.driver = Some(Arc::new(InProcessGuest::new()));
    c.run_dir = Some(dir.join("run"));
    c.network.mode = NetworkMode::None;
    c.api.dev = true;
    c
}

async fn start(dir: &std::path::Path, tweak: impl FnOnce(&mut NodeConfig)) -> RunningNode {
    let mut c = config(dir);
    tweak(&mut c);
    ignition_node::start(c).await.unwrap()
}

/// A CA, and a certificate it signs for 127.0.0.1 and localhost: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, TlsFiles) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ignition test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        ca_path,
        TlsFiles {
            cert: cert_path,
            key: key_path,
        },
    )
}

#[tokio::test]
async fn in_process_api_over_tls_answers_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, files) = certificates(dir.path());
    let node = start(dir.path(), |c| c.http.tls = Some(files)).await;
    let port = node.addr().port();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP gets no answer, and a client that does not trust the CA is refused.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .is_err());
    assert!(reqwest::get(format!("https://localhost:{port}/"))
        .await
        .is_err());
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_console_session_cookie_over_tls_is_secure() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, files) = certificates(dir.path());
    let node = start(dir.path(), |c| {
        c.http.tls = Some(files);
        c.api.dev = false;
    })
    .await;
    let key = node.state().store.create_key("acme").unwrap();
    let port = node.addr().port();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .post(format!("https://localhost:{port}/ui/sign-in"))
        .header("origin", format!("https://localhost:{port}"))
        .form(&[
            ("access_key_id", key.access_key_id.as_str()),
            ("secret_access_key", key.secret_access_key.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_unusable_tls_files_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut files) = certificates(dir.path());
    files.key = files.cert.clone();
    let mut c = config(dir.path());
    c.http.tls = Some(files);
    match ignition_node::start(c).await {
        Err(NodeError::Tls(why)) => assert!(why.contains("private key"), "{why}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[test]
fn dev_mode_clear_cluster_traffic_and_a_cluster_without_a_shared_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    assert!(c.check_safety().is_ok(), "--dev on loopback is fine");
    c.listen = "0.0.0.0:7070".parse().unwrap();
    let e = c.check_safety().unwrap_err().to_string();
    assert!(e.contains("--dev") && e.contains("0.0.0.0:7070"), "{e}");
    c.api.dev = false;
    assert!(c.check_safety().is_ok(), "authenticated, any address");
    c.cluster.addr = Some("10.1.2.3:7071".parse().unwrap());
    // A cluster without the store its nodes share is refused, saying what to pass.
    let e = c.check_safety().unwrap_err().to_string();
    assert!(e.contains("--store postgres://"), "{e}");
    c.store = Some("postgres://ignition@db.example/ignition".to_owned());
    let e = c.check_safety().unwrap_err().to_string();
    assert!(
        e.contains("--cluster-ca") && e.contains("--cluster-insecure"),
        "{e}"
    );
    c.cluster.insecure = true;
    assert!(c.check_safety().is_ok());
    // With peers and no cluster address, the API's address (port + 1) is the cluster's.
    c.cluster.insecure = false;
    c.cluster.addr = None;
    c.cluster.peers = vec!["10.1.2.4:7071".to_owned()];
    assert!(c.check_safety().is_err());
    c.listen = "127.0.0.1:7070".parse().unwrap();
    assert!(
        c.check_safety().is_ok(),
        "a cluster on loopback stays allowed"
    );
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_slow_clients_hold_neither_memory_nor_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |c| {
        c.http.header_timeout = Duration::from_secs(2);
        c.http.body_timeout = Duration::from_secs(3);
    })
    .await;
    let addr = node.addr();
    let idle_rss = vm_rss_kib();
    // 200 clients: half send their headers and then a byte of body a second, half send their
    // headers a byte a second.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..200)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let head = "POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n";
                let started = Instant::now();
                let trickle: Vec<u8> = if i % 2 == 0 {
                    s.write_all(head.as_bytes()).unwrap();
                    vec![b'x'; 100]
                } else {
                    head.as_bytes().to_vec()
                };
                for b in trickle {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    let mut probe = [0u8; 1];
                    s.set_nonblocking(true).unwrap();
                    let ended = s.read(&mut probe).is_ok();
                    s.set_nonblocking(false).unwrap();
                    if ended {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A normal client is served promptly while they trickle.
    for _ in 0..5 {
        let t = Instant::now();
        let r = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
    }
    let grown_mib = vm_rss_kib().saturating_sub(idle_rss) / 1024;
    assert!(grown_mib < 64, "RSS grew {grown_mib} MiB");
    // Each slow client is cut off at its timeout, long before it would have finished.
    for t in slow {
        let held = t.join().unwrap();
        assert!(
            held < Duration::from_secs(10),
            "a slow client was held {held:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_bodies_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |c| c.api.dev = false).await;
    let addr = node.addr();
    let key = node.state().store.create_key("acme").unwrap();
    let ask = move |head: String| {
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    };
    // A stranger announcing 90 MiB is refused at once, without sending a byte of it.
    let answer = ask(format!(
        "PUT /v1/functions/f HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        90 * 1024 * 1024
    ))
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // A tenant announcing more than the route takes is refused before sending it.
    let answer = ask(format!(
        "PUT /2017-10-31/functions/f/concurrency HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}:{}\r\ncontent-length: {}\r\n\r\n",
        key.access_key_id,
        key.secret_access_key,
        2 * 1024 * 1024
    ))
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("RequestTooLargeException"), "{answer}");
    node.shutdown().await.unwrap();
}
