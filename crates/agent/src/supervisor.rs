//! The runtime process: how it is started, where its output goes, and how its end is noticed.
//!
//! As PID 1 the agent inherits every orphan in the guest, so one reaper thread collects them all;
//! when the reaped pid is the runtime's it tells the broker, which fails the invocation in flight
//! instead of waiting forever. Spawning and reaping are ordered by [`SPAWNING`]: std reaps a
//! child whose exec failed itself, and panics if another thread got to it first.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ignition_proto::{ImageProcess, Runtime, MAX_LOG_BYTES};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::runtime_api::{Broker, RUNTIME_API_ADDR, RUNTIME_API_SOCKET};

/// Where the function's code is unpacked (`LAMBDA_TASK_ROOT`).
pub(crate) const TASK_ROOT: &str = "/var/task";
/// Where the function's layers are (Lambda's `/opt`).
pub(crate) const OPT_ROOT: &str = "/opt";
/// The runtime's own files (Lambda's `LAMBDA_RUNTIME_DIR`): outside `/opt`, which layers own.
pub(crate) const RUNTIME_DIR: &str = "/var/runtime";
/// Ignition's Python runtime client, in [`RUNTIME_DIR`].
pub(crate) const PYTHON_BOOTSTRAP: &str = "bootstrap.py";
/// Ignition's Node.js runtime client, in [`RUNTIME_DIR`] (CommonJS: no `package.json` there).
pub(crate) const NODE_BOOTSTRAP: &str = "bootstrap.js";
/// The unprivileged user the runtime runs as (Lambda's sandbox user has the same id). Inside the
/// VM it cannot load modules, write kernel tunables, trigger sysrq or change the agent.
pub(crate) const RUNTIME_UID: u32 = 993;
/// Processes the runtime's user may have at once: a fork bomb stops here, inside the guest.
/// (Limits on processes are not enforced for root, hence the unprivileged user.)
pub(crate) const MAX_PROCESSES: libc::rlim_t = 256;

/// The runtime's combined stdout and stderr since it was last taken, bounded.
#[derive(Default)]
pub(crate) struct LogBuffer {
    inner: Mutex<(Vec<u8>, bool)>,
    /// Read ends of the runtime's pipes, to tell when everything written has been drained.
    pipes: Mutex<Vec<RawFd>>,
    /// Bytes read from a pipe and not yet appended.
    in_hand: AtomicUsize,
}

impl LogBuffer {
    fn append(&self, bytes: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_LOG_BYTES.saturating_sub(g.0.len());
        if bytes.len() > room {
            g.1 = true;
        }
        let n = bytes.len().min(room);
        g.0.extend_from_slice(&bytes[..n]);
    }

    /// Waits (briefly) until what the runtime wrote before answering has been drained: both pipes
    /// empty and nothing in the drain threads' hands.
    pub(crate) fn settle(&self) {
        for _ in 0..40 {
            let pipes = self.pipes.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let pending = pipes.iter().any(|&fd| {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int to `n`; `fd` stays open while the drain
                // thread lives, and a closed fd only makes the call fail.
                let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
                rc == 0 && n > 0
            });
            if !pending && self.in_hand.load(Ordering::Acquire) == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(250));
        }
    }

    /// Takes what was logged so far and whether some of it was cut.
    pub(crate) fn take(&self) -> (Vec<u8>, bool) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *g)
    }
}

/// What the runtime needs to start.
pub(crate) struct Launch<'a> {
    pub(crate) runtime: Runtime,
    pub(crate) handler: &'a str,
    pub(crate) function_name: &'a str,
    pub(crate) version: &'a str,
    pub(crate) memory_mib: u32,
    pub(crate) env: &'a [(String, String)],
    /// A container image's process, run inside the image (see [`crate::image_root`]) instead
    /// of a runtime of the guest's.
    pub(crate) image: Option<&'a ImageProcess>,
}

/// The region in the ARNs a node hands out (`AWS_REGION`).
const REGION: &str = "local";

/// `AWS_EXECUTION_ENV`, as Lambda names its runtimes' environments.
fn execution_env(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Python3 => "AWS_Lambda_python3",
        Runtime::Provided => "AWS_Lambda_provided",
        Runtime::Nodejs => "AWS_Lambda_nodejs18.x",
    }
}

/// Lambda's variables about the function, which every runtime's process gets.
fn lambda_env(launch: &Launch<'_>) -> [(&'static str, String); 8] {
    [
        ("AWS_LAMBDA_FUNCTION_NAME", launch.function_name.to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", launch.version.to_owned()),
        ("AWS_REGION", REGION.to_owned()),
        ("AWS_DEFAULT_REGION", REGION.to_owned()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", launch.function_name),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            format!("ignition/[{}]", launch.version),
        ),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            launch.memory_mib.to_string(),
        ),
    ]
}

/// Starts the runtime and the threads that drain its output.
pub(crate) fn start(launch: &Launch<'_>, logs: &Arc<LogBuffer>) -> Result<Pid, String> {
    if let Some(image) = launch.image {
        return start_image(launch, image, logs);
    }
    let mut cmd = match launch.runtime {
        Runtime::Python3 => {
            let mut c = Command::new("/usr/bin/python3");
            c.arg("-u").arg(format!("{RUNTIME_DIR}/{PYTHON_BOOTSTRAP}"));
            c
        }
        Runtime::Nodejs => {
            let mut c = Command::new("/usr/bin/node");
            // V8 collects before its heap outgrows the VM, instead of the guest running out of
            // memory; the rest is the kernel's, the agent's and Node's own.
            c.arg(format!(
                "--max-old-space-size={}",
                (launch.memory_mib / 2).max(32)
            ))
            .arg(format!("{RUNTIME_DIR}/{NODE_BOOTSTRAP}"));
            c
        }
        // The function's own bootstrap, else a layer's (a custom runtime shipped as a layer).
        Runtime::Provided => {
            let own = format!("{TASK_ROOT}/bootstrap");
            if std::path::Path::new(&own).exists() {
                Command::new(own)
            } else {
                Command::new(format!("{OPT_ROOT}/bootstrap"))
            }
        }
    };
    cmd.env_clear();
    // Lambda's defaults a function may set itself (its own TZ, say); layers' libraries are
    // found as on Lambda.
    for (k, v) in [
        ("TZ", ":UTC"),
        ("LANG", "C.UTF-8"),
        ("LD_LIBRARY_PATH", "/var/task/lib:/opt/lib"),
        // Where Lambda's Node.js runtime finds layers' packages (the bundle's own
        // `node_modules` is found by Node's resolution from the handler's file).
        (
            "NODE_PATH",
            "/opt/nodejs/node18/node_modules:/opt/nodejs/node_modules:/var/task",
        ),
    ] {
        if !launch.env.iter().any(|(name, _)| name == k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/opt/bin")
        .env("HOME", "/tmp")
        .env("AWS_LAMBDA_RUNTIME_API", RUNTIME_API_ADDR)
        .env("IGNITION_RUNTIME_API_SOCKET", RUNTIME_API_SOCKET)
        .env("_HANDLER", launch.handler)
        .env("LAMBDA_TASK_ROOT", TASK_ROOT)
        .env("LAMBDA_RUNTIME_DIR", RUNTIME_DIR)
        .env("AWS_EXECUTION_ENV", execution_env(launch.runtime))
        .envs(lambda_env(launch))
        .current_dir(TASK_ROOT)
        .uid(RUNTIME_UID)
        .gid(RUNTIME_UID)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: runs in the child between fork and exec; setrlimit(2) is async-signal-safe and
    // the closure touches only its own stack.
    unsafe {
        cmd.pre_exec(limit_processes);
    }
    spawn(cmd, logs).map_err(|e| format!("start {} runtime: {e}", launch.runtime.as_str()))
}

/// Starts a container image's process: its `ENTRYPOINT` and `CMD` inside the image, with the
/// image's environment, then the function's, then Lambda's variables over both.
fn start_image(
    launch: &Launch<'_>,
    image: &ImageProcess,
    logs: &Arc<LogBuffer>,
) -> Result<Pid, String> {
    let (program, args) = image
        .argv
        .split_first()
        .ok_or("the image has neither ENTRYPOINT nor CMD, and ImageConfig sets neither")?;
    let (uid, gid) = crate::image_root::user_ids(&image.user, RUNTIME_UID)?;
    let enter = crate::image_root::Enter::new(&image.working_dir, uid, gid)?;
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .env("HOME", "/tmp");
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            if !k.is_empty() {
                cmd.env(k, v);
            }
        }
    }
    cmd.envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", RUNTIME_API_ADDR)
        .envs(lambda_env(launch))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: runs in the child between fork and exec: `Enter::apply` and setrlimit(2) make
    // only async-signal-safe calls on memory the child owns.
    unsafe {
        cmd.pre_exec(move || {
            enter.apply()?;
            limit_processes()
        });
    }
    spawn(cmd, logs).map_err(|e| format!("start the image's entry point {program:?}: {e}"))
}

/// Caps the processes of the calling process's user (in the child, after its user is set).
fn limit_processes() -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: MAX_PROCESSES,
        rlim_max: MAX_PROCESSES,
    };
    // SAFETY: setrlimit(2) reads one rlimit from our stack; it is async-signal-safe.
    if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Held while a child is spawned, and by the reaper while it collects one: a child whose exec
/// failed is reaped by std's `spawn` before it returns, never by the reaper.
static SPAWNING: Mutex<()> = Mutex::new(());

/// Spawns `cmd` and the threads that drain its output into `logs`.
fn spawn(mut cmd: Command, logs: &Arc<LogBuffer>) -> std::io::Result<Pid> {
    let mut child = {
        let _spawning = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
        cmd.spawn()?
    };
    let pid = Pid::from_raw(
        i32::try_from(child.id()).map_err(|_| std::io::Error::other("pid out of range"))?,
    );
    if let Some(out) = child.stdout.take() {
        logs.pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(out.as_raw_fd());
        drain(out, Arc::clone(logs));
    }
    if let Some(err) = child.stderr.take() {
        logs.pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(err.as_raw_fd());
        drain(err, Arc::clone(logs));
    }
    // The child handle is dropped without waiting: the reaper owns every exit status.
    drop(child);
    Ok(pid)
}

fn drain(mut from: impl Read + Send + 'static, logs: Arc<LogBuffer>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Between the read returning and this increment `settle` could see an
                    // empty pipe and nothing in hand; the window is a few instructions wide,
                    // against its polling interval of 250 µs.
                    logs.in_hand.fetch_add(1, Ordering::AcqRel);
                    logs.append(&buf[..n]);
                    logs.in_hand.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    });
}

/// Reaps every child of PID 1; reports the runtime's end to the broker.
pub(crate) fn spawn_reaper(runtime: Arc<Mutex<Option<Pid>>>, broker: Arc<Broker>) {
    std::thread::spawn(move || loop {
        // Which child has ended, left waitable; it is collected under the spawning lock, so a
        // child that std's `spawn` is about to reap (its exec failed) is left to it.
        match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(ended) => {
                let Some(pid) = ended.pid() else { continue };
                let status = {
                    let _spawning = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
                    waitpid(pid, Some(WaitPidFlag::WNOHANG))
                };
                // Gone: `spawn` reaped it.
                let Ok(status) = status else { continue };
                let (pid, why) = match status {
                    WaitStatus::Exited(pid, code) => {
                        (pid, format!("runtime exited with status {code}"))
                    }
                    WaitStatus::Signaled(pid, sig, _) => {
                        (pid, format!("runtime killed by signal {sig}"))
                    }
                    _ => continue,
                };
                let is_runtime = *runtime.lock().unwrap_or_else(|p| p.into_inner()) == Some(pid);
                if is_runtime {
                    broker.runtime_exited(why);
                }
            }
            // No children right now: wait a little instead of spinning.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// std's `spawn` reaps a child whose exec failed; the reaper must not take that child from
    /// it (std panics when its wait finds no child, and the agent is PID 1). Racy by nature, so
    /// tried many times: before the reaper and spawning were ordered, this failed within a few
    /// dozen tries.
    #[test]
    fn a_failed_exec_while_the_reaper_runs_is_an_error_not_a_panic() {
        spawn_reaper(Arc::new(Mutex::new(None)), Arc::new(Broker::default()));
        let logs = Arc::new(LogBuffer::default());
        for _ in 0..300 {
            let mut cmd = Command::new("/no/such/entry-point");
            // As the agent's own launches do; it makes std fork and exec itself (without it std
            // may use posix_spawn, which reaps a failed child inside libc).
            // SAFETY: the closure runs between fork and exec and touches nothing.
            unsafe {
                cmd.pre_exec(|| Ok(()));
            }
            let err = spawn(cmd, &logs).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        }
        // A child that runs is still reaped by the reaper, not left a zombie.
        let pid = spawn(Command::new("/bin/true"), &logs).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the reaper did not collect {pid}"
        );
    }
}
