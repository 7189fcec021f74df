//! `ignition server`'s settings from a configuration file and the environment, and its logs,
//! through the real binary. A bad file is refused before anything starts, so those tests need
//! nothing; the one that serves needs the guest image (built by `scripts/setup.sh`), but no
//! VM, no root and no network, and runs with feature `vm-tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ignition");

fn server_with(config: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(BIN)
        .arg("server")
        .arg("--config")
        .arg(&file)
        .args(args)
        .env_remove("IGNITION_MAX_VMS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_configuration_file_is_one_line_naming_the_file_and_the_key_and_exit_2() {
    for (text, key) in [
        ("max_vms = \"eight\"\n", "key `max_vms`"),
        ("listen = 7070\n", "key `listen`"),
        ("dev = 1\n", "key `dev`"),
        ("maxvms = 8\n", "unknown key `maxvms`"),
        ("[server]\nmax_vms = 8\n", "key `server`"),
        ("max_vms = \n", "not valid TOML"),
    ] {
        let (code, stderr) = server_with(text, &[]);
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{text:?}: {stderr}");
        assert!(stderr.contains("node.toml"), "{text:?}: {stderr}");
        assert!(stderr.contains(key), "{text:?}: {stderr}");
    }
    let out = Command::new(BIN)
        .args(["server", "--config", "/nonexistent/node.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/node.toml"));
}

#[test]
fn a_bad_value_in_the_environment_is_refused_naming_the_variable() {
    let out = Command::new(BIN)
        .args(["server"])
        .env("IGNITION_MAX_VMS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-vms"), "{stderr}");
}

#[test]
fn unsafe_configurations_refuse_to_start_with_exit_2() {
    for (args, why) in [
        (&["--dev", "--listen", "0.0.0.0:7070"][..], "--dev"),
        (
            &[
                "--listen",
                "127.0.0.1:7070",
                "--cluster-addr",
                "127.0.0.1:7071",
            ][..],
            "--store postgres://",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:7070",
                "--cluster-addr",
                "0.0.0.0:7071",
                "--store",
                "postgres://ignition@db.example/ignition",
            ][..],
            "--cluster-insecure",
        ),
    ] {
        let out = Command::new(BIN).arg("server").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("max-vms") && text.contains("deploy"),
            "{shell}"
        );
    }
    let out = Command::new(BIN).arg("man").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH ignition"));
}

#[test]
fn client_options_are_accepted_before_or_after_the_subcommand() {
    // Nothing listens on port 9: both spellings reach the same client, which says so.
    for args in [
        &["--url", "http://127.0.0.1:9", "fn", "ls"][..],
        &[
            "fn",
            "ls",
            "--url",
            "http://127.0.0.1:9",
            "--output",
            "json",
        ][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("IGNITION_URL")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("contacting the server"),
            "{args:?}: {stderr}"
        );
    }
}

#[cfg(feature = "vm-tests")]
#[test]
fn a_server_configured_by_file_serves_and_logs_json_lines_with_access_lines() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ndev = true\nnetwork = \"none\"\nlog_format = \"json\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["server", "--config"])
        .arg(&file)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(120);
    let health = loop {
        if let Ok(r) = reqwest::blocking::get(&url) {
            break r.json::<serde_json::Value>().unwrap();
        }
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(health["status"], "ok");
    let _ = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v1/functions")).unwrap();
    // SIGTERM: the server shuts down and its stderr ends.
    nix_kill(child.id());
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let lines: Vec<String> = stderr.lines().map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    let docs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    for d in &docs {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(d.get(key).is_some(), "{key} missing in {d}");
        }
    }
    let access: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["target"] == "ignition::access")
        .collect();
    let listed = access
        .iter()
        .find(|d| d["path"] == "/v1/functions")
        .expect("an access line for GET /v1/functions");
    assert_eq!(listed["method"], "GET");
    assert_eq!(listed["status"], 200);
    assert_eq!(listed["tenant"], "default");
    assert!(listed["duration_ms"].as_f64().is_some());
    assert!(listed["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}

/// `ignition server --tls-cert --tls-key` answers `curl --cacert` over HTTPS, and the CLI
/// with `--ca-cert`.
#[cfg(feature = "vm-tests")]
#[test]
fn the_api_over_tls_answers_curl_with_the_ca() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (curl) takes a leaf named as its CA for self-issued.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Ignition test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        (
            write("ca.pem", ca.pem()),
            write("cert.pem", cert.pem()),
            write("key.pem", key.serialize_pem()),
        )
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args(["server", "--dev", "--network", "none", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("https://localhost:{port}/");
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        let out = Command::new("curl")
            .args(["-fsS", "--cacert"])
            .arg(&ca)
            .arg(&url)
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "no HTTPS answer");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    // Without the CA, curl refuses the certificate; plain HTTP gets no answer.
    let out = Command::new("curl").args(["-fsS", &url]).output().unwrap();
    assert!(!out.status.success());
    let out = Command::new("curl")
        .args([
            "-fsS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(BIN)
        .args([
            "fn",
            "ls",
            "--output",
            "json",
            "--url",
            &format!("https://localhost:{port}"),
        ])
        .arg("--ca-cert")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    nix_kill(child.id());
    assert!(child.wait().unwrap().success());
}

#[cfg(feature = "vm-tests")]
fn nix_kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
