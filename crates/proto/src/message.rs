//! The messages. Field order is part of the wire format (postcard is not self-describing):
//! append fields only with a [`crate::VERSION`] bump.

use serde::{Deserialize, Serialize};

pub use ignition_types::{ImageProcess, Runtime};

/// A function as the guest needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// The function's name (for `AWS_LAMBDA_FUNCTION_NAME`).
    pub name: String,
    /// The runtime interface.
    pub runtime: Runtime,
    /// `FILE.FUNC` for Python; passed as `_HANDLER` to a `provided` bootstrap.
    pub handler: String,
    /// Memory of the VM in MiB (for `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory_mib: u32,
    /// User environment variables.
    pub env: Vec<(String, String)>,
    /// Where the function's code is.
    pub code: Code,
    /// The name the function's owner knows it by (`AWS_LAMBDA_FUNCTION_NAME`, the ARN);
    /// `name` is the host's key for it, which carries a tenant and a version.
    pub display_name: String,
    /// `$LATEST` or a published version number (`AWS_LAMBDA_FUNCTION_VERSION`).
    pub version: String,
    /// The owning tenant's account id, for the function's ARN in the runtime's context.
    pub account_id: String,
    /// For a function packaged as a container image: the process to start. The code drive
    /// then holds the image's root filesystem, which the guest makes the process's root
    /// (`runtime` and `handler` are not used).
    pub image: Option<ImageProcess>,
}

/// Where a function's code comes from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Code {
    /// An uncompressed tar of regular files and directories, validated by the host. The host
    /// holds code in this form until it has put it on a drive; a guest unpacks it into its own
    /// memory.
    Tar(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A read-only filesystem on the VM's code drive ([`CODE_DRIVE_SERIAL`]), built by the host
    /// from the tar: the guest mounts it at `/var/task`, and reads the code through its page
    /// cache, which the kernel can drop, so code takes no guest memory it cannot give back.
    Drive,
}

/// The serial number of the VM's code drive, by which the guest finds its device (also the
/// drive's id where the VMM takes the id as the serial, as Firecracker does).
pub const CODE_DRIVE_SERIAL: &str = "ignition_code";

impl Code {
    /// Bytes of code the host holds (a drive's are on disk, not here).
    pub fn held_bytes(&self) -> usize {
        match self {
            Self::Tar(t) => t.len(),
            Self::Drive => 0,
        }
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Up to 64 MiB of bytes have no place in a log line.
        match self {
            Self::Tar(t) => write!(f, "Tar({} bytes)", t.len()),
            Self::Drive => f.write_str("Drive"),
        }
    }
}

/// One invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeRequest {
    /// The request id (`Lambda-Runtime-Aws-Request-Id`).
    pub request_id: String,
    /// The event, as JSON bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Milliseconds the handler has; the guest derives `Lambda-Runtime-Deadline-Ms` from its clock.
    pub timeout_ms: u64,
    /// The host's wall clock, so the guest can correct its own (a restored VM's clock is stale).
    pub host_time_unix_ms: u64,
    /// Fresh randomness from the host, mixed into the guest's RNG before the event is handed
    /// over: VMs restored from one snapshot must not share random numbers.
    #[serde(with = "serde_bytes")]
    pub entropy: Vec<u8>,
    /// The VM's identity; a runtime that sees it change knows it was restored and reseeds.
    pub vm_id: String,
    /// The guest's interface configuration, applied before the event is handed over when it
    /// differs from what the interface has (a restored slot's interface has none yet).
    /// `None`: the VM has no network.
    pub network: Option<NetworkConfig>,
    /// The caller's client context (`X-Amz-Client-Context`, decoded: JSON), handed to the
    /// runtime as `Lambda-Runtime-Client-Context`.
    pub client_context: Option<String>,
}

/// The address configuration of the guest's network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The guest's IPv4 address.
    pub address: [u8; 4],
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: [u8; 4],
    /// DNS resolvers for `/etc/resolv.conf` (empty: no DNS).
    pub dns: Vec<[u8; 4]>,
}

/// Messages from the host to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// Install the function's code and start its runtime.
    LoadFunction(FunctionSpec),
    /// Run one invocation.
    Invoke(InvokeRequest),
    /// Power off.
    Shutdown,
    /// Exercise the invocation path without running the function: a warm pool slot does this
    /// once after its restore, so that the caches (and a CPU emulator's translations) hold the
    /// platform's code before a real event arrives. The function's handler is not called.
    /// With a network configuration the interface is configured now, so that the invocation
    /// that takes the slot finds its network ready.
    Warmup(Option<NetworkConfig>),
}

/// A function error as the Lambda Runtime API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `errorType`, e.g. `ZeroDivisionError`.
    pub error_type: String,
    /// `errorMessage`.
    pub error_message: String,
    /// `stackTrace` lines.
    pub stack_trace: Vec<String>,
}

/// How an invocation ended inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The handler returned; the body is its JSON result.
    Success(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The handler raised (or the runtime reported an invocation error).
    FunctionError(ErrorBody),
    /// The runtime failed to initialize (`/init/error`, or it exited before asking for work).
    InitError(ErrorBody),
    /// The handler was still running when the invocation's timeout ran out. The agent stops
    /// waiting for it and reports what it logged until then; the runtime is left mid-call, so
    /// the VM is not used again.
    Timeout {
        /// The timeout that ran out, ms (the host states it from the function's configuration).
        after_ms: u64,
    },
}

/// The result of one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeResult {
    /// Echoes [`InvokeRequest::request_id`].
    pub request_id: String,
    /// What happened.
    pub outcome: Outcome,
    /// The runtime's stdout and stderr during this invocation (at most [`crate::MAX_LOG_BYTES`]).
    #[serde(with = "serde_bytes")]
    pub logs: Vec<u8>,
    /// Whether `logs` was cut.
    pub logs_truncated: bool,
    /// Milliseconds from handing the event to the runtime to its answer, by the guest's clock.
    pub duration_ms: u64,
    /// Microseconds the agent spent configuring the network interface for this invocation
    /// (0 when it was already configured).
    pub network_us: u64,
}

/// Messages from the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// The agent is up and the channel works.
    Ready {
        /// The agent's version.
        agent_version: String,
        /// `uname -r` of the guest kernel.
        kernel_release: String,
    },
    /// The function's code is installed and its runtime started.
    Loaded,
    /// An invocation finished.
    Result(InvokeResult),
    /// A [`HostMessage::Warmup`] finished.
    Warmed,
    /// The agent hit an error it cannot recover from; the host should destroy the VM.
    Fatal {
        /// What went wrong.
        message: String,
    },
}
