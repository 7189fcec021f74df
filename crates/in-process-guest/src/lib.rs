//! [`InProcessGuest`]: a test twin of a microVM and its agent.
//!
//! It implements [`VmmDriver`] and [`MicroVm`] like the QEMU and Firecracker drivers, but no VMM
//! process runs: the guest end of the agent channel is a task in the test's own process that
//! speaks the real guest protocol ([`ignition_proto`] frames, the same messages in the same
//! order as `ignition-agent`), and a function's "handler" is a Rust closure looked up by the
//! function's handler string. Snapshots are real files (the memory file holds the loaded
//! function), so the worker's snapshot store, pool, reuse and admission run their real code.
//!
//! It exists so that everything that is *about something else than the VM* (the API, the
//! worker's pool and reuse logic, admission, the event dispatcher, the cluster's stealing and
//! sharing) is tested in seconds without root, QEMU or a guest image. Tests that use it say so
//! in their names (`in_process_...`); whatever involves a VM keeps a real-VM test.

mod handlers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ignition_image::GuestImage;
use ignition_proto::{
    encode, FunctionSpec, GuestMessage, Header, HostMessage, InvokeRequest, InvokeResult, Outcome,
    HEADER_LEN, MAX_HOST_FRAME,
};
use ignition_vmm::{MicroVm, SnapshotFiles, VmSource, VmSpec, VmmDriver, VmmError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

pub use handlers::{Call, Handler, Handlers, Reply};

/// What the in-process guest reports as its kernel release.
pub const KERNEL_RELEASE: &str = "in-process";
/// A function deployed with this handler crashes its guest while its code is installed.
pub const CRASH_ON_LOAD: &str = "crash.on_load";
/// The driver's name, and so part of every snapshot key made with it.
pub const DRIVER_NAME: &str = "in-process";

/// Counters of what the twin did, for tests to assert on.
#[derive(Debug, Default)]
pub struct GuestCounters {
    boots: AtomicU64,
    restores: AtomicU64,
    live: AtomicU64,
    invocations: AtomicU64,
}

impl GuestCounters {
    /// VMs booted.
    pub fn boots(&self) -> u64 {
        self.boots.load(Ordering::Relaxed)
    }
    /// VMs restored from a snapshot.
    pub fn restores(&self) -> u64 {
        self.restores.load(Ordering::Relaxed)
    }
    /// VMs started and not yet destroyed.
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }
    /// Handler calls, warm-ups excluded.
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }
}

/// The driver: starts in-process guests.
#[derive(Debug, Clone, Default)]
pub struct InProcessGuest {
    handlers: Handlers,
    counters: Arc<GuestCounters>,
}

impl InProcessGuest {
    /// A driver whose guests know the built-in handlers ([`Handlers::builtin`]).
    pub fn new() -> Self {
        Self {
            handlers: Handlers::builtin(),
            counters: Arc::default(),
        }
    }

    /// Adds (or replaces) the handler functions deployed with `handler` run.
    pub fn with_handler(mut self, handler: &str, f: Handler) -> Self {
        self.handlers.insert(handler, f);
        self
    }

    /// What the guests did so far.
    pub fn counters(&self) -> Arc<GuestCounters> {
        Arc::clone(&self.counters)
    }
}

/// A guest image whose files exist but hold nothing: the in-process guest boots none of them.
pub fn placeholder_image(dir: &Path) -> std::io::Result<GuestImage> {
    std::fs::create_dir_all(dir)?;
    let file = |name: &str| -> std::io::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, b"in-process guest: nothing to boot\n")?;
        Ok(p)
    };
    Ok(GuestImage {
        id: "in-process".to_owned(),
        kernel: file("kernel")?,
        vmlinux: file("vmlinux")?,
        kernel_release: KERNEL_RELEASE.to_owned(),
        initramfs: file("initramfs")?,
        rootfs: file("rootfs")?,
    })
}

/// The guest's memory, as far as a snapshot is concerned: the function it has loaded.
#[derive(Debug, Default)]
struct Memory {
    loaded: Option<Arc<FunctionSpec>>,
    /// Invocations this VM ran (a reused VM counts on).
    served: u64,
}

fn memory_bytes(m: &Memory) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "loaded": m.loaded.as_deref() })).unwrap_or_default()
}

fn memory_from(bytes: &[u8]) -> Result<Memory, String> {
    if bytes.is_empty() {
        return Ok(Memory::default());
    }
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let loaded = match doc.get("loaded") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(Arc::new(
            serde_json::from_value::<FunctionSpec>(v.clone()).map_err(|e| e.to_string())?,
        )),
    };
    Ok(Memory { loaded, served: 0 })
}

const STATE_MARK: &[u8] = b"ignition in-process guest state 1\n";

#[async_trait]
impl VmmDriver for InProcessGuest {
    fn name(&self) -> &'static str {
        DRIVER_NAME
    }

    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn MicroVm>, VmmError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| VmmError::Io { what, source }
        };
        // The guest runs closures, not the code; but a VM the worker starts without its code
        // drive in place would not find its code in a real guest either.
        let drive = match &spec.source {
            VmSource::Boot { image, .. } | VmSource::Restore { image, .. } => &image.code_drive,
            _ => {
                return Err(VmmError::Control(
                    "the in-process guest cannot start this source".to_owned(),
                ))
            }
        };
        if !drive.is_file() {
            return Err(VmmError::Control(format!(
                "the code drive {} does not exist",
                drive.display()
            )));
        }
        let (memory, memory_file, restored) = match &spec.source {
            VmSource::Boot {
                snapshot_memory, ..
            } => {
                if let Some(f) = snapshot_memory {
                    std::fs::write(f, b"").map_err(io("creating the memory file"))?;
                }
                (Memory::default(), snapshot_memory.clone(), false)
            }
            VmSource::Restore {
                snapshot,
                derive_into,
                ..
            } => {
                let state = std::fs::read(&snapshot.state).map_err(io("reading the state"))?;
                if state != STATE_MARK {
                    return Err(VmmError::Control(
                        "the snapshot was not made by an in-process guest".to_owned(),
                    ));
                }
                let from = derive_into.as_ref().unwrap_or(&snapshot.memory);
                let bytes = std::fs::read(from).map_err(io("reading the memory file"))?;
                let memory = memory_from(&bytes).map_err(VmmError::Control)?;
                (memory, derive_into.clone(), true)
            }
            _ => {
                return Err(VmmError::Control(
                    "the in-process guest cannot start this source".to_owned(),
                ))
            }
        };
        let (host, guest) = UnixStream::pair().map_err(io("a channel pair"))?;
        let (running, run_rx) = watch::channel(!restored);
        let memory = Arc::new(Mutex::new(memory));
        let counters = Arc::clone(&self.counters);
        if restored {
            counters.restores.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.boots.fetch_add(1, Ordering::Relaxed);
        }
        counters.live.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(serve(
            guest,
            GuestCtx {
                vm_id: spec.id.clone(),
                memory_mib: spec.memory_mib,
                restored,
                handlers: self.handlers.clone(),
                memory: Arc::clone(&memory),
                running: run_rx,
                counters: Arc::clone(&counters),
            },
        ));
        Ok(Box::new(InProcessVm {
            id: spec.id.clone(),
            channel: Some(host),
            running,
            memory,
            memory_file,
            task: Some(task),
            counters,
        }))
    }

    async fn probe_floor(&self) -> Result<Duration, VmmError> {
        let t = Instant::now();
        let (_a, _b) = UnixStream::pair().map_err(|source| VmmError::Io {
            what: "a channel pair".to_owned(),
            source,
        })?;
        Ok(t.elapsed())
    }
}

/// One in-process guest.
#[derive(Debug)]
struct InProcessVm {
    id: String,
    channel: Option<UnixStream>,
    running: watch::Sender<bool>,
    memory: Arc<Mutex<Memory>>,
    /// The file a snapshot of this VM writes its memory to.
    memory_file: Option<PathBuf>,
    task: Option<tokio::task::JoinHandle<()>>,
    counters: Arc<GuestCounters>,
}

impl InProcessVm {
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            self.counters.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InProcessVm {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl MicroVm for InProcessVm {
    fn id(&self) -> &str {
        &self.id
    }

    fn take_channel(&mut self) -> Option<UnixStream> {
        self.channel.take()
    }

    fn console_tail(&self) -> String {
        format!("in-process guest {}", self.id)
    }

    async fn pause(&mut self) -> Result<(), VmmError> {
        self.running.send_replace(false);
        Ok(())
    }

    async fn resume(&mut self) -> Result<(), VmmError> {
        self.running.send_replace(true);
        Ok(())
    }

    async fn run_state(&mut self) -> Option<String> {
        Some(
            if *self.running.borrow() {
                "running"
            } else {
                "paused"
            }
            .to_owned(),
        )
    }

    async fn snapshot(&mut self, state: &Path) -> Result<SnapshotFiles, VmmError> {
        self.running.send_replace(false);
        let Some(memory) = self.memory_file.clone() else {
            return Err(VmmError::Control(
                "this VM was not started with a memory file to snapshot into".to_owned(),
            ));
        };
        let bytes = memory_bytes(&self.memory.lock().unwrap_or_else(|p| p.into_inner()));
        let io = |what: &'static str| {
            move |source| VmmError::Io {
                what: what.to_owned(),
                source,
            }
        };
        std::fs::write(&memory, bytes).map_err(io("writing the memory file"))?;
        std::fs::write(state, STATE_MARK).map_err(io("writing the state file"))?;
        Ok(SnapshotFiles {
            memory,
            state: state.to_path_buf(),
        })
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    async fn destroy(&mut self) {
        self.stop();
    }
}

struct GuestCtx {
    vm_id: String,
    memory_mib: u32,
    restored: bool,
    handlers: Handlers,
    memory: Arc<Mutex<Memory>>,
    running: watch::Receiver<bool>,
    counters: Arc<GuestCounters>,
}

async fn send(stream: &mut UnixStream, msg: &GuestMessage) -> bool {
    match encode(msg) {
        Ok(frame) => stream.write_all(&frame).await.is_ok(),
        Err(_) => false,
    }
}

async fn recv(stream: &mut UnixStream) -> Option<HostMessage> {
    let mut raw = [0u8; HEADER_LEN];
    stream.read_exact(&mut raw).await.ok()?;
    let header = Header::parse(&raw, MAX_HOST_FRAME).ok()?;
    let mut body = vec![0u8; header.len as usize];
    stream.read_exact(&mut body).await.ok()?;
    header.decode_body(&body).ok()
}

/// The guest's side of the session, in the order `ignition-agent` answers: `Ready` after a
/// boot (a restored guest is already past it), then one answer per host message.
async fn serve(mut stream: UnixStream, mut ctx: GuestCtx) {
    if !ctx.restored {
        let ready = GuestMessage::Ready {
            agent_version: "in-process".to_owned(),
            kernel_release: KERNEL_RELEASE.to_owned(),
        };
        if !send(&mut stream, &ready).await {
            return;
        }
    }
    while let Some(msg) = recv(&mut stream).await {
        // A paused VM runs nothing: what the host sent waits until it resumes.
        if ctx.running.wait_for(|r| *r).await.is_err() {
            return;
        }
        let reply = match msg {
            HostMessage::Shutdown => return,
            // A guest that dies installing the code (as one given more code than its memory
            // holds does): the channel closes.
            HostMessage::LoadFunction(spec) if spec.handler == CRASH_ON_LOAD => return,
            HostMessage::LoadFunction(spec) => {
                let mut m = ctx.memory.lock().unwrap_or_else(|p| p.into_inner());
                if m.loaded.is_some() {
                    GuestMessage::Fatal {
                        message: "a function is already loaded in this VM".to_owned(),
                    }
                } else {
                    m.loaded = Some(Arc::new(spec));
                    GuestMessage::Loaded
                }
            }
            HostMessage::Warmup(_) => match loaded(&ctx) {
                Some(_) => GuestMessage::Warmed,
                None => GuestMessage::Fatal {
                    message: "warm-up before any function was loaded".to_owned(),
                },
            },
            HostMessage::Invoke(req) => match loaded(&ctx) {
                Some(f) => GuestMessage::Result(invoke(&ctx, f, req).await),
                None => GuestMessage::Fatal {
                    message: "invoke before any function was loaded".to_owned(),
                },
            },
        };
        if !send(&mut stream, &reply).await {
            return;
        }
    }
}

fn loaded(ctx: &GuestCtx) -> Option<Arc<FunctionSpec>> {
    ctx.memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .loaded
        .clone()
}

async fn invoke(ctx: &GuestCtx, function: Arc<FunctionSpec>, req: InvokeRequest) -> InvokeResult {
    ctx.counters.invocations.fetch_add(1, Ordering::Relaxed);
    let served = {
        let mut m = ctx.memory.lock().unwrap_or_else(|p| p.into_inner());
        m.served += 1;
        m.served
    };
    let started = Instant::now();
    let outcome_and_logs = match ctx.handlers.get(&function.handler) {
        None => (
            Outcome::InitError(ignition_proto::ErrorBody {
                error_type: "Runtime.ImportModuleError".to_owned(),
                error_message: format!(
                    "the in-process guest has no handler named {:?}",
                    function.handler
                ),
                stack_trace: Vec::new(),
            }),
            Vec::new(),
        ),
        Some(h) => {
            let call = Call {
                function: Arc::clone(&function),
                request_id: req.request_id.clone(),
                payload: req.payload,
                vm_id: ctx.vm_id.clone(),
                memory_mib: ctx.memory_mib,
                restored: ctx.restored,
                served,
            };
            match tokio::time::timeout(Duration::from_millis(req.timeout_ms), h(call)).await {
                Ok(reply) => (reply.outcome(), reply.logs),
                Err(_) => (
                    Outcome::Timeout {
                        after_ms: req.timeout_ms,
                    },
                    Vec::new(),
                ),
            }
        }
    };
    let (outcome, logs) = outcome_and_logs;
    InvokeResult {
        request_id: req.request_id,
        outcome,
        logs,
        logs_truncated: false,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        network_us: 0,
    }
}
