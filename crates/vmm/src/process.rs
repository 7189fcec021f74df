//! What every VMM process holds on the host, whichever driver started it, and its teardown:
//! the process, its console capture, its run directory and its cgroup.

use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::console::ConsoleRing;
use crate::jail::VmCgroup;
use crate::rundir::RunDir;
use crate::VmmError;

/// A running VMM process and what it left on the host.
#[derive(Debug)]
pub(crate) struct VmmProcess {
    pub(crate) child: Child,
    console: ConsoleRing,
    console_task: JoinHandle<()>,
    run_dir: RunDir,
    cgroup: Option<VmCgroup>,
    destroyed: bool,
}

impl VmmProcess {
    pub(crate) fn new(
        child: Child,
        console: ConsoleRing,
        console_task: JoinHandle<()>,
        run_dir: RunDir,
        cgroup: Option<VmCgroup>,
    ) -> Self {
        Self {
            child,
            console,
            console_task,
            run_dir,
            cgroup,
            destroyed: false,
        }
    }

    /// Changes the VMM's share of the CPU (nothing without a cgroup).
    pub(crate) fn set_priority(&self, priority: crate::jail::CpuPriority) -> Result<(), VmmError> {
        self.cgroup
            .as_ref()
            .map_or(Ok(()), |c| c.set_priority(priority))
    }

    /// The VMM's pid. Under a jail the process spawned waits for the VMM, its only child (in
    /// a PID namespace of its own), so the VMM is that child.
    pub(crate) fn pid(&self) -> Option<u32> {
        let spawned = self.child.id()?;
        let children = std::fs::read_to_string(format!("/proc/{spawned}/task/{spawned}/children"))
            .unwrap_or_default();
        Some(
            children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(spawned),
        )
    }

    pub(crate) fn console_tail(&self) -> String {
        self.console.tail()
    }

    /// Kills and reaps the process (SIGKILL at once: the guest is disposable), lets the console
    /// reader take the last bytes, and removes the run directory and the cgroup. `false` when
    /// it was already done.
    pub(crate) async fn destroy(&mut self) -> bool {
        if std::mem::replace(&mut self.destroyed, true) {
            return false;
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = tokio::time::timeout(Duration::from_millis(50), &mut self.console_task).await;
        self.console_task.abort();
        self.run_dir.remove();
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
        true
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        // kill_on_drop kills the process (tokio reaps it); the run directory removes itself.
        self.console_task.abort();
    }
}

/// Accepts the VMM's (or the guest's) connection on `listener`, unless the process exits
/// first (an early exit with the end of its error output) or `limit` passes.
pub(crate) async fn accept_or_exit(
    listener: &UnixListener,
    child: &mut Child,
    stderr: &mut Option<JoinHandle<String>>,
    limit: Duration,
) -> Result<UnixStream, VmmError> {
    tokio::select! {
        r = tokio::time::timeout(limit, listener.accept()) => match r {
            Ok(Ok((s, _))) => Ok(s),
            Ok(Err(e)) => Err(VmmError::Io { what: "accept VM socket".into(), source: e }),
            Err(_) => Err(VmmError::ChannelTimeout(limit)),
        },
        status = child.wait() => {
            let stderr = match stderr.take() {
                Some(t) => t.await.unwrap_or_default(),
                None => String::new(),
            };
            Err(VmmError::EarlyExit {
                status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                stderr: stderr.trim().to_owned(),
            })
        }
    }
}

/// A VMM binary as an absolute path: a bare name is looked up on the server's `PATH` here,
/// since a jailed VMM has neither the environment nor the host's directories to search.
pub(crate) fn resolve_binary(binary: &std::path::Path) -> std::path::PathBuf {
    if binary.is_absolute() || binary.components().count() > 1 {
        return binary.to_owned();
    }
    crate::doctor::which(&binary.to_string_lossy()).unwrap_or_else(|| binary.to_owned())
}
