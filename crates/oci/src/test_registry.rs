//! A real registry for tests: Debian's `docker-registry` on loopback, storing in a temporary
//! directory, optionally behind HTTP basic or token authentication; and `skopeo` to push an
//! image layout to it. Test support only (the `test-registry` feature); both programs come from
//! `scripts/setup.sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How the registry authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// Anyone pulls and pushes.
    None,
    /// HTTP basic, this `(user, password)` only (an htpasswd file).
    Basic(&'a str, &'a str),
    /// Bearer tokens from the token server at this realm, signed by this certificate (PEM).
    Token(&'a str, &'a str),
}

/// A running registry, stopped when dropped.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its storage (`docker/registry/v2/blobs/sha256/..`), for tests that tamper with it.
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn err(what: &str) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Starts a registry on a free loopback port.
pub fn start(auth: Auth<'_>) -> Result<TestRegistry, String> {
    let dir = tempfile::tempdir().map_err(err("a temporary directory"))?;
    let auth = match auth {
        Auth::None => String::new(),
        Auth::Token(realm, cert) => {
            let bundle = dir.path().join("token-ca.pem");
            std::fs::write(&bundle, cert).map_err(err("the token certificate"))?;
            format!(
                "auth:\n  token:\n    realm: {realm}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
                bundle.display()
            )
        }
        Auth::Basic(name, password) => {
            // bcrypt, as the registry's htpasswd reads it.
            let out = Command::new("python3")
                .args(["-W", "ignore", "-c"])
                .arg("import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))")
                .arg(password)
                .output()
                .map_err(err("python3"))?;
            if !out.status.success() {
                return Err("python3 could not hash the password".into());
            }
            let file = dir.path().join("htpasswd");
            let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            std::fs::write(&file, format!("{name}:{hash}\n")).map_err(err("htpasswd"))?;
            format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            )
        }
    };
    let storage = dir.path().join("storage");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(err("a free port"))?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
            storage.display()
        ),
    )
    .map_err(err("the registry's configuration"))?;
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(err(
            "docker-registry (Debian's docker-registry package; scripts/setup.sh installs it)",
        ))?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Ok(TestRegistry {
                child,
                addr,
                storage,
                _dir: dir,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("docker-registry did not listen on {addr}"))
}

/// Pushes the image layout at `layout` (tag `latest`) to `dest` (`ADDR/REPO:TAG`) over plain
/// HTTP, with `user:password` when given.
pub fn push(layout: &Path, dest: &str, creds: Option<&str>) -> Result<(), String> {
    let out = Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
        .args(creds.map(|c| format!("--dest-creds={c}")))
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .map_err(err("skopeo (scripts/setup.sh installs it)"))?;
    if !out.status.success() {
        return Err(format!(
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
