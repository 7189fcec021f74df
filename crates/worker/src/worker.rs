//! The worker: admission, the choice of how a guest starts, and one invocation's lifecycle.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignition_image::GuestImage;
use ignition_proto::{FunctionSpec, InvokeResult, Outcome};
use ignition_vmm::jail::CpuPriority;
use ignition_vmm::VmmDriver;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::guest::{ms, Guest};
use crate::launcher::{FunctionRef, LaunchStats, Launcher};
use crate::pool::{PoolConfig, PoolStatus, WarmPool};
use crate::reuse::ReusedVms;
use crate::snapshot::SnapshotStore;
use crate::ExecError;

/// How the worker runs VMs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// VMs that may run invocations at once on this node; invocations beyond it wait their turn.
    /// Also the most idle VMs kept for reuse on the node.
    pub max_vms: usize,
    /// How long a guest may take from VMM start to `Ready`.
    pub boot_timeout: Duration,
    /// How long installing a function's code and initializing its runtime may take.
    pub load_timeout: Duration,
    /// Where snapshots are kept.
    pub snapshot_dir: std::path::PathBuf,
    /// MiB of disk the snapshots may take (least recently used evicted past it); `None`:
    /// unbounded.
    pub snapshot_disk_mib: Option<u64>,
    /// The warm pool's bounds.
    pub pool: PoolConfig,
    /// The node's VM networking; `None`: VMs have no network interface.
    pub network: Option<Arc<ignition_net::Network>>,
    /// Where a job whose spec carries no code tar gets the code for its image; `None`: such a
    /// job fails unless the image is on disk.
    pub code_source: Option<Arc<dyn crate::CodeSource>>,
}

/// How the caller wants the guest started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// The fastest available: a reused VM (if the function allows), a warm slot, a restore, and
    /// a boot when no snapshot can be had.
    Auto,
    /// A fresh boot, no snapshot.
    Boot,
    /// A fresh restore from the function's snapshot, bypassing the pool.
    Restore,
    /// A warm slot, waiting for one if none is ready.
    Pool,
}

impl FromStr for StartMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "boot" => Ok(Self::Boot),
            "restore" => Ok(Self::Restore),
            "pool" => Ok(Self::Pool),
            other => Err(format!(
                "unknown start mode {other:?} (auto, boot, restore or pool)"
            )),
        }
    }
}

/// How the guest that ran an invocation was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// Booted for this invocation.
    Boot,
    /// Restored from the snapshot for this invocation.
    Restore,
    /// Taken from the warm pool.
    Pool,
    /// A VM kept from an earlier invocation of the same function (`reuse`).
    Warm,
}

impl StartKind {
    /// `boot`, `restore`, `pool` or `warm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::Restore => "restore",
            Self::Pool => "pool",
            Self::Warm => "warm",
        }
    }
}

/// One invocation to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The function as the guest needs it.
    pub function: Arc<FunctionSpec>,
    /// SHA-256 of the function's code tar.
    pub code_sha256: String,
    /// The function's layers, in order (under `/opt` in the guest).
    pub layers: Arc<[crate::LayerCode]>,
    /// Keep the VM for later invocations of this function.
    pub reuse: bool,
    /// Where the function's VM may connect to (nothing when empty).
    pub egress: Arc<[ignition_net::EgressRule]>,
    /// The request id.
    pub request_id: String,
    /// The event (JSON bytes).
    pub payload: Vec<u8>,
    /// The caller's client context (JSON), for the runtime.
    pub client_context: Option<String>,
    /// The function's timeout; the VM is killed when it passes.
    pub timeout: Duration,
}

impl Job {
    fn function_ref(&self) -> FunctionRef {
        FunctionRef {
            spec: Arc::clone(&self.function),
            code_sha256: self.code_sha256.clone(),
            layers: Arc::clone(&self.layers),
            egress: Arc::clone(&self.egress),
        }
    }
}

/// Where the time of one invocation went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting for admission (a free VM slot).
    pub queued_ms: u64,
    /// Building the function's snapshot (first invocation after a deploy only).
    pub snapshot_ms: u64,
    /// Getting a VM: process start and channel (boot), or start and state load (restore), or
    /// taking a slot (pool).
    pub vm_start_ms: u64,
    /// Channel connected until the agent said `Ready` (boot only).
    pub guest_ready_ms: u64,
    /// Installing the code and initializing the runtime (boot only).
    pub load_ms: u64,
    /// Resuming (if paused), sending the event, receiving the result.
    pub invoke_ms: u64,
    /// Making the VM's network on the host (namespace, tap, links, rules), µs; 0 when the VM
    /// came from the pool or a reuse (made ahead) or has no network.
    pub net_setup_us: u64,
    /// The guest configuring its interface for this invocation, µs (part of `invoke_ms`).
    pub net_attach_us: u64,
    /// Everything.
    pub total_ms: u64,
}

/// A finished execution.
#[derive(Debug, Clone)]
pub struct Execution {
    /// What the guest reported.
    pub result: InvokeResult,
    /// The guest's kernel release.
    pub kernel_release: String,
    /// How its VM started.
    pub start: StartKind,
    /// Where the time went.
    pub timings: Timings,
}

/// The worker's name for version `version` of the function `function`: a version is a
/// function of its own to the worker (its snapshot, its warm slots).
pub fn version_spec_name(function: &str, version: u32) -> String {
    format!("{function}@{version}")
}

/// Whether the worker's name `spec` is `function` or one of its versions.
pub fn is_version_of(spec: &str, function: &str) -> bool {
    spec == function
        || spec
            .strip_prefix(function)
            .and_then(|r| r.strip_prefix('@'))
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// Counters since the worker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStats {
    /// VMs booted (snapshot builds included).
    pub boots: u64,
    /// VMs restored (pool refills included).
    pub restores: u64,
    /// Function snapshots built.
    pub snapshots_built: u64,
    /// Base snapshots (a booted guest waiting for a function) built.
    pub base_snapshots_built: u64,
    /// Snapshots found corrupt or stale and rebuilt.
    pub snapshots_invalid: u64,
    /// Snapshots and code images evicted to keep to `--snapshot-disk-mib`.
    pub snapshots_evicted: u64,
    /// Code images built: a bundle's first use on this node, or its first since its image was
    /// evicted.
    pub code_images_built: u64,
    /// Functions the warm pool holds an entry of.
    pub pool_functions: u64,
    /// Restores that failed and fell back to a boot.
    pub restore_fallbacks: u64,
    /// Invocations served by a warm pool slot.
    pub pool_hits: u64,
    /// Invocations served by a reused VM.
    pub warm_hits: u64,
    /// Invocations run.
    pub invocations: u64,
    /// Results whose error type, message or stack trace the guest made over its limit (cut).
    pub guest_strings_truncated: u64,
}

/// Runs invocations.
pub struct Worker {
    launcher: Arc<Launcher>,
    pool: Arc<WarmPool>,
    admission: Arc<Semaphore>,
    /// VMs being torn down after their invocation answered.
    teardowns: Arc<AtomicU64>,
    /// Invocations waiting for admission.
    waiting: AtomicU64,
    /// Idle VMs of functions that reuse them, at most `--max-vms` of them.
    reused: Mutex<ReusedVms<Guest>>,
    pool_hits: AtomicU64,
    warm_hits: AtomicU64,
    invocations: AtomicU64,
    /// Results whose error strings were cut to their limits.
    truncated: AtomicU64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("image", &self.launcher.image.id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker that starts `image` with `driver`. Must be called inside a tokio runtime (the
    /// pool's refiller is spawned on it).
    pub fn new(driver: Arc<dyn VmmDriver>, image: GuestImage, config: WorkerConfig) -> Arc<Self> {
        let admission = Arc::new(Semaphore::new(config.max_vms.max(1)));
        let launcher = Arc::new(Launcher {
            driver,
            image,
            snapshots: Arc::new(SnapshotStore::bounded(
                config.snapshot_dir.clone(),
                config
                    .snapshot_disk_mib
                    .map(|m| m.saturating_mul(1024 * 1024)),
            )),
            code: crate::code_image::CodeImages::new(
                config.snapshot_dir.join(crate::snapshot::CODE_DIR),
                config.code_source.clone(),
            ),
            config: config.clone(),
            stats: LaunchStats::default(),
        });
        let pool = WarmPool::new(Arc::clone(&launcher), config.pool);
        let worker = Arc::new(Self {
            launcher,
            pool,
            admission,
            teardowns: Arc::new(AtomicU64::new(0)),
            waiting: AtomicU64::new(0),
            reused: Mutex::new(ReusedVms::new(config.max_vms)),
            pool_hits: AtomicU64::new(0),
            warm_hits: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&worker);
        let keep_alive = config.pool.keep_alive;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(w) = weak.upgrade() else { return };
                w.reap_reused(keep_alive).await;
            }
        });
        worker
    }

    /// The image VMs boot.
    pub fn image(&self) -> &GuestImage {
        &self.launcher.image
    }

    /// Counters since start.
    pub fn stats(&self) -> WorkerStats {
        let s = &self.launcher.stats;
        WorkerStats {
            boots: s.boots.load(Ordering::Relaxed),
            restores: s.restores.load(Ordering::Relaxed),
            snapshots_built: s.snapshots_built.load(Ordering::Relaxed),
            base_snapshots_built: s.base_snapshots_built.load(Ordering::Relaxed),
            snapshots_invalid: s.snapshots_invalid.load(Ordering::Relaxed),
            snapshots_evicted: self.launcher.snapshots.evicted(),
            code_images_built: self.launcher.code.built(),
            pool_functions: self.pool.functions() as u64,
            restore_fallbacks: s.restore_fallbacks.load(Ordering::Relaxed),
            pool_hits: self.pool_hits.load(Ordering::Relaxed),
            warm_hits: self.warm_hits.load(Ordering::Relaxed),
            invocations: self.invocations.load(Ordering::Relaxed),
            guest_strings_truncated: self.truncated.load(Ordering::Relaxed),
        }
    }

    /// Invocations waiting for admission now (the node's queue depth).
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Counters of the node's VM networks (`None`: VMs have no network).
    pub fn network_stats(&self) -> Option<ignition_net::NetStats> {
        self.launcher.config.network.as_ref().map(|n| n.stats())
    }

    /// The VMM's own start-up time with no guest: the floor of a cold start on this host.
    /// It counts against `--max-vms` like any VM (a caller cannot start VMMs beyond it).
    pub async fn probe_floor(&self) -> Result<Duration, ExecError> {
        let _permit = Arc::clone(&self.admission)
            .acquire_owned()
            .await
            .map_err(|_| ExecError::ShuttingDown)?;
        Ok(self.launcher.driver.probe_floor().await?)
    }

    /// The warm pool of `name`.
    pub fn pool_status(&self, name: &str) -> PoolStatus {
        self.pool.status(name)
    }

    /// [`Self::pool_status`] without measuring each slot's PSS (`slot_pss_mib` empty): what
    /// reads of a function's state take, often and cheaply.
    pub fn pool_counts(&self, name: &str) -> PoolStatus {
        self.pool.counts(name).0
    }

    /// Warm slots ready and being filled, over all functions.
    pub fn pool_sizes(&self) -> (usize, usize) {
        self.pool.sizes()
    }

    /// MiB of PSS the pool's ready slots are charged.
    pub fn pool_charged_mib(&self) -> f64 {
        self.pool.charged_mib()
    }

    /// The pool's memory budget and the expected cost of a slot, MiB.
    pub fn pool_budget(&self) -> (u64, f64) {
        self.pool.budget()
    }

    /// Keeps `n` warm slots of the function regardless of demand.
    pub fn set_min_ready(
        &self,
        function: Arc<FunctionSpec>,
        code_sha256: String,
        layers: Arc<[crate::LayerCode]>,
        egress: Arc<[ignition_net::EgressRule]>,
        n: usize,
    ) {
        self.pool.set_min_ready(
            &FunctionRef {
                spec: function,
                code_sha256,
                layers,
                egress,
            },
            n,
        );
    }

    /// Forgets everything prepared for `name` and every published version of it (warm slots,
    /// reused VMs, snapshots): called when the function is deleted.
    pub async fn forget_function(&self, name: &str) {
        let of = |spec: &str| is_version_of(spec, name);
        self.pool.invalidate_matching(&of);
        let reused = self.lock_reused().remove_matching(&of);
        for guest in reused {
            guest.destroy().await;
        }
        self.launcher.snapshots.remove_matching(&of);
    }

    /// Forgets everything prepared for `name`: warm slots, reused VMs, snapshots. Called when
    /// the function changes or is deleted.
    pub async fn invalidate(&self, name: &str) {
        self.pool.invalidate(name);
        let reused = self.lock_reused().remove_function(name);
        for guest in reused {
            guest.destroy().await;
        }
        self.launcher.snapshots.remove_function(name);
    }

    /// Waits (up to 30 s) until the VMs of finished invocations are torn down: invocations
    /// answer first and destroy their VM after.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.teardowns.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Destroys all idle VMs (warm slots and reused VMs), then waits until every guest this
    /// worker started is destroyed. The pool is stopped first, so a slot whose restore is still
    /// under way destroys itself when it is done rather than joining the pool; teardowns of
    /// answered invocations finish on their own. The wait is bounded by the longest a guest
    /// may take to start (boot and init timeouts) plus a margin for its destroy; a guest still
    /// there after it is logged.
    pub async fn shutdown(&self) {
        self.pool.shutdown().await;
        let all = self.lock_reused().drain();
        for guest in all {
            guest.destroy().await;
        }
        let config = &self.launcher.config;
        let deadline =
            Instant::now() + config.boot_timeout + config.load_timeout + Duration::from_secs(10);
        let live = &self.launcher.stats.live;
        while live.count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if live.count() > 0 {
            tracing::warn!(
                guests = live.count(),
                "shutdown: guests still being started or destroyed"
            );
        }
    }

    /// Guests started and not yet destroyed (warm slots, reused VMs, running invocations).
    pub fn live_guests(&self) -> u64 {
        self.launcher.stats.live.count()
    }

    async fn reap_reused(&self, keep_alive: Duration) {
        let expired = self.lock_reused().expire(Instant::now(), keep_alive);
        for guest in expired {
            guest.destroy().await;
        }
    }

    fn lock_reused(&self) -> std::sync::MutexGuard<'_, ReusedVms<Guest>> {
        self.reused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `job` and reports how it went. The VM is destroyed afterwards, whatever happened,
    /// unless the function asked for reuse and the invocation succeeded.
    pub async fn run(&self, job: Job, mode: StartMode) -> Result<Execution, ExecError> {
        let t0 = Instant::now();
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = Arc::clone(&self.admission).acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = permit.map_err(|_| ExecError::ShuttingDown)?;
        let mut timings = Timings {
            queued_ms: ms(t0.elapsed()),
            ..Timings::default()
        };
        let function = job.function_ref();
        let key = self.launcher.function_key(&function);
        let t = Instant::now();
        let (mut guest, start) = self
            .acquire(&job, &function, &key, mode, &mut timings)
            .await?;
        if timings.vm_start_ms == 0 {
            timings.vm_start_ms = ms(t.elapsed()).saturating_sub(timings.snapshot_ms);
        }
        if matches!(start, StartKind::Boot | StartKind::Restore) {
            timings.net_setup_us = guest.net_setup_us();
        }
        let t = Instant::now();
        let mut outcome = guest
            .invoke(
                &job.request_id,
                job.payload,
                job.client_context,
                job.timeout,
            )
            .await;
        if let Ok(r) = &mut outcome {
            if crate::guest::cap_error_strings(&mut r.outcome) {
                self.truncated.fetch_add(1, Ordering::Relaxed);
            }
        }
        timings.invoke_ms = ms(t.elapsed());
        if let Ok(r) = &outcome {
            timings.net_attach_us = r.network_us;
        }
        let kernel_release = guest.kernel_release.clone();
        match (&outcome, job.reuse) {
            // The runtime is still inside the handler: the VM is never used again, and like a
            // failed one it is gone before the caller hears of it.
            (Ok(r), _) if matches!(r.outcome, Outcome::Timeout { .. }) => {
                tracing::info!(request_id = %job.request_id, "invocation timed out; its VM is destroyed");
                guest.destroy().await;
            }
            (Ok(_), true) => {
                let evicted =
                    self.lock_reused()
                        .keep(&function.spec.name, key, guest, Instant::now());
                for old in evicted {
                    tokio::spawn(old.destroy());
                }
            }
            // A failed VM (timeout, crash, protocol error) is gone before the caller hears of it.
            (Err(e), _) => {
                // What the guest printed, and what its VMM says it is doing, are the operator's
                // only view of why it failed.
                let state = guest.vm.run_state().await;
                let console = guest.console();
                // A function running past its timeout is the function's doing; anything else is
                // the VM's.
                if matches!(e, ExecError::Timeout(_)) {
                    tracing::info!(request_id = %job.request_id, error = %e, vm_state = ?state, %console, "invocation timed out; its VM is destroyed");
                } else {
                    tracing::warn!(request_id = %job.request_id, error = %e, vm_state = ?state, %console, "invocation failed; its VM is destroyed");
                }
                guest.destroy().await;
            }
            (Ok(_), false) => {
                // The caller has its answer; the VM goes in the background, still holding its
                // admission permit so that VMs being torn down count against --max-vms.
                let teardowns = Arc::clone(&self.teardowns);
                teardowns.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    guest.destroy().await;
                    drop(permit);
                    teardowns.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
        timings.total_ms = ms(t0.elapsed());
        outcome.map(|result| Execution {
            result,
            kernel_release,
            start,
            timings,
        })
    }

    async fn acquire(
        &self,
        job: &Job,
        function: &FunctionRef,
        key: &str,
        mode: StartMode,
        timings: &mut Timings,
    ) -> Result<(Guest, StartKind), ExecError> {
        let launcher = &self.launcher;
        if mode == StartMode::Auto && job.reuse {
            let reused = self.lock_reused().take(&function.spec.name, key);
            if let Some(g) = reused {
                self.warm_hits.fetch_add(1, Ordering::Relaxed);
                return Ok((g, StartKind::Warm));
            }
        }
        match mode {
            StartMode::Boot => {
                let (g, [start, ready, load]) = launcher.boot(function, None).await?;
                (timings.vm_start_ms, timings.guest_ready_ms, timings.load_ms) =
                    (start, ready, load);
                return Ok((g, StartKind::Boot));
            }
            StartMode::Pool => {
                // Waiting for a slot is bounded like a boot would be.
                let limit = launcher.config.boot_timeout + launcher.config.load_timeout;
                let g = self
                    .pool
                    .take_wait(function, limit)
                    .await
                    .ok_or(ExecError::NoSlot(limit))?;
                self.pool_hits.fetch_add(1, Ordering::Relaxed);
                return Ok((g, StartKind::Pool));
            }
            StartMode::Auto => {
                if let Some(g) = self.pool.take(function) {
                    self.pool_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((g, StartKind::Pool));
                }
            }
            StartMode::Restore => {}
        }
        let t = Instant::now();
        let restored = match launcher.snapshot(function).await {
            Ok((snap, built)) => {
                if built {
                    timings.snapshot_ms = ms(t.elapsed());
                }
                launcher
                    .restore(function, &snap, CpuPriority::Foreground)
                    .await
            }
            Err(e) => Err(e),
        };
        match restored {
            Ok(g) => Ok((g, StartKind::Restore)),
            Err(e) => {
                launcher
                    .stats
                    .restore_fallbacks
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(function = %function.spec.name, error = %e, "restore failed; booting instead");
                let (g, [start, ready, load]) = launcher.boot(function, None).await?;
                (timings.vm_start_ms, timings.guest_ready_ms, timings.load_ms) =
                    (start, ready, load);
                Ok((g, StartKind::Boot))
            }
        }
    }
}
