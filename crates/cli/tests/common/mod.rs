//! A real `ignition server` for end-to-end tests: its own data and run directories and port,
//! real microVMs from the shared image cache, and a check on stop that it left nothing behind.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ignition");

static SUBNETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Extra server flags for every test server, from `IGNITION_TEST_SERVER_ARGS` (space-separated):
/// `scripts/firecracker-e2e.sh` runs the suite with `--vmm firecracker` this way on KVM hosts.
fn env_args() -> Vec<String> {
    std::env::var("IGNITION_TEST_SERVER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub struct TestServer {
    pub url: String,
    /// The server's nftables table and VM link prefix (`None` with `--network none`).
    pub network: Option<(String, String)>,
    pub run_dir: PathBuf,
    pub data_dir: tempfile::TempDir,
    /// The shared store the server was given (`--store`), where its keys are made.
    store: Option<String>,
    child: Option<Child>,
    http: reqwest::blocking::Client,
    /// For node-wide endpoints (`/v1/stats`, `/metrics`): an operator's key on a secure server.
    op_http: reqwest::blocking::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// PIDs of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

impl TestServer {
    /// A server in local development mode (no authentication).
    pub fn start(extra: &[&str]) -> Self {
        let mut args = vec!["--dev"];
        args.extend_from_slice(extra);
        Self::start_secure(&args)
    }

    /// A server that authenticates every request (no `--dev` unless `extra` has it).
    pub fn start_secure(extra: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let run_dir = std::env::temp_dir().join(format!("ign-test-{port}"));
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(data_dir.path().join("server.log")).unwrap();
        // Servers running side by side need VM subnets that do not overlap.
        let subnet = if extra
            .iter()
            .any(|a| *a == "--vm-subnet" || *a == "--network")
        {
            vec![]
        } else {
            let n = SUBNETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![
                "--vm-subnet".to_owned(),
                format!(
                    "10.{}.{}.0/23",
                    224 + std::process::id() % 16,
                    (n % 128) * 2
                ),
            ]
        };
        // A caller's own --data-dir (a restart test) replaces the temporary one, which still
        // holds the log.
        let own_data: Vec<&std::ffi::OsStr> = if extra.contains(&"--data-dir") {
            vec![]
        } else {
            vec!["--data-dir".as_ref(), data_dir.path().as_os_str()]
        };
        let child = Command::new(BIN)
            .arg("server")
            .args(own_data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--run-dir")
            .arg(&run_dir)
            .args(&subnet)
            .args(env_args())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let store = extra
            .iter()
            .position(|a| *a == "--store")
            .and_then(|i| extra.get(i + 1))
            .map(|s| (*s).to_owned());
        let mut server = Self {
            network: None,
            url,
            run_dir,
            data_dir,
            store,
            child: Some(child),
            op_http: http.clone(),
            http,
        };
        server.wait_ready();
        if !extra.contains(&"--dev") {
            // The harness's own requests (stats, pool) authenticate as tenant "harness".
            let client = |(id, secret): (String, String)| {
                let mut h = reqwest::header::HeaderMap::new();
                h.insert(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {id}:{secret}").parse().unwrap(),
                );
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(300))
                    .default_headers(h)
                    .build()
                    .unwrap()
            };
            server.http = client(server.create_key("harness"));
            server.op_http = client(server.create_operator_key());
        }
        let stats = server.get_json("/v1/stats");
        server.network = stats["network"]["table"].as_str().map(|t| {
            let prefix = stats["network"]["interface_prefix"].as_str().unwrap();
            (t.to_owned(), prefix.to_owned())
        });
        server
    }

    fn wait_ready(&mut self) {
        // The first server on a machine may build the guest image (a few minutes).
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/", self.url)).send() {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server not ready: {}", self.log());
    }

    /// A failing test shows the end of each of its servers' logs; with `IGNITION_TEST_LOGS=DIR`
    /// every server's whole log is also copied there, named by its port.
    fn keep_log(&self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- last lines of the server at {} ---\n{tail}", self.url);
        }
        if let Some(dir) = std::env::var_os("IGNITION_TEST_LOGS") {
            let port = self.url.rsplit(':').next().unwrap_or("server");
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(
                self.data_dir.path().join("server.log"),
                std::path::Path::new(&dir).join(format!("{port}.log")),
            );
        }
    }

    /// The server process's id (to stop and resume it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// Creates an access key for `tenant` in this server's store: (id, secret).
    pub fn create_key(&self, tenant: &str) -> (String, String) {
        self.key_create(&["--tenant", tenant]).0
    }

    /// Creates an operator's key in this server's store: (id, secret).
    pub fn create_operator_key(&self) -> (String, String) {
        let (key, doc) = self.key_create(&["--operator"]);
        assert_eq!(doc["operator"], true);
        key
    }

    fn key_create(&self, role: &[&str]) -> ((String, String), serde_json::Value) {
        let mut cmd = Command::new(BIN);
        cmd.args(["key", "create", "--json"]).args(role);
        match &self.store {
            Some(url) => cmd.args(["--store", url]),
            None => cmd.arg("--data-dir").arg(self.data_dir.path()),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let key = (
            v["access_key_id"].as_str().unwrap().to_owned(),
            v["secret_access_key"].as_str().unwrap().to_owned(),
        );
        (key, v)
    }

    /// Runs the CLI against this server with `IGNITION_TOKEN` set.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("IGNITION_URL", &self.url)
            .env("IGNITION_TOKEN", token)
            .output()
            .unwrap()
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("IGNITION_URL", &self.url)
            .output()
            .unwrap()
    }

    /// Deploys a function from a directory through the CLI; panics with the CLI's stderr.
    pub fn deploy(&self, name: &str, runtime: &str, handler: &str, code: &Path, extra: &[&str]) {
        let code = code.to_str().unwrap();
        let mut args = vec![
            "fn",
            "deploy",
            name,
            "--runtime",
            runtime,
            "--handler",
            handler,
            "--code",
            code,
        ];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "deploy {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Invokes over HTTP at the Lambda path.
    pub fn invoke(&self, name: &str, payload: &str) -> reqwest::blocking::Response {
        self.invoke_with(name, &[], payload)
    }

    /// Invokes over HTTP at the Lambda path with extra request headers.
    pub fn invoke_with(
        &self,
        name: &str,
        headers: &[(&str, &str)],
        payload: &str,
    ) -> reqwest::blocking::Response {
        let mut req = self
            .http
            .post(format!(
                "{}/2015-03-31/functions/{name}/invocations",
                self.url
            ))
            .body(payload.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().unwrap()
    }

    /// `GET path` as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let node_wide = ["/v1/stats", "/metrics", "/v1/floor"]
            .iter()
            .any(|p| path.starts_with(p));
        let http = if node_wide { &self.op_http } else { &self.http };
        json(http.get(format!("{}{path}", self.url)).send().unwrap()).2
    }

    /// The warm pool of `name` (the `pool` object of `GET /v1/functions/{name}/pool`).
    pub fn pool(&self, name: &str) -> serde_json::Value {
        self.get_json(&format!("/v1/functions/{name}/pool"))["pool"].clone()
    }

    /// Keeps `n` warm slots of `name`.
    pub fn set_min_ready(&self, name: &str, n: usize) {
        let r = self
            .http
            .put(format!("{}/v1/functions/{name}/pool", self.url))
            .json(&serde_json::json!({ "min_ready": n }))
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }

    /// VMM processes of this server that are alive now: their sockets are inside the run
    /// directory (the server's own command line names only the directory).
    pub fn vmm_processes(&self) -> Vec<u32> {
        processes_mentioning(&format!("{}/", self.run_dir.display()))
    }

    /// Stops the server and asserts it left no VMM process and no run directory behind.
    pub fn stop_and_check_clean(mut self) {
        let mut child = self.child.take().unwrap();
        // SIGTERM: a graceful shutdown.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // A graceful stop exits 0: not a crash (a stack overflow aborts, 134).
                assert!(
                    status.success(),
                    "server stopped with {status}: {}",
                    self.log()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.keep_log();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.vmm_processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            self.vmm_processes().is_empty(),
            "VMM processes left: {:?}",
            self.vmm_processes()
        );
        assert!(
            !self.run_dir.exists(),
            "run directory left: {}",
            self.run_dir.display()
        );
        if let Some((table, prefix)) = &self.network {
            let links = host_links(prefix);
            assert!(links.is_empty(), "VM links left: {links:?}");
            assert!(!nft_tables().contains(table), "nftables table {table} left");
        }
    }
}

/// Host network interfaces whose names start with `prefix`.
pub fn host_links(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// `nft list tables` output.
pub fn nft_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.keep_log();
            // The VMMs die with the server (PDEATHSIG); their empty cgroups do not.
            std::thread::sleep(Duration::from_millis(300));
            let scope = self
                .run_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            for dir in vm_cgroups(&scope) {
                let _ = std::fs::remove_dir(dir);
            }
            let _ = std::fs::remove_dir_all(&self.run_dir);
            // Links go with the VMs' namespaces; the table stays until removed.
            if let Some((table, _)) = &self.network {
                let _ = Command::new("nft")
                    .args(["delete", "table", "inet", table])
                    .status();
            }
        }
    }
}

/// Polls `done` every 100 ms until it holds; panics after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The decoded `X-Amz-Log-Result` of a response, or "".
pub fn log_tail(headers: &reqwest::header::HeaderMap) -> String {
    use base64::Engine;
    headers
        .get("x-amz-log-result")
        .map(|v| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .unwrap();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default()
}

/// VM cgroups of a server's scope (its run directory's name), in the pids hierarchy (v1) or the
/// unified one (v2).
pub fn vm_cgroups(scope: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let path = own
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            let hit = if v2 {
                ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == "pids")
            };
            hit.then(|| path.trim_start_matches('/').to_owned())
        })
        .unwrap_or_default();
    let base = if v2 {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/pids")
    };
    let dir = base.join(path).join("ignition").join(scope);
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `files` into a new temporary directory (a function's code).
pub fn code_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    dir
}

pub fn json(
    resp: reqwest::blocking::Response,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().unwrap();
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, headers, value)
}

pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_owned()
}
