//! One invocation, start to finish, in a VM of its own.

use std::sync::Arc;
use std::time::Duration;

use ignition_image::GuestImage;
use ignition_proto::{
    FunctionSpec, GuestMessage, HostMessage, InvokeRequest, InvokeResult, Outcome, MAX_LOG_BYTES,
    MAX_RESULT_BYTES,
};
use ignition_vmm::{MicroVm, VmSource, VmSpec, VmmDriver, VmmError};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::channel::{AgentChannel, ChannelError};

/// Console bytes quoted in an error about a guest that failed to come up.
const CONSOLE_QUOTE: usize = 2048;

/// How the worker runs VMs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// VMs that may run at once on this node; invocations beyond it wait their turn.
    pub max_vms: usize,
    /// How long a guest may take from VMM start to `Ready`.
    pub boot_timeout: Duration,
    /// How long installing a function's code and initializing its runtime may take.
    pub load_timeout: Duration,
}

/// One invocation to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The function as the guest needs it.
    pub function: FunctionSpec,
    /// The request id.
    pub request_id: String,
    /// The event (JSON bytes).
    pub payload: Vec<u8>,
    /// The function's timeout; the VM is killed when it passes.
    pub timeout: Duration,
}

/// Where the time of one invocation went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting for a free VM slot.
    pub queued_ms: u64,
    /// VMM process start until the channel connected.
    pub vm_start_ms: u64,
    /// Channel connected until the agent said `Ready` (the guest's boot).
    pub guest_ready_ms: u64,
    /// Installing the code and starting the runtime.
    pub load_ms: u64,
    /// The invocation, from sending the event to the result.
    pub invoke_ms: u64,
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
    /// Where the time went.
    pub timings: Timings,
}

/// Why an execution failed (a handler error is not a failure: it is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The VM could not be started.
    #[error("microVM start failed: {0}")]
    Vmm(#[from] VmmError),
    /// The guest did not become ready.
    #[error("the guest did not become ready: {reason}; console: {console}")]
    NotReady {
        /// What happened.
        reason: String,
        /// The end of the guest's console.
        console: String,
    },
    /// The function ran past its timeout and its VM was killed.
    #[error("Task timed out after {:.2} seconds", .0.as_secs_f64())]
    Timeout(Duration),
    /// Installing the code and initializing the runtime took longer than allowed.
    #[error("function initialization did not finish within {:.0} seconds", .0.as_secs_f64())]
    InitTimeout(Duration),
    /// The guest broke the protocol (garbage, wrong request id, oversized data, early close).
    #[error("the guest broke the protocol: {0}")]
    Protocol(String),
    /// The guest reported an error it could not recover from.
    #[error("the guest agent failed: {0}")]
    Guest(String),
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms)
}

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].trim().to_owned()
}

/// Runs invocations, each in a fresh VM.
#[derive(Debug)]
pub struct Worker {
    driver: Arc<dyn VmmDriver>,
    image: GuestImage,
    config: WorkerConfig,
    slots: Semaphore,
}

impl Worker {
    /// A worker that boots `image` with `driver`.
    pub fn new(driver: Arc<dyn VmmDriver>, image: GuestImage, config: WorkerConfig) -> Self {
        let slots = Semaphore::new(config.max_vms.max(1));
        Self {
            driver,
            image,
            config,
            slots,
        }
    }

    /// The image VMs boot.
    pub fn image(&self) -> &GuestImage {
        &self.image
    }

    /// Runs `job` in a new VM and destroys the VM afterwards, whatever happened.
    pub async fn run(&self, job: Job) -> Result<Execution, ExecError> {
        let t0 = Instant::now();
        let _permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| ExecError::Guest("worker is shutting down".into()))?;
        let mut timings = Timings {
            queued_ms: ms(t0.elapsed()),
            ..Timings::default()
        };
        let spec = VmSpec {
            id: format!("vm-{}", uuid::Uuid::new_v4().simple()),
            source: VmSource::Boot {
                kernel: self.image.kernel.clone(),
                initramfs: self.image.initramfs.clone(),
                rootfs: self.image.rootfs.clone(),
                extra_cmdline: vec![format!(
                    "ignition.scratch_mib={}",
                    (job.function.memory_mib / 2).max(16)
                )],
            },
            memory_mib: job.function.memory_mib,
            vcpus: 1,
            connect_timeout: Duration::from_secs(10),
        };
        let t_vm = Instant::now();
        let mut vm = self.driver.start(&spec).await?;
        timings.vm_start_ms = ms(t_vm.elapsed());
        let outcome = self.drive(vm.as_mut(), job, &mut timings).await;
        vm.destroy().await;
        timings.total_ms = ms(t0.elapsed());
        outcome.map(|(result, kernel_release)| Execution {
            result,
            kernel_release,
            timings,
        })
    }

    async fn drive(
        &self,
        vm: &mut dyn MicroVm,
        job: Job,
        timings: &mut Timings,
    ) -> Result<(InvokeResult, String), ExecError> {
        let stream = vm
            .take_channel()
            .ok_or_else(|| ExecError::Protocol("VM has no agent channel".into()))?;
        let mut chan = AgentChannel::new(stream);
        let t = Instant::now();
        let ready = chan.recv(t + self.config.boot_timeout).await;
        let kernel_release = match ready {
            Ok(GuestMessage::Ready { kernel_release, .. }) => kernel_release,
            Ok(GuestMessage::Fatal { message }) => {
                return Err(ExecError::NotReady {
                    reason: message,
                    console: tail(&vm.console_tail(), CONSOLE_QUOTE),
                })
            }
            Ok(other) => {
                return Err(ExecError::Protocol(format!(
                    "expected Ready, got {}",
                    kind(&other)
                )))
            }
            Err(e) => {
                let reason = match e {
                    ChannelError::Deadline => {
                        format!("no Ready within {:?}", self.config.boot_timeout)
                    }
                    other => other.to_string(),
                };
                return Err(ExecError::NotReady {
                    reason,
                    console: tail(&vm.console_tail(), CONSOLE_QUOTE),
                });
            }
        };
        timings.guest_ready_ms = ms(t.elapsed());

        let t = Instant::now();
        let deadline = t + self.config.load_timeout;
        chan.send(&HostMessage::LoadFunction(job.function), deadline)
            .await
            .map_err(|e| ExecError::Protocol(e.to_string()))?;
        match chan.recv(deadline).await {
            Ok(GuestMessage::Loaded) => {}
            Ok(GuestMessage::Fatal { message }) => return Err(ExecError::Guest(message)),
            Ok(other) => {
                return Err(ExecError::Protocol(format!(
                    "expected Loaded, got {}",
                    kind(&other)
                )))
            }
            Err(ChannelError::Deadline) => {
                return Err(ExecError::InitTimeout(self.config.load_timeout))
            }
            Err(e) => return Err(ExecError::Protocol(format!("loading the function: {e}"))),
        }
        timings.load_ms = ms(t.elapsed());

        let t = Instant::now();
        let deadline = t + job.timeout;
        let request_id = job.request_id.clone();
        let req = InvokeRequest {
            request_id: job.request_id,
            payload: job.payload,
            timeout_ms: ms(job.timeout),
            host_time_unix_ms: now_unix_ms(),
        };
        chan.send(&HostMessage::Invoke(req), deadline)
            .await
            .map_err(|e| match e {
                ChannelError::Deadline => ExecError::Timeout(job.timeout),
                other => ExecError::Protocol(other.to_string()),
            })?;
        let result = match chan.recv(deadline).await {
            Ok(GuestMessage::Result(r)) => r,
            Ok(GuestMessage::Fatal { message }) => return Err(ExecError::Guest(message)),
            Ok(other) => {
                return Err(ExecError::Protocol(format!(
                    "expected Result, got {}",
                    kind(&other)
                )))
            }
            Err(ChannelError::Deadline) => return Err(ExecError::Timeout(job.timeout)),
            Err(e) => return Err(ExecError::Protocol(e.to_string())),
        };
        timings.invoke_ms = ms(t.elapsed());
        validate(&result, &request_id)?;
        Ok((result, kernel_release))
    }
}

fn kind(msg: &GuestMessage) -> &'static str {
    match msg {
        GuestMessage::Ready { .. } => "Ready",
        GuestMessage::Loaded => "Loaded",
        GuestMessage::Result(_) => "Result",
        GuestMessage::Fatal { .. } => "Fatal",
    }
}

/// The frame limit bounds the total; these bound each part as the API promises them.
fn validate(result: &InvokeResult, request_id: &str) -> Result<(), ExecError> {
    if result.request_id != request_id {
        return Err(ExecError::Protocol(format!(
            "result for request {:?} while {request_id:?} was in flight",
            result.request_id
        )));
    }
    if result.logs.len() > MAX_LOG_BYTES {
        return Err(ExecError::Protocol(format!(
            "{} bytes of logs exceed the limit",
            result.logs.len()
        )));
    }
    if let Outcome::Success(body) = &result.outcome {
        if body.len() > MAX_RESULT_BYTES {
            return Err(ExecError::Protocol(format!(
                "{} byte result exceeds the limit",
                body.len()
            )));
        }
    }
    Ok(())
}
