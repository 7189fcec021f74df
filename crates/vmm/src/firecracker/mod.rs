//! The Firecracker driver, written against Firecracker's published API (it cannot run on this
//! project's development machines, whose KVM is nested and emulating; see the README for where
//! each path is exercised).
//!
//! One `firecracker` process per VM, configured over its API socket (modules `api` and `client`). The
//! agent channel is vsock: the host listens on `{vsock.sock}_{AGENT_VSOCK_PORT}` before the
//! process starts and the guest agent connects out, as it does to QEMU's virtio-serial socket,
//! so a VMM that dies at start is an early exit, never a hang. Snapshots reset vsock
//! connections; after a restore the agent connects again, and the driver takes that
//! connection before it pauses the VM and hands it over. The serial console is Firecracker's
//! standard output, captured into the same bounded ring as QEMU's.

mod api;
mod client;
pub mod jailer;
#[cfg(test)]
mod schema_tests;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

use crate::console::ConsoleRing;
use crate::jail::{CgroupLimits, JailRoot, VmCgroup};
use crate::process::{accept_or_exit, VmmProcess};
use crate::rundir::RunDir;
use crate::{MicroVm, SnapshotFiles, VmSource, VmSpec, VmmDriver, VmmError};
use client::ApiClient;

const STDERR_KEEP: u64 = 16 * 1024;
/// How long one API call may take.
const API_LIMIT: Duration = Duration::from_secs(10);

/// The kernel command line. `reboot=k` and `panic=-1` turn a guest reboot or panic into a
/// Firecracker exit; `pci=off` because Firecracker has only MMIO devices.
pub(crate) const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet loglevel=4";

/// Configuration of the Firecracker driver.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    /// The `firecracker` binary.
    pub binary: PathBuf,
    /// Where per-VM run directories are made (short: Unix socket paths are limited).
    pub run_dir: PathBuf,
    /// Confine each process ([`crate::jail`]) as QEMU's are: namespaces, a cgroup, a root of its
    /// own, an unprivileged user from `users`; Firecracker installs its own seccomp filters.
    pub jail: bool,
    /// Who jailed Firecracker processes run as.
    pub users: std::sync::Arc<crate::jail::VmmUsers>,
    /// Firecracker's `jailer` ([`jailer`]); `None`: the server's own jail, as for QEMU.
    pub jailer: Option<PathBuf>,
}

/// Starts microVMs with Firecracker.
#[derive(Debug)]
pub struct FirecrackerDriver {
    config: FirecrackerConfig,
}

impl FirecrackerDriver {
    /// A driver with `config`.
    pub fn new(config: FirecrackerConfig) -> Self {
        let driver = Self { config };
        driver.sweep();
        driver
    }

    fn scope(&self) -> String {
        self.config.run_dir.file_name().map_or_else(
            || "default".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    fn spawn(
        &self,
        spec: &VmSpec,
        api_sock: &std::path::Path,
    ) -> Result<(Child, Option<VmCgroup>), VmmError> {
        let cgroup = if self.config.jail {
            VmCgroup::create(
                &self.scope(),
                &spec.id,
                CgroupLimits::for_vm(spec.memory_mib, spec.vcpus).with_priority(spec.priority),
            )
            .map_err(|e| tracing::warn!(vm = %spec.id, error = %e, "no cgroup for this VM"))
            .ok()
        } else {
            None
        };
        // The same jail as QEMU's (tested there): every path the API is given is an absolute
        // host path, and the root binds each at its own path.
        let binary = crate::process::resolve_binary(&self.config.binary);
        let run_dir = api_sock.parent().unwrap_or(api_sock);
        let mut cmd;
        let (root, user) = match (&self.config.jailer, self.config.jail) {
            (Some(jailer_bin), true) => {
                let user = self.config.users.next();
                let base = run_dir.join("jail");
                let chroot = jailer::chroot_dir(&base, &binary, &spec.id);
                let paths = crate::jail::vm_paths(spec, run_dir, &binary);
                let root = JailRoot::binds_only(&chroot, &paths)?;
                crate::jail::hand_over(spec, run_dir, user)?;
                cmd = Command::new(jailer_bin);
                cmd.args(jailer::args(&binary, &spec.id, user, &base, api_sock));
                // The jailer switches to the user itself.
                (Some(root), None)
            }
            (None, true) => {
                let paths = crate::jail::vm_paths(spec, run_dir, &binary);
                let root =
                    JailRoot::prepare(&run_dir.join("root"), &paths, self.config.users.gid())?;
                let user = self.config.users.next();
                crate::jail::hand_over(spec, run_dir, user)?;
                cmd = Command::new(&binary);
                cmd.arg("--api-sock").arg(api_sock).args(["--id", &spec.id]);
                (Some(root), Some(user))
            }
            (_, false) => {
                cmd = Command::new(&binary);
                cmd.arg("--api-sock").arg(api_sock).args(["--id", &spec.id]);
                (None, None)
            }
        };
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let netns = spec.network.as_ref().map(|n| n.netns.as_raw_fd());
        let procs = cgroup
            .as_ref()
            .map(VmCgroup::procs_files)
            .unwrap_or_default();
        crate::jail::confine(&mut cmd, self.config.jail, netns, procs, root, user);
        let child = cmd.spawn().map_err(|source| VmmError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        Ok((child, cgroup))
    }
}

/// Waits until the API socket accepts connections, or the process exits.
async fn wait_api(
    sock: &std::path::Path,
    child: &mut Child,
    limit: Duration,
) -> Result<(), VmmError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if UnixStream::connect(sock).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmmError::EarlyExit {
                status: status.to_string(),
                stderr: String::new(),
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(VmmError::Control(format!(
                "the API socket did not come up within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[async_trait]
impl VmmDriver for FirecrackerDriver {
    /// Removes the empty cgroups of VMs that were killed rather than destroyed; called when the
    /// driver is made and after a node's shutdown.
    fn sweep(&self) {
        if self.config.jail {
            crate::jail::sweep(&self.scope());
        }
    }

    fn name(&self) -> &'static str {
        "firecracker"
    }

    async fn probe_floor(&self) -> Result<Duration, VmmError> {
        let id = format!("floor-{}", std::process::id());
        let run_dir = RunDir::create(&self.config.run_dir, &id)?;
        let sock = run_dir.join("api.sock");
        let started = tokio::time::Instant::now();
        let mut child = Command::new(&self.config.binary)
            .arg("--api-sock")
            .arg(&sock)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                binary: self.config.binary.display().to_string(),
                source,
            })?;
        let r = wait_api(&sock, &mut child, Duration::from_secs(10))
            .await
            .map(|()| started.elapsed());
        let _ = child.start_kill();
        let _ = child.wait().await;
        r
    }

    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn MicroVm>, VmmError> {
        let run_dir = RunDir::create(&self.config.run_dir, &spec.id)?;
        let (api_sock, vsock) = (run_dir.join("api.sock"), run_dir.join("vsock.sock"));
        let agent_path = PathBuf::from(format!(
            "{}_{}",
            vsock.display(),
            ignition_proto::AGENT_VSOCK_PORT
        ));
        let agent = UnixListener::bind(&agent_path)
            .map_err(VmmError::io(format!("bind {}", agent_path.display())))?;
        let (log, metrics) = (
            run_dir.join("firecracker.log"),
            run_dir.join("metrics.json"),
        );
        // Made before the process starts, so that a jailed one gets them as its own.
        for f in [&log, &metrics] {
            std::fs::File::create(f).map_err(VmmError::io(format!("create {}", f.display())))?;
        }
        let (mut child, cgroup) = self.spawn(spec, &api_sock)?;
        let console = ConsoleRing::default();
        let console_task = match child.stdout.take() {
            Some(out) => console.capture(out),
            None => tokio::spawn(async {}),
        };
        let mut stderr_task = child.stderr.take().map(|err| {
            tokio::spawn(async move {
                let mut s = String::new();
                let _ = err.take(STDERR_KEEP).read_to_string(&mut s).await;
                s
            })
        });
        let api = ApiClient::new(&api_sock, API_LIMIT);
        let (image, tap) = match &spec.source {
            VmSource::Boot { image, .. } | VmSource::Restore { image, .. } => {
                (image, spec.network.as_ref().map(|n| n.tap.as_str()))
            }
        };
        let mut boot_args = BASE_CMDLINE.to_owned();
        for w in &image.extra_cmdline {
            boot_args.push(' ');
            boot_args.push_str(w);
        }
        let machine = api::Machine {
            kernel: &image.kernel,
            initrd: &image.initramfs,
            boot_args,
            rootfs: &image.rootfs,
            code_drive: &image.code_drive,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            tap,
            vsock_uds: &vsock,
            log: &log,
            metrics: &metrics,
        };
        let started = async {
            wait_api(&api_sock, &mut child, Duration::from_secs(10)).await?;
            let calls = match &spec.source {
                VmSource::Boot { .. } => api::boot(&machine),
                VmSource::Restore {
                    snapshot,
                    snapshot_code_drive,
                    ..
                } => api::restore(
                    &machine,
                    &snapshot.state,
                    &snapshot.memory,
                    *snapshot_code_drive != image.code_drive,
                ),
            };
            for c in &calls {
                api.call(c).await?;
            }
            let channel =
                accept_or_exit(&agent, &mut child, &mut stderr_task, spec.connect_timeout).await?;
            if matches!(spec.source, VmSource::Restore { .. }) {
                // A restored VM is handed over paused, like QEMU's.
                api.call(&api::set_state(true)).await?;
            }
            Ok::<_, VmmError>(channel)
        }
        .await;
        let channel = match started {
            Ok(c) => c,
            Err(e) => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                console_task.abort();
                let stderr = match stderr_task {
                    Some(t) => t.await.unwrap_or_default(),
                    None => String::new(),
                };
                return Err(match e {
                    VmmError::EarlyExit { status, .. } => VmmError::EarlyExit {
                        status,
                        stderr: stderr.trim().to_owned(),
                    },
                    other => other,
                });
            }
        };
        drop(agent);
        Ok(Box::new(FirecrackerVm {
            id: spec.id.clone(),
            process: VmmProcess::new(child, console, console_task, run_dir, cgroup),
            api,
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

/// A Firecracker microVM.
#[derive(Debug)]
pub struct FirecrackerVm {
    id: String,
    process: VmmProcess,
    api: ApiClient,
    channel: Option<UnixStream>,
    memory_file: Option<PathBuf>,
}

#[async_trait]
impl MicroVm for FirecrackerVm {
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
        self.api.call(&api::set_state(true)).await.map(|_| ())
    }

    async fn resume(&mut self) -> Result<(), VmmError> {
        self.api.call(&api::set_state(false)).await.map(|_| ())
    }

    async fn snapshot(&mut self, state: &std::path::Path) -> Result<SnapshotFiles, VmmError> {
        // Firecracker writes guest memory out at snapshot time, to the file the caller
        // designated when it started the VM.
        let memory = self.memory_file.clone().ok_or_else(|| {
            VmmError::Control("VM was not started with a snapshot memory file".into())
        })?;
        self.api.call(&api::set_state(true)).await?;
        self.api.call(&api::snapshot(state, &memory)).await?;
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
    }
}
