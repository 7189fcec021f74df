//! The QEMU `microvm` driver.
//!
//! The host listens on the agent and console sockets before QEMU starts; QEMU connects to both
//! as a client at start-up, so a VMM that fails to start is seen as an early exit with its error
//! output, never as a hang. QMP is served by QEMU and used for control.

mod args;
mod qmp;

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;

use crate::console::ConsoleRing;
use crate::jail::{CgroupLimits, JailRoot, VmCgroup, VmmUsers};
use crate::process::{accept_or_exit, VmmProcess};
use crate::rundir::RunDir;
use crate::{Accel, MicroVm, SnapshotFiles, VmSource, VmSpec, VmmDriver, VmmError};
use qmp::Qmp;

const STDERR_KEEP: u64 = 16 * 1024;
static FLOOR_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Configuration of the QEMU driver.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The `qemu-system-x86_64` binary.
    pub binary: PathBuf,
    /// The accelerator (already resolved: `Tcg` or `Kvm`).
    pub accel: Accel,
    /// Where per-VM run directories are made. Unix socket paths are limited to 107 bytes, so
    /// keep this short.
    pub run_dir: PathBuf,
    /// Confine each QEMU process ([`crate::jail`]): namespaces, seccomp, a cgroup, a root of
    /// its own, an unprivileged user from `users`.
    pub jail: bool,
    /// Who jailed QEMU processes run as.
    pub users: Arc<VmmUsers>,
}

/// Starts microVMs with QEMU.
#[derive(Debug)]
pub struct QemuDriver {
    config: QemuConfig,
    /// The host's TSC frequency, which guests are told ([`crate::tsc`]).
    tsc_khz: u32,
}

impl QemuDriver {
    /// A driver with `config`; `Auto` is resolved against this host: KVM only when the CPU
    /// flags allow it *and* a probe guest runs at hardware speed ([`crate::doctor::probe_kvm`]).
    pub fn new(mut config: QemuConfig) -> Self {
        if config.accel == Accel::Auto {
            let measured = crate::doctor::probe_kvm(Duration::from_secs(5)).kind;
            config.accel = crate::doctor::auto_accel(measured);
        }
        let driver = Self {
            config,
            tsc_khz: crate::tsc::host_tsc_khz(),
        };
        driver.sweep();
        driver
    }

    /// The accelerator VMs will run with.
    pub fn accel(&self) -> Accel {
        self.config.accel
    }

    /// The name that keeps this driver's cgroups apart from other servers': its run directory's.
    fn scope(&self) -> String {
        self.config.run_dir.file_name().map_or_else(
            || "default".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

/// A QEMU microVM.
#[derive(Debug)]
pub struct QemuVm {
    id: String,
    process: VmmProcess,
    qmp: Option<Qmp>,
    channel: Option<UnixStream>,
    memory_file: Option<PathBuf>,
}

#[async_trait]
impl VmmDriver for QemuDriver {
    /// Removes the empty cgroups of VMs that were killed rather than destroyed; called when the
    /// driver is made and after a node's shutdown.
    fn sweep(&self) {
        if self.config.jail {
            crate::jail::sweep(&self.scope());
        }
    }

    fn name(&self) -> &'static str {
        "qemu"
    }

    fn snapshot_compat(&self) -> String {
        // A snapshot holds a guest booted with this command line, on these devices.
        format!(
            "qemu/{}/devices={}/cmdline={}",
            self.config.accel.qemu_name(),
            args::DEVICE_MODEL,
            args::base_cmdline(self.tsc_khz)
        )
    }

    async fn probe_floor(&self) -> Result<Duration, VmmError> {
        let id = format!(
            "floor-{}-{}",
            std::process::id(),
            FLOOR_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let run_dir = RunDir::create(&self.config.run_dir, &id)?;
        let qmp_path = run_dir.join("qmp.sock");
        let binary = crate::process::resolve_binary(&self.config.binary);
        let mut cmd = Command::new(&binary);
        cmd.args(args::floor(self.config.accel, 128, &qmp_path))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // Jailed as a VM is (a tenant's request can start it): its own cgroup, root, user
        // and QEMU's sandbox; the cgroup and root go when they are dropped below.
        let (cgroup, root, user) = if self.config.jail {
            cmd.args(["-sandbox", crate::jail::QEMU_SANDBOX]);
            let cgroup = VmCgroup::create(&self.scope(), &id, CgroupLimits::for_vm(128, 1)).ok();
            let mut paths = vec![(run_dir.join(""), crate::jail::Access::ReadWrite)];
            if !binary.starts_with("/usr") && binary.is_absolute() {
                paths.push((binary.clone(), crate::jail::Access::ReadOnly));
            }
            let root = JailRoot::prepare(&run_dir.join("root"), &paths, self.config.users.gid())?;
            let user = self.config.users.next();
            crate::jail::give(&run_dir.join(""), user)?;
            (cgroup, Some(root), Some(user))
        } else {
            (None, None, None)
        };
        let procs = cgroup
            .as_ref()
            .map(VmCgroup::procs_files)
            .unwrap_or_default();
        crate::jail::confine(&mut cmd, self.config.jail, None, procs, root, user);
        let started = tokio::time::Instant::now();
        let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        // QEMU creates the QMP socket during start-up; poll for it, then negotiate.
        let deadline = started + Duration::from_secs(10);
        let result = loop {
            match Qmp::connect(&qmp_path, Duration::from_secs(5)).await {
                Ok(_) => break Ok(started.elapsed()),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        break Err(VmmError::EarlyExit {
                            status: status.to_string(),
                            stderr: String::new(),
                        });
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                Err(e) => break Err(e),
            }
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        drop(cgroup);
        drop(run_dir);
        result
    }

    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn MicroVm>, VmmError> {
        let run_dir = RunDir::create(&self.config.run_dir, &spec.id)?;
        let (agent_path, console_path, qmp_path) = (
            run_dir.join("agent.sock"),
            run_dir.join("console.sock"),
            run_dir.join("qmp.sock"),
        );
        let agent_listener = UnixListener::bind(&agent_path)
            .map_err(VmmError::io(format!("bind {}", agent_path.display())))?;
        let console_listener = UnixListener::bind(&console_path)
            .map_err(VmmError::io(format!("bind {}", console_path.display())))?;
        let sockets = args::Sockets {
            agent: &agent_path,
            console: &console_path,
            qmp: &qmp_path,
        };
        let cgroup = if self.config.jail {
            match VmCgroup::create(
                &self.scope(),
                &spec.id,
                CgroupLimits::for_vm(spec.memory_mib, spec.vcpus).with_priority(spec.priority),
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(vm = %spec.id, error = %e, "no cgroup for this VM");
                    None
                }
            }
        } else {
            None
        };
        let binary = crate::process::resolve_binary(&self.config.binary);
        let (root, user) = if self.config.jail {
            let paths = crate::jail::vm_paths(spec, &run_dir.join(""), &binary);
            let root = JailRoot::prepare(&run_dir.join("root"), &paths, self.config.users.gid())?;
            let user = self.config.users.next();
            crate::jail::hand_over(spec, &run_dir.join(""), user)?;
            (Some(root), Some(user))
        } else {
            (None, None)
        };
        let mut cmd = Command::new(&binary);
        cmd.args(args::build(spec, self.config.accel, self.tsc_khz, &sockets));
        if self.config.jail {
            cmd.args(["-sandbox", crate::jail::QEMU_SANDBOX]);
        }
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.config.accel == Accel::Tcg {
            // TCG's translation buffer asks for transparent huge pages, so the few MiB of code a
            // VM translates would occupy whole 2 MiB pages of every VM's memory. (Under KVM the
            // guest's memory is better with them, and there is no such buffer.)
            // SAFETY: runs in the child between fork and exec; prctl is async-signal-safe and
            // the setting is inherited across the jail's fork and the exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        // The spec holds the namespace descriptor open until spawn returns.
        let netns = spec.network.as_ref().map(|n| n.netns.as_raw_fd());
        let procs = cgroup
            .as_ref()
            .map(VmCgroup::procs_files)
            .unwrap_or_default();
        crate::jail::confine(&mut cmd, self.config.jail, netns, procs, root, user);
        let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        let mut stderr_task = child.stderr.take().map(|err| {
            tokio::spawn(async move {
                let mut s = String::new();
                let _ = err.take(STDERR_KEEP).read_to_string(&mut s).await;
                s
            })
        });
        let limit = spec.connect_timeout;
        let console = ConsoleRing::default();
        let connected = async {
            let console_stream = accept_or_exit(&console_listener, &mut child, &mut stderr_task, limit).await?;
            let console_task = console.capture(console_stream);
            let rest = async {
                let channel = accept_or_exit(&agent_listener, &mut child, &mut stderr_task, limit).await?;
                let mut qmp = match Qmp::connect(&qmp_path, Duration::from_secs(5)).await {
                    Ok(q) => Some(q),
                    Err(e) => {
                        tracing::warn!(vm = %spec.id, error = %e, "QMP unavailable; control falls back to signals");
                        None
                    }
                };
                if let VmSource::Restore { snapshot, .. } = &spec.source {
                    let q = qmp.as_mut().ok_or_else(|| VmmError::Control("a restore needs QMP".into()))?;
                    load_snapshot(q, &snapshot.state).await?;
                }
                Ok::<_, VmmError>((channel, qmp))
            }
            .await;
            match rest {
                Ok((channel, qmp)) => Ok((console_task, channel, qmp)),
                Err(e) => {
                    console_task.abort();
                    Err(e)
                }
            }
        }
        .await;
        // The listeners are no longer needed; their socket files go with the run directory.
        drop((agent_listener, console_listener));
        let (console_task, channel, qmp) = match connected {
            Ok(parts) => parts,
            Err(e) => {
                // Reap the VMM before its cgroup and run directory go, so both can be removed.
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                return Err(e);
            }
        };
        Ok(Box::new(QemuVm {
            id: spec.id.clone(),
            process: VmmProcess::new(child, console, console_task, run_dir, cgroup),
            qmp,
            channel: Some(channel),
            memory_file: match &spec.source {
                VmSource::Boot {
                    snapshot_memory, ..
                } => snapshot_memory.clone(),
                VmSource::Restore { derive_into, .. } => derive_into.clone(),
            },
        }))
    }
}

/// The name under which a migration stream's descriptor is handed to QEMU (`fd:` URIs).
const STREAM_FD: &str = "migration-stream";

/// Hands QEMU the open snapshot state file as the migration stream: QEMU never opens a path or
/// starts a process for it, so its sandbox denies spawning.
async fn send_stream(qmp: &mut Qmp, file: &std::fs::File) -> Result<String, VmmError> {
    qmp.send_fd(STREAM_FD, file.as_fd()).await?;
    Ok(format!("fd:{STREAM_FD}"))
}

/// Waits for the current migration (either direction) to finish.
async fn wait_migration(qmp: &mut Qmp, limit: Duration) -> Result<(), VmmError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let r = qmp.execute("query-migrate", None).await?;
        match r.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = r
                    .get("error-desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or("no detail");
                return Err(VmmError::Control(format!("migration failed: {why}")));
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(VmmError::Control(format!(
                "migration did not finish within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn ignore_shared() -> serde_json::Value {
    // Guest memory lives in the memory file; only device state goes through the stream.
    serde_json::json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

async fn load_snapshot(qmp: &mut Qmp, state: &std::path::Path) -> Result<(), VmmError> {
    qmp.execute("migrate-set-capabilities", Some(ignore_shared()))
        .await?;
    let file = std::fs::File::open(state).map_err(VmmError::io(format!(
        "open snapshot state {}",
        state.display()
    )))?;
    let uri = send_stream(qmp, &file).await?;
    qmp.execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))
        .await?;
    wait_migration(qmp, Duration::from_secs(30)).await
}

impl QemuVm {
    async fn qmp(&mut self, command: &str) -> Result<(), VmmError> {
        let qmp = self
            .qmp
            .as_mut()
            .ok_or_else(|| VmmError::Control("no QMP connection".into()))?;
        qmp.execute(command, None).await.map(|_| ())
    }
}

#[async_trait]
impl MicroVm for QemuVm {
    fn id(&self) -> &str {
        &self.id
    }

    fn take_channel(&mut self) -> Option<UnixStream> {
        self.channel.take()
    }

    fn console_tail(&self) -> String {
        self.process.console_tail()
    }

    async fn pause(&mut self) -> Result<(), VmmError> {
        self.qmp("stop").await
    }

    async fn resume(&mut self) -> Result<(), VmmError> {
        self.qmp("cont").await
    }

    async fn run_state(&mut self) -> Option<String> {
        let qmp = self.qmp.as_mut()?;
        let status =
            tokio::time::timeout(Duration::from_secs(2), qmp.execute("query-status", None))
                .await
                .ok()?
                .ok()?;
        status
            .get("status")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
    }

    async fn snapshot(&mut self, state: &std::path::Path) -> Result<SnapshotFiles, VmmError> {
        let qmp = self
            .qmp
            .as_mut()
            .ok_or_else(|| VmmError::Control("a snapshot needs QMP".into()))?;
        qmp.execute("migrate-set-capabilities", Some(ignore_shared()))
            .await?;
        qmp.execute("stop", None).await?;
        let file = std::fs::File::create(state).map_err(VmmError::io(format!(
            "create snapshot state {}",
            state.display()
        )))?;
        let uri = send_stream(qmp, &file).await?;
        qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .await?;
        wait_migration(qmp, Duration::from_secs(60)).await?;
        let memory = self.memory_file.clone().ok_or_else(|| {
            VmmError::Control("VM was not booted with a snapshot memory file".into())
        })?;
        Ok(SnapshotFiles {
            memory,
            state: state.to_path_buf(),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    fn set_priority(&self, priority: crate::jail::CpuPriority) -> Result<(), VmmError> {
        self.process.set_priority(priority)
    }

    async fn destroy(&mut self) {
        self.channel = None;
        self.process.destroy().await;
        self.qmp = None;
    }
}
