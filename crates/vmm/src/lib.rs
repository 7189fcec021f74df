//! MicroVM drivers.
//!
//! One trait, [`VmmDriver`], starts a microVM from a [`VmSpec`] and hands back a [`MicroVm`]: the
//! host end of the agent channel, plus control (pause, resume, teardown). Callers never see which
//! hypervisor runs underneath, so snapshot restore and a Firecracker driver slot in as new
//! [`VmSource`] variants and a new driver module without changing them.
//!
//! The QEMU `microvm` driver ([`qemu::QemuDriver`]) runs everywhere, under KVM where the host has
//! hardware virtualization and under TCG (software emulation) elsewhere.

pub mod accel;
mod console;
pub mod doctor;
pub mod firecracker;
pub mod jail;
mod process;
pub mod qemu;
mod rundir;
pub mod tsc;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::UnixStream;

pub use accel::Accel;

/// The hypervisors Ignition drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmKind {
    /// QEMU `microvm`, under KVM or TCG ([`qemu::QemuDriver`]).
    Qemu,
    /// Firecracker, on hardware KVM ([`firecracker::FirecrackerDriver`]).
    Firecracker,
}

impl VmmKind {
    /// `qemu` or `firecracker`, as drivers name themselves.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::Firecracker => "firecracker",
        }
    }
}

/// Why a VM could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM binary could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The error from exec.
        source: std::io::Error,
    },
    /// The VMM process exited before the guest connected.
    #[error("the VMM exited during start-up ({status}): {stderr}")]
    EarlyExit {
        /// Its exit status.
        status: String,
        /// The end of its error output.
        stderr: String,
    },
    /// The guest did not open its channel in time.
    #[error("the guest did not connect its agent channel within {0:?}")]
    ChannelTimeout(Duration),
    /// A control command failed.
    #[error("VMM control: {0}")]
    Control(String),
    /// Host-side file or socket operations failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl VmmError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// The guest image a VM boots, or was booted from before its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs (the agent is its `/init`).
    pub initramfs: PathBuf,
    /// The root filesystem, attached read-only.
    pub rootfs: PathBuf,
    /// The code drive's backing file, attached read-only with the serial number
    /// [`ignition_proto::CODE_DRIVE_SERIAL`]: a function's code image, or a placeholder of the
    /// same size where the VM has no function yet (a base snapshot). Every VM has the drive, so
    /// a snapshot taken with one file restores with another: that is how a function's code
    /// reaches a VM restored from the base snapshot.
    pub code_drive: PathBuf,
    /// Extra kernel command-line words (`ignition.*` options for the agent).
    pub extra_cmdline: Vec<String>,
}

/// A snapshot on disk: guest memory and device state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// Guest memory. Restored VMs map it privately (copy-on-write), never shared.
    pub memory: PathBuf,
    /// The VMM's device and CPU state.
    pub state: PathBuf,
}

/// Where a VM's initial state comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum VmSource {
    /// A fresh boot.
    Boot {
        /// What to boot.
        image: BootImage,
        /// Back guest memory with this file, shared, so that the VM can be snapshotted with
        /// [`MicroVm::snapshot`] without copying memory. The file must not be used by any other VM
        /// while this one runs.
        snapshot_memory: Option<PathBuf>,
    },
    /// A restore from a snapshot. The VM comes up paused; [`MicroVm::resume`] runs it.
    Restore {
        /// The image the snapshotted VM was booted from (the device model must match).
        image: BootImage,
        /// The snapshot.
        snapshot: SnapshotFiles,
        /// `None`: map the snapshot's memory privately (copy-on-write), the normal case.
        /// `Some(file)`: map this file shared instead, a copy of the snapshot's memory the caller
        /// made, so that this VM can itself be snapshotted (a new snapshot derived from a base).
        derive_into: Option<PathBuf>,
        /// The code drive's file when the snapshot was taken (`image.code_drive` is the one the
        /// restored VM gets). A VMM that reopens the snapshot's own file before it can be
        /// pointed at the new one (Firecracker) needs both within its reach.
        snapshot_code_drive: PathBuf,
    },
}

/// The VM's network, made by the caller: a network namespace holding a tap device. The VMM
/// process joins the namespace before it starts, so the tap exists nowhere else.
#[derive(Debug, Clone)]
pub struct NetAttach {
    /// The network namespace.
    pub netns: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The tap device's name in it.
    pub tap: String,
}

/// The MAC address of every guest's interface. Each VM has a link of its own, so they need not
/// differ, and VMs restored from one snapshot must not differ from it.
pub const GUEST_MAC: &str = "06:00:ac:10:00:02";

/// What to start.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// A unique id (names the run directory and appears in logs).
    pub id: String,
    /// Where the guest comes from.
    pub source: VmSource,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// How long the guest may take to open its channel.
    pub connect_timeout: Duration,
    /// The VM's network interface; `None`: the VM has none. A snapshot and the VMs restored
    /// from it must agree on this.
    pub network: Option<NetAttach>,
    /// Its share of the CPU against other VMs, from the start (see
    /// [`MicroVm::set_priority`]); without a jail (no cgroup) every VM shares alike.
    pub priority: jail::CpuPriority,
}

/// A running microVM.
#[async_trait]
pub trait MicroVm: Send + std::fmt::Debug {
    /// The VM's id.
    fn id(&self) -> &str;
    /// Takes the host end of the agent channel (once).
    fn take_channel(&mut self) -> Option<UnixStream>;
    /// The last bytes the guest wrote to its console (bounded).
    fn console_tail(&self) -> String;
    /// Pauses the vCPUs.
    async fn pause(&mut self) -> Result<(), VmmError>;
    /// Resumes the vCPUs.
    async fn resume(&mut self) -> Result<(), VmmError>;
    /// What the VMM says its VM is doing (`running`, `paused`, ...), for diagnosing a guest
    /// that stopped answering; `None` when the VMM cannot say.
    async fn run_state(&mut self) -> Option<String> {
        None
    }
    /// Pauses the VM and writes its device state to `state`; guest memory stays in the file the
    /// VM was booted with ([`VmSource::Boot::snapshot_memory`]). The VM must be destroyed after:
    /// running on would change the snapshot's memory.
    async fn snapshot(&mut self, state: &std::path::Path) -> Result<SnapshotFiles, VmmError>;
    /// The VMM process id, for accounting (memory, CPU).
    fn pid(&self) -> Option<u32>;
    /// Changes the VM's share of the CPU: a warm slot made in the background becomes a
    /// foreground VM when an invocation takes it.
    fn set_priority(&self, _priority: jail::CpuPriority) -> Result<(), VmmError> {
        Ok(())
    }
    /// Stops the VM and removes everything it left on the host: process, sockets, files.
    /// Idempotent; also done, without waiting, when the VM is dropped.
    async fn destroy(&mut self);
}

/// A hypervisor backend.
#[async_trait]
pub trait VmmDriver: Send + Sync + std::fmt::Debug {
    /// The backend's name (`qemu`, `firecracker`).
    fn name(&self) -> &'static str;
    /// What of this driver's set-up a snapshot depends on (the backend, the accelerator, what
    /// the guest kernel was told about the host): snapshots are keyed by it, so one made under
    /// another set-up is never restored.
    fn snapshot_compat(&self) -> String {
        self.name().to_owned()
    }
    /// Starts a VM and waits until its guest has connected the agent channel. A restored VM is
    /// returned paused, with its snapshot loaded.
    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn MicroVm>, VmmError>;
    /// Measures the VMM's own start-up with no guest running: the floor of any cold start.
    async fn probe_floor(&self) -> Result<Duration, VmmError>;
    /// Removes what VMs that were killed rather than destroyed left on the host (empty
    /// cgroups). Called at start-up and after shutdown; nothing to do for most drivers.
    fn sweep(&self) {}
}
