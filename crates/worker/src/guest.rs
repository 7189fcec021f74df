//! A running guest and the host's half of the conversation with its agent.

use std::time::Duration;

use ignition_net::VmNet;
use ignition_proto::{
    FunctionSpec, GuestMessage, HostMessage, InvokeRequest, InvokeResult, NetworkConfig, Outcome,
    MAX_LOG_BYTES, MAX_RESULT_BYTES,
};
use ignition_vmm::MicroVm;
use tokio::time::Instant;

use crate::channel::{AgentChannel, ChannelError};
use crate::ExecError;

/// Console bytes quoted in an error about a guest that failed to come up.
const CONSOLE_QUOTE: usize = 2048;
/// How long a warm-up may take: it runs no user code.
pub(crate) const WARMUP_LIMIT: Duration = Duration::from_secs(10);
/// How long past an invocation's timeout the host waits for the agent's report of it (the
/// agent's timer starts when the request arrives; its report carries up to the log limit)
/// before it treats the guest as unresponsive.
const UNRESPONSIVE_GRACE: Duration = Duration::from_secs(2);
/// Fresh host randomness given to the guest with every invocation.
const ENTROPY_BYTES: usize = 64;

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].trim().to_owned()
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms)
}

fn host_entropy() -> Vec<u8> {
    let mut buf = vec![0u8; ENTROPY_BYTES];
    // uuid v4 draws from the OS RNG (getrandom); four of them fill the buffer.
    for chunk in buf.chunks_mut(16) {
        let id = uuid::Uuid::new_v4();
        chunk.copy_from_slice(&id.as_bytes()[..chunk.len()]);
    }
    buf
}

fn kind(msg: &GuestMessage) -> &'static str {
    match msg {
        GuestMessage::Ready { .. } => "Ready",
        GuestMessage::Loaded => "Loaded",
        GuestMessage::Result(_) => "Result",
        GuestMessage::Warmed => "Warmed",
        GuestMessage::Fatal { .. } => "Fatal",
    }
}

/// The protocol's form of a guest's interface configuration.
pub(crate) fn network_config(g: &ignition_net::GuestNetwork) -> NetworkConfig {
    NetworkConfig {
        address: g.address.octets(),
        prefix_len: g.prefix_len,
        gateway: g.gateway.octets(),
        dns: g.dns.iter().map(|d| d.octets()).collect(),
    }
}

/// A VM with its agent channel.
/// Counts guests from their start until their `destroy` has returned (or they are dropped),
/// so that a shutdown can wait for the last one instead of guessing.
#[derive(Debug, Default, Clone)]
pub(crate) struct LiveGuests(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl LiveGuests {
    pub(crate) fn enter(&self) -> LiveGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        LiveGuard(std::sync::Arc::clone(&self.0))
    }

    pub(crate) fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// One guest's place in [`LiveGuests`].
#[derive(Debug)]
pub(crate) struct LiveGuard(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub(crate) struct Guest {
    pub(crate) vm: Box<dyn MicroVm>,
    chan: AgentChannel,
    paused: bool,
    pub(crate) kernel_release: String,
    /// The VM's network, released after the VM is gone.
    net: Option<VmNet>,
    /// Dropped last, when the guest is gone.
    _live: LiveGuard,
}

impl Guest {
    /// Wraps a started VM. On failure the VM and its network are torn down.
    pub(crate) async fn new(
        mut vm: Box<dyn MicroVm>,
        paused: bool,
        kernel_release: String,
        net: Option<VmNet>,
        live: LiveGuard,
    ) -> Result<Self, ExecError> {
        let Some(stream) = vm.take_channel() else {
            vm.destroy().await;
            if let Some(mut n) = net {
                n.release().await;
            }
            return Err(ExecError::Protocol("VM has no agent channel".into()));
        };
        Ok(Self {
            vm,
            chan: AgentChannel::new(stream),
            paused,
            kernel_release,
            net,
            _live: live,
        })
    }

    /// The end of the VM's console, as quoted in errors and logs.
    pub(crate) fn console(&self) -> String {
        tail(&self.vm.console_tail(), CONSOLE_QUOTE)
    }

    /// Waits for the agent's `Ready`; records the kernel it reports.
    pub(crate) async fn await_ready(&mut self, limit: Duration) -> Result<(), ExecError> {
        match self.chan.recv(Instant::now() + limit).await {
            Ok(GuestMessage::Ready { kernel_release, .. }) => {
                self.kernel_release = kernel_release;
                Ok(())
            }
            Ok(GuestMessage::Fatal { message }) => Err(ExecError::NotReady {
                reason: capped(message, MAX_FATAL).0,
                console: self.console(),
            }),
            Ok(other) => Err(ExecError::Protocol(format!(
                "expected Ready, got {}",
                kind(&other)
            ))),
            Err(e) => Err(ExecError::NotReady {
                reason: match e {
                    ChannelError::Deadline => format!("no Ready within {limit:?}"),
                    other => other.to_string(),
                },
                console: self.console(),
            }),
        }
    }

    /// Installs the function and waits until its runtime finished initializing.
    pub(crate) async fn load(
        &mut self,
        function: FunctionSpec,
        limit: Duration,
    ) -> Result<(), ExecError> {
        let deadline = Instant::now() + limit;
        self.chan
            .send(&HostMessage::LoadFunction(function), deadline)
            .await
            .map_err(|e| ExecError::Protocol(e.to_string()))?;
        match self.chan.recv(deadline).await {
            Ok(GuestMessage::Loaded) => Ok(()),
            Ok(GuestMessage::Fatal { message }) => {
                Err(ExecError::Guest(capped(message, MAX_FATAL).0))
            }
            Ok(other) => Err(ExecError::Protocol(format!(
                "expected Loaded, got {}",
                kind(&other)
            ))),
            Err(ChannelError::Deadline) => Err(ExecError::InitTimeout(limit)),
            Err(e) => Err(ExecError::Protocol(format!("loading the function: {e}"))),
        }
    }

    /// Resumes the VM if it is paused.
    pub(crate) async fn resume(&mut self) -> Result<(), ExecError> {
        if self.paused {
            self.vm.resume().await?;
            self.paused = false;
        }
        Ok(())
    }

    /// Resumes the VM, runs the agent's warm-up (the invocation path without the handler), and
    /// pauses it again.
    pub(crate) async fn warm_up(&mut self, limit: Duration) -> Result<(), ExecError> {
        let network = self.network_config();
        self.warm_up_with(network, limit).await
    }

    /// The warm-up before a function's snapshot is saved: the runtime's first pass through the
    /// invocation path (its lazy initialization), so that every VM restored from it starts past
    /// it, with `network` (the configuration every VM restored from it shares, if any) in
    /// force. Never this VM's own network: a snapshot must carry no one VM's configuration.
    pub(crate) async fn warm_up_runtime(
        &mut self,
        network: Option<NetworkConfig>,
        limit: Duration,
    ) -> Result<(), ExecError> {
        self.warm_up_with(network, limit).await
    }

    async fn warm_up_with(
        &mut self,
        network: Option<NetworkConfig>,
        limit: Duration,
    ) -> Result<(), ExecError> {
        self.resume().await?;
        let deadline = Instant::now() + limit;
        self.chan
            .send(&HostMessage::Warmup(network), deadline)
            .await
            .map_err(|e| ExecError::Protocol(e.to_string()))?;
        match self.chan.recv(deadline).await {
            Ok(GuestMessage::Warmed) => {}
            Ok(GuestMessage::Fatal { message }) => {
                return Err(ExecError::Guest(capped(message, MAX_FATAL).0))
            }
            Ok(other) => {
                return Err(ExecError::Protocol(format!(
                    "expected Warmed, got {}",
                    kind(&other)
                )))
            }
            Err(e) => return Err(ExecError::Protocol(format!("warm-up: {e}"))),
        }
        self.vm.pause().await?;
        self.paused = true;
        Ok(())
    }

    /// Runs one invocation (resuming the VM first if it is paused).
    pub(crate) async fn invoke(
        &mut self,
        request_id: &str,
        payload: Vec<u8>,
        client_context: Option<String>,
        timeout: Duration,
    ) -> Result<InvokeResult, ExecError> {
        self.resume().await?;
        // The agent ends the invocation at `timeout` itself and reports what was logged; this
        // deadline only ends a guest that stopped answering.
        let deadline = Instant::now() + timeout + UNRESPONSIVE_GRACE;
        let req = InvokeRequest {
            request_id: request_id.to_owned(),
            payload,
            timeout_ms: ms(timeout),
            host_time_unix_ms: now_unix_ms(),
            entropy: host_entropy(),
            vm_id: self.vm.id().to_owned(),
            network: self.network_config(),
            client_context,
        };
        self.chan
            .send(&HostMessage::Invoke(req), deadline)
            .await
            .map_err(|e| match e {
                ChannelError::Deadline => ExecError::Timeout(timeout),
                other => ExecError::Protocol(other.to_string()),
            })?;
        let mut result = match self.chan.recv(deadline).await {
            Ok(GuestMessage::Result(r)) => r,
            Ok(GuestMessage::Fatal { message }) => {
                return Err(ExecError::Guest(capped(message, MAX_FATAL).0))
            }
            Ok(other) => {
                return Err(ExecError::Protocol(format!(
                    "expected Result, got {}",
                    kind(&other)
                )))
            }
            Err(ChannelError::Deadline) => return Err(ExecError::Timeout(timeout)),
            Err(e) => return Err(ExecError::Protocol(e.to_string())),
        };
        validate(&result, request_id)?;
        if let Outcome::Timeout { after_ms } = &mut result.outcome {
            // The guest's word is not taken for which timeout it was.
            *after_ms = ms(timeout);
        }
        Ok(result)
    }

    /// What the guest configures its interface with (`None`: the VM has no network).
    fn network_config(&self) -> Option<NetworkConfig> {
        self.net.as_ref().map(|n| network_config(n.guest()))
    }

    /// How long the host took to make this VM's network, µs (0 without one).
    pub(crate) fn net_setup_us(&self) -> u64 {
        self.net.as_ref().map_or(0, VmNet::setup_us)
    }

    /// Proportional set size of the VMM process, MiB (what this VM costs the host).
    pub(crate) fn pss_mib(&self) -> Option<f64> {
        pss_mib_of(self.vm.pid()?)
    }

    /// The VMM's process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.vm.pid()
    }

    pub(crate) async fn destroy(mut self) {
        self.vm.destroy().await;
        if let Some(n) = self.net.as_mut() {
            n.release().await;
        }
    }
}

/// What a guest writes in its own words reaches callers, logs and the store: each part is cut
/// to a size of its own (the frame limit, 8 MiB, bounds only the whole).
const MAX_FATAL: usize = 4 * 1024;
const MAX_ERROR_TYPE: usize = 256;
const MAX_ERROR_MESSAGE: usize = 64 * 1024;
const MAX_STACK_TRACE: usize = 64 * 1024;
const CUT: &str = " [truncated by the host]";

/// `s` cut to at most `max` bytes (at a character boundary, marked); whether it was cut.
fn capped(mut s: String, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let keep = max.saturating_sub(CUT.len());
    let end = (0..=keep)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s.truncate(end);
    s.push_str(CUT);
    (s, true)
}

/// Cuts a function or init error's type, message and stack trace to their sizes; whether
/// anything was cut.
pub(crate) fn cap_error_strings(outcome: &mut Outcome) -> bool {
    let (Outcome::FunctionError(e) | Outcome::InitError(e)) = outcome else {
        return false;
    };
    let (t, cut_type) = capped(std::mem::take(&mut e.error_type), MAX_ERROR_TYPE);
    let (m, cut_message) = capped(std::mem::take(&mut e.error_message), MAX_ERROR_MESSAGE);
    e.error_type = t;
    e.error_message = m;
    let mut total = 0;
    let before = e.stack_trace.len();
    e.stack_trace.retain(|line| {
        total += line.len();
        total <= MAX_STACK_TRACE
    });
    let cut_trace = e.stack_trace.len() < before;
    if cut_trace {
        e.stack_trace.push(CUT.trim().to_owned());
    }
    cut_type || cut_message || cut_trace
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

/// Proportional set size of process `pid`, MiB.
pub(crate) fn pss_mib_of(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
