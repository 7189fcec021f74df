//! A throwaway PostgreSQL server for tests.
//!
//! Each [`PgServer`] is its own cluster: `initdb` into a temporary directory, `postgres`
//! listening only on a Unix socket in that directory (no TCP port to collide on), trust
//! authentication for the one role it creates. Nothing needs to be installed beyond Debian's
//! `postgresql` package, and nothing needs to be running. PostgreSQL refuses to run as root, so
//! under root the server runs as the `postgres` user the package creates (or `nobody`).
//!
//! The server is stopped (immediate shutdown) and its directory removed when the value drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// The role the server's clients connect as.
pub const USER: &str = "ignition";

/// A running throwaway server.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    server: Option<Child>,
    owner: Option<(u32, u32)>,
}

/// Why a server could not be started.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl PgServer {
    /// Starts a server with one database, `ignition`, owned by [`USER`].
    pub fn start() -> Result<Self, StartError> {
        let mut server = Self::unstarted()?;
        let data = server.data_dir();
        server.run(
            Command::new(server.bin.join("initdb"))
                .arg("--pgdata")
                .arg(&data)
                .args(["--username", USER, "--auth", "trust", "--no-sync"])
                .args(["--encoding", "UTF8", "--locale", "C"]),
        )?;
        server.spawn()?;
        server.run(
            Command::new(server.bin.join("createdb"))
                .arg("--host")
                .arg(server.dir.path())
                .args(["--username", USER, "ignition"]),
        )?;
        Ok(server)
    }

    /// A directory for a server, owned by the user it will run as; nothing started.
    fn unstarted() -> Result<Self, StartError> {
        let bin = bin_dir()?;
        let owner = if nix::unistd::geteuid().is_root() {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("ignition-pg-")
            .tempdir()
            .map_err(|e| StartError(format!("temporary directory: {e}")))?;
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid)?;
        }
        Ok(Self {
            dir,
            bin,
            server: None,
            owner,
        })
    }

    /// A streaming standby of this server (`pg_basebackup`), started: read-only until
    /// [`PgServer::promote`].
    pub fn standby(&self) -> Result<Self, StartError> {
        let mut standby = Self::unstarted()?;
        let data = standby.data_dir();
        standby.run(
            Command::new(standby.bin.join("pg_basebackup"))
                .arg("--host")
                .arg(self.dir.path())
                .args(["--username", USER, "--write-recovery-conf", "--no-sync"])
                // Not a spread checkpoint: that would take minutes.
                .arg("--checkpoint=fast")
                .arg("--pgdata")
                .arg(&data),
        )?;
        standby.spawn()?;
        Ok(standby)
    }

    /// Makes a standby the primary (`pg_ctl promote`), waiting until it takes writes.
    pub fn promote(&self) -> Result<(), StartError> {
        self.run(
            Command::new(self.bin.join("pg_ctl"))
                .args(["promote", "--wait", "--pgdata"])
                .arg(self.data_dir()),
        )
    }

    /// One server for the whole test process, started on first use, with a database of its
    /// own per caller ([`PgServer::fresh_database`]). It is started on a thread that lives as
    /// long as the process, and stops with it; its directory is removed at exit.
    pub fn shared() -> Result<&'static PgServer, StartError> {
        static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(PgServer::start().map_err(|e| e.0));
                    loop {
                        std::thread::park();
                    }
                });
                let server = rx
                    .recv()
                    .map_err(|_| "the thread starting PostgreSQL died".to_owned())??;
                if let Ok(mut shared) = SHARED_AT_EXIT.lock() {
                    let pid = server.server.as_ref().map(Child::id);
                    shared.push((pid, server.dir.path().to_path_buf()));
                }
                // SAFETY: registers a function with no arguments that only removes
                // directories; atexit(3) is called once per process here.
                unsafe {
                    libc::atexit(remove_shared_dirs);
                }
                Ok(server)
            })
            .as_ref()
            .map_err(|e| StartError(e.clone()))
    }

    /// Creates a new, empty database on this server; its URL.
    pub fn fresh_database(&self) -> Result<String, StartError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.run(
            Command::new(self.bin.join("createdb"))
                .arg("--host")
                .arg(self.dir.path())
                .args(["--username", USER, &name]),
        )?;
        Ok(self.url_for(&name))
    }

    /// The connection URL for the `ignition` database over the server's Unix socket.
    pub fn url(&self) -> String {
        self.url_for("ignition")
    }

    /// The connection URL for database `db`.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://{USER}@{}/{db}", self.host())
    }

    /// The URL of the `ignition` database on this primary and `standby`, as a cluster follows
    /// a failover: both hosts, `target_session_attrs=read-write`.
    pub fn failover_url(&self, standby: &PgServer) -> String {
        format!(
            "postgres://{USER}@{},{}/ignition?target_session_attrs=read-write",
            self.host(),
            standby.host()
        )
    }

    /// The socket's directory as a URL's host, percent-encoded as libpq's URLs allow.
    fn host(&self) -> String {
        self.dir
            .path()
            .display()
            .to_string()
            .replace('%', "%25")
            .replace('/', "%2F")
    }

    /// The directory holding the server's socket (its `host` parameter).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server now (an immediate shutdown, as a crash would), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data after [`PgServer::stop`].
    pub fn restart(&mut self) -> Result<(), StartError> {
        if self.server.is_none() {
            self.spawn()?;
        }
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let log = std::fs::File::create(self.dir.path().join("server.log"))
            .map_err(|e| StartError(format!("server log: {e}")))?;
        if let Some((uid, gid)) = self.owner {
            chown(&self.dir.path().join("server.log"), uid, gid)?;
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.dir.path())
            // No TCP listener: the socket is the only way in, and parallel tests never collide.
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.as_owner(&mut cmd);
        // SAFETY: runs in the child between fork and exec (after its user is set, which would
        // clear the setting); prctl(2) is async-signal-safe and reads no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                // The server stops when the thread that started it ends, the test process
                // killed included: nothing is left running.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| StartError(format!("start postgres: {e}")))?;
        self.server = Some(child);
        let socket = self.dir.path().join(".s.PGSQL.5432");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = socket.exists()
                && Command::new(self.bin.join("pg_isready"))
                    .arg("--host")
                    .arg(self.dir.path())
                    .args(["--username", USER, "--dbname", "postgres", "--quiet"])
                    .status()
                    .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(child) = self.server.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(StartError(format!(
                        "postgres exited ({status}): {}",
                        self.log_tail()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(StartError(format!(
                    "postgres did not become ready in 30 s: {}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn as_owner(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
    }

    fn run(&self, cmd: &mut Command) -> Result<(), StartError> {
        self.as_owner(cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| StartError(format!("run {:?}: {e}", cmd.get_program())))?;
        if !out.status.success() {
            return Err(StartError(format!(
                "{:?} failed ({}): {}{}",
                cmd.get_program(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shared server's process and directory: stopped and removed at exit.
static SHARED_AT_EXIT: Mutex<Vec<(Option<u32>, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn remove_shared_dirs() {
    if let Ok(shared) = SHARED_AT_EXIT.lock() {
        for (pid, dir) in shared.iter() {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Where PostgreSQL's server programs are: `IGNITION_PG_BIN`, else the newest of Debian's
/// `/usr/lib/postgresql/VERSION/bin`, else the directory of `initdb` on `PATH`.
fn bin_dir() -> Result<PathBuf, StartError> {
    if let Some(dir) = std::env::var_os("IGNITION_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").exists())
        .ok_or_else(|| {
            StartError(
                "PostgreSQL's server programs were not found (install Debian's `postgresql` \
                 package: ./scripts/setup.sh does, or set IGNITION_PG_BIN)"
                    .to_owned(),
            )
        })
}

/// The user a root test process runs the server as.
fn unprivileged_user() -> Result<(u32, u32), StartError> {
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            return Ok((user.uid.as_raw(), user.gid.as_raw()));
        }
    }
    Err(StartError(
        "running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as".into(),
    ))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), StartError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| StartError(format!("chown {}: {e}", path.display())))
}
