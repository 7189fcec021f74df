//! Getting a guest to the point where it takes an invocation: by booting, by building a
//! snapshot, or by restoring one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ignition_image::GuestImage;
use ignition_net::{EgressRule, VmNet};
use ignition_proto::{Code, FunctionSpec, NetworkConfig};
use ignition_vmm::jail::CpuPriority;
use ignition_vmm::{BootImage, NetAttach, SnapshotFiles, VmSource, VmSpec, VmmDriver};
use tokio::time::Instant;

use crate::code_image::CodeImages;
use crate::guest::{ms, Guest};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::{ExecError, WorkerConfig};

/// The name base snapshots are kept under; it cannot be a function's (functions have no `.`).
const BASE: &str = "runtime.base";

/// What a function's snapshot is keyed on, besides the image.
#[derive(Debug, Clone)]
pub(crate) struct FunctionRef {
    pub(crate) spec: Arc<FunctionSpec>,
    /// SHA-256 of the code tar (computed once at deploy).
    pub(crate) code_sha256: String,
    /// The function's layers, in order.
    pub(crate) layers: Arc<[crate::LayerCode]>,
    /// Where the function's VMs may connect to.
    pub(crate) egress: Arc<[EgressRule]>,
}

impl FunctionRef {
    /// The function's tenant: its VMs reach other VMs of that tenant only.
    pub(crate) fn tenant(&self) -> String {
        ignition_types::FunctionId::from_stored(&self.spec.name).tenant
    }

    /// The key of the function's snapshot and of its warm slots: everything that, changed,
    /// makes them wrong. The egress policy is in it because a warm slot's network carries it.
    pub(crate) fn snapshot_key(&self, image_id: &str) -> String {
        let s = &self.spec;
        let egress: Vec<u8> = self
            .egress
            .iter()
            .flat_map(|r| [r.to_string().into_bytes(), vec![0]].concat())
            .collect();
        let env: Vec<u8> = s
            .env
            .iter()
            .flat_map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes(), b"\0"].concat())
            .collect();
        let layers: Vec<u8> = self
            .layers
            .iter()
            .flat_map(|l| [l.sha256.as_bytes(), b"\0"].concat())
            .collect();
        // An image function's process (its ImageConfig applied) is loaded into the snapshot.
        let image: Vec<u8> = s
            .image
            .as_ref()
            .map(|p| {
                [
                    &p.argv[..],
                    &p.env[..],
                    &[p.working_dir.clone(), p.user.clone()],
                ]
                .concat()
                .iter()
                .flat_map(|w| [w.as_bytes(), b"\0"].concat())
                .collect()
            })
            .unwrap_or_default();
        crate::snapshot::key(&[
            image_id.as_bytes(),
            s.name.as_bytes(),
            s.display_name.as_bytes(),
            s.version.as_bytes(),
            s.runtime.as_str().as_bytes(),
            s.handler.as_bytes(),
            &s.memory_mib.to_le_bytes(),
            &env,
            self.code_sha256.as_bytes(),
            &layers,
            &egress,
            &image,
        ])
    }
}

/// Counters of what the launcher did.
#[derive(Debug, Default)]
pub(crate) struct LaunchStats {
    pub(crate) boots: AtomicU64,
    pub(crate) restores: AtomicU64,
    pub(crate) snapshots_built: AtomicU64,
    pub(crate) base_snapshots_built: AtomicU64,
    pub(crate) snapshots_invalid: AtomicU64,
    pub(crate) restore_fallbacks: AtomicU64,
    /// Guests started and not yet destroyed.
    pub(crate) live: crate::guest::LiveGuests,
}

/// Starts guests.
#[derive(Debug)]
pub(crate) struct Launcher {
    pub(crate) driver: Arc<dyn VmmDriver>,
    pub(crate) image: GuestImage,
    pub(crate) config: WorkerConfig,
    pub(crate) snapshots: Arc<SnapshotStore>,
    pub(crate) code: CodeImages,
    pub(crate) stats: LaunchStats,
}

/// Size of the guest's writable layer (a tmpfs, so it is guest RAM): a quarter of the VM's
/// memory, so that filling it ends in ENOSPC for the function rather than in the OOM killer.
fn scratch_mib(memory_mib: u32) -> u32 {
    (memory_mib / 4).max(16)
}

/// What the guest is told to load: the function with its code on the drive (the tar the host
/// holds stays here).
fn on_drive(s: &FunctionSpec) -> FunctionSpec {
    FunctionSpec {
        name: s.name.clone(),
        runtime: s.runtime,
        handler: s.handler.clone(),
        memory_mib: s.memory_mib,
        env: s.env.clone(),
        code: Code::Drive,
        display_name: s.display_name.clone(),
        version: s.version.clone(),
        account_id: s.account_id.clone(),
        image: s.image.clone(),
    }
}

fn new_vm_id() -> String {
    format!("vm-{}", uuid::Uuid::new_v4().simple())
}

impl Launcher {
    fn boot_image(&self, memory_mib: u32, code_drive: std::path::PathBuf) -> BootImage {
        BootImage {
            // Firecracker boots the uncompressed ELF kernel; QEMU the bzImage. Same kernel.
            kernel: if self.driver.name() == "firecracker" {
                self.image.vmlinux.clone()
            } else {
                self.image.kernel.clone()
            },
            initramfs: self.image.initramfs.clone(),
            rootfs: self.image.rootfs.clone(),
            code_drive,
            extra_cmdline: [format!("ignition.scratch_mib={}", scratch_mib(memory_mib))]
                .into_iter()
                .chain(self.boot_network().map(|n| format!("ignition.net={n}")))
                .collect(),
        }
    }

    /// The interface configuration every guest of a built-in network boots with (see
    /// `ignition_net::GUEST_SIDE`): `ADDRESS/PREFIX,GATEWAY`. `None` without a network and in
    /// CNI mode, where each guest is configured with its own address when it runs.
    fn boot_network(&self) -> Option<String> {
        let n = self.config.network.as_ref()?.shared_guest_network(&[])?;
        Some(format!("{}/{},{}", n.address, n.prefix_len, n.gateway))
    }

    /// The network configuration a function's snapshot is made with: the shared guest side and
    /// the resolvers its policy reaches. Restored VMs are handed the same, so they apply nothing.
    fn snapshot_network(&self, function: &FunctionRef) -> Option<NetworkConfig> {
        let n = self
            .config
            .network
            .as_ref()?
            .shared_guest_network(&function.egress)?;
        Some(crate::guest::network_config(&n))
    }

    /// What VMs' device configuration depends on besides the image: snapshots made with a
    /// network interface restore only into VMs with one, and only under the driver set-up
    /// (accelerator, guest clock) they were made with.
    pub(crate) fn device_key(&self) -> String {
        let net = match (&self.config.network, self.boot_network()) {
            (Some(_), Some(configured)) => format!("+net={configured}"),
            (Some(_), None) => "+net".to_owned(),
            (None, _) => String::new(),
        };
        format!("{}{net}+{}", self.image.id, self.driver.snapshot_compat())
    }

    /// The key of `function`'s snapshot and warm slots on this node: its snapshot holds the
    /// resolvers it was given, which follow the node's configuration too.
    pub(crate) fn function_key(&self, function: &FunctionRef) -> String {
        let dns: String = self
            .snapshot_network(function)
            .map(|n| {
                n.dns
                    .iter()
                    .map(|d| format!("+dns={}", std::net::Ipv4Addr::from(*d)))
                    .collect()
            })
            .unwrap_or_default();
        function.snapshot_key(&format!("{}{dns}", self.device_key()))
    }

    /// The image on `function`'s code drive, built now if it is not on disk.
    async fn code_drive(&self, function: &FunctionRef) -> Result<std::path::PathBuf, ExecError> {
        let (path, built) = self
            .code
            .ensure(&function.code_sha256, &function.layers, &function.spec)
            .await?;
        if built {
            self.snapshots.keep_to_budget(&path);
        }
        Ok(path)
    }

    /// The code drive of a VM without a function (the base snapshot's).
    fn placeholder_drive(&self) -> Result<std::path::PathBuf, ExecError> {
        Ok(self.code.placeholder()?)
    }

    /// A VM spec, with a network of its own (allowed `egress`) when the node has networking.
    async fn spec(
        &self,
        source: VmSource,
        memory_mib: u32,
        egress: &[EgressRule],
        tenant: &str,
    ) -> Result<(VmSpec, Option<VmNet>), ExecError> {
        let net = match &self.config.network {
            Some(network) => Some(network.attach(egress, tenant).await?),
            None => None,
        };
        let spec = VmSpec {
            id: new_vm_id(),
            source,
            memory_mib,
            vcpus: 1,
            connect_timeout: Duration::from_secs(10),
            network: net.as_ref().map(|n| NetAttach {
                netns: n.netns(),
                tap: ignition_net::TAP_NAME.to_owned(),
            }),
            priority: CpuPriority::Foreground,
        };
        Ok((spec, net))
    }

    /// Starts `spec`; on failure its network is released.
    async fn start(
        &self,
        spec: &VmSpec,
        net: Option<VmNet>,
    ) -> Result<(Box<dyn ignition_vmm::MicroVm>, Option<VmNet>), ExecError> {
        match self.driver.start(spec).await {
            Ok(vm) => Ok((vm, net)),
            Err(e) => {
                if let Some(mut n) = net {
                    n.release().await;
                }
                Err(e.into())
            }
        }
    }

    /// Boots a fresh VM and loads the function into it. Returns the guest and the time it took
    /// (VM start, guest ready, load), in milliseconds.
    pub(crate) async fn boot(
        &self,
        function: &FunctionRef,
        snapshot_memory: Option<std::path::PathBuf>,
    ) -> Result<(Guest, [u64; 3]), ExecError> {
        let memory_mib = function.spec.memory_mib;
        let t = Instant::now();
        let code = self.code_drive(function).await?;
        let (spec, net) = self
            .spec(
                VmSource::Boot {
                    image: self.boot_image(memory_mib, code),
                    snapshot_memory,
                },
                memory_mib,
                &function.egress,
                &function.tenant(),
            )
            .await?;
        let (vm, net) = self.start(&spec, net).await?;
        let vm_start = ms(t.elapsed());
        let mut guest = Guest::new(vm, false, String::new(), net, self.stats.live.enter()).await?;
        let prepared = async {
            let t = Instant::now();
            guest.await_ready(self.config.boot_timeout).await?;
            let ready = ms(t.elapsed());
            let t = Instant::now();
            guest
                .load(on_drive(&function.spec), self.config.load_timeout)
                .await?;
            Ok::<_, ExecError>((ready, ms(t.elapsed())))
        }
        .await;
        match prepared {
            Ok((ready, load)) => {
                self.stats.boots.fetch_add(1, Ordering::Relaxed);
                Ok((guest, [vm_start, ready, load]))
            }
            Err(e) => {
                guest.destroy().await;
                Err(e)
            }
        }
    }

    /// The function's snapshot, built now if there is none or the one there is invalid.
    /// Concurrent callers for one function wait for a single build.
    pub(crate) async fn snapshot(
        &self,
        function: &FunctionRef,
    ) -> Result<(Snapshot, bool), ExecError> {
        let key = self.function_key(function);
        let name = &function.spec.name;
        let lock = self.snapshots.build_lock(&key);
        let _held = lock.lock().await;
        match self.snapshots.load_off_thread(name, &key).await {
            Ok(Some(s)) => return Ok((s, false)),
            Ok(None) => {}
            Err(e) => {
                self.stats.snapshots_invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(function = %name, error = %e, "rebuilding the snapshot");
            }
        }
        let (staging, files) = self.snapshots.staging(name, &key)?;
        let derived = match self.base_snapshot(function.spec.memory_mib).await {
            Ok(base) => self.derive(function, &base, &files).await,
            Err(e) => Err(e),
        };
        let built = match derived {
            Ok(kernel) => Ok(kernel),
            Err(e) => {
                tracing::warn!(function = %name, error = %e, "deriving from the base snapshot failed; booting");
                self.snapshot_by_boot(function, &files).await
            }
        };
        let kernel = match built {
            Ok(k) => k,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let snap = self
            .snapshots
            .commit_off_thread(name, &key, &staging, &kernel)
            .await?;
        self.stats.snapshots_built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(function = %name, key = %key, "snapshot built");
        Ok((snap, true))
    }

    /// Boots the function and snapshots it into `files`; returns the guest kernel's release.
    async fn snapshot_by_boot(
        &self,
        function: &FunctionRef,
        files: &SnapshotFiles,
    ) -> Result<String, ExecError> {
        let (mut guest, _) = self.boot(function, Some(files.memory.clone())).await?;
        let network = self.snapshot_network(function);
        let saved = match guest
            .warm_up_runtime(network, crate::guest::WARMUP_LIMIT)
            .await
        {
            Ok(()) => guest
                .vm
                .snapshot(&files.state)
                .await
                .map_err(ExecError::from),
            Err(e) => Err(e),
        };
        let kernel = guest.kernel_release.clone();
        // The snapshotted VM must never run again: its memory is the snapshot.
        guest.destroy().await;
        saved?;
        Ok(kernel)
    }

    /// Restores the base snapshot into a shared copy of its memory, loads the function, and
    /// snapshots the result into `files`: the function's snapshot without a boot.
    async fn derive(
        &self,
        function: &FunctionRef,
        base: &Snapshot,
        files: &SnapshotFiles,
    ) -> Result<String, ExecError> {
        let (from, to) = (base.files.memory.clone(), files.memory.clone());
        tokio::task::spawn_blocking(move || std::fs::copy(&from, &to))
            .await
            .map_err(|e| ExecError::Guest(format!("copy task: {e}")))?
            .map_err(|e| {
                ExecError::Snapshot(crate::snapshot::SnapshotError::Io {
                    path: files.memory.display().to_string(),
                    source: e,
                })
            })?;
        let memory_mib = function.spec.memory_mib;
        let code = self.code_drive(function).await?;
        let (spec, net) = self
            .spec(
                VmSource::Restore {
                    // The base VM had the placeholder; this one gets the function's code.
                    image: self.boot_image(memory_mib, code),
                    snapshot: base.files.clone(),
                    derive_into: Some(files.memory.clone()),
                    snapshot_code_drive: self.placeholder_drive()?,
                },
                memory_mib,
                &[],
                "",
            )
            .await?;
        let (vm, net) = self.start(&spec, net).await?;
        let mut guest = Guest::new(
            vm,
            true,
            base.kernel_release.clone(),
            net,
            self.stats.live.enter(),
        )
        .await?;
        let made = async {
            guest.resume().await?;
            guest
                .load(on_drive(&function.spec), self.config.load_timeout)
                .await?;
            guest
                .warm_up_runtime(self.snapshot_network(function), crate::guest::WARMUP_LIMIT)
                .await?;
            guest.vm.snapshot(&files.state).await?;
            Ok::<_, ExecError>(())
        }
        .await;
        guest.destroy().await;
        made?;
        self.stats.restores.fetch_add(1, Ordering::Relaxed);
        Ok(base.kernel_release.clone())
    }

    /// The base snapshot for VMs of `memory_mib`: a booted guest whose agent said `Ready` and
    /// waits for a function. Functions' snapshots are derived from it, so only the first
    /// function of a memory size pays for a boot.
    pub(crate) async fn base_snapshot(&self, memory_mib: u32) -> Result<Snapshot, ExecError> {
        let key = crate::snapshot::key(&[
            self.device_key().as_bytes(),
            &memory_mib.to_le_bytes(),
            b"base",
        ]);
        let lock = self.snapshots.build_lock(&key);
        let _held = lock.lock().await;
        match self.snapshots.load_off_thread(BASE, &key).await {
            Ok(Some(s)) => return Ok(s),
            Ok(None) => {}
            Err(e) => {
                self.stats.snapshots_invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "rebuilding the base snapshot");
            }
        }
        let (staging, files) = self.snapshots.staging(BASE, &key)?;
        let built = async {
            let (spec, net) = self
                .spec(
                    VmSource::Boot {
                        image: self.boot_image(memory_mib, self.placeholder_drive()?),
                        snapshot_memory: Some(files.memory.clone()),
                    },
                    memory_mib,
                    &[],
                    "",
                )
                .await?;
            let (vm, net) = self.start(&spec, net).await?;
            let mut guest =
                Guest::new(vm, false, String::new(), net, self.stats.live.enter()).await?;
            let made = async {
                guest.await_ready(self.config.boot_timeout).await?;
                guest.vm.snapshot(&files.state).await?;
                Ok::<_, ExecError>(guest.kernel_release.clone())
            }
            .await;
            guest.destroy().await;
            made
        }
        .await;
        match built {
            Ok(kernel) => {
                self.stats.boots.fetch_add(1, Ordering::Relaxed);
                let snap = self
                    .snapshots
                    .commit_off_thread(BASE, &key, &staging, &kernel)
                    .await?;
                self.stats
                    .base_snapshots_built
                    .fetch_add(1, Ordering::Relaxed);
                Ok(snap)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// A VM restored from `snapshot`, paused, with the function already initialized in it.
    /// `priority`: `Background` for a warm slot made ahead of need.
    pub(crate) async fn restore(
        &self,
        function: &FunctionRef,
        snapshot: &Snapshot,
        priority: CpuPriority,
    ) -> Result<Guest, ExecError> {
        let memory_mib = function.spec.memory_mib;
        // The function's snapshot was taken with its code drive; an image evicted since is
        // built again here.
        let code = self.code_drive(function).await?;
        let (spec, net) = self
            .spec(
                VmSource::Restore {
                    image: self.boot_image(memory_mib, code.clone()),
                    snapshot: snapshot.files.clone(),
                    derive_into: None,
                    snapshot_code_drive: code,
                },
                memory_mib,
                &function.egress,
                &function.tenant(),
            )
            .await?;
        let spec = VmSpec { priority, ..spec };
        let (vm, net) = self.start(&spec, net).await?;
        self.stats.restores.fetch_add(1, Ordering::Relaxed);
        Guest::new(
            vm,
            true,
            snapshot.kernel_release.clone(),
            net,
            self.stats.live.enter(),
        )
        .await
    }
}
