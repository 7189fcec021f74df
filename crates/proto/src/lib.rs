//! The protocol spoken between the host and the guest agent (PID 1 in every microVM).
//!
//! A frame is an 8-byte header followed by a body:
//!
//! ```text
//! +------+------+---------+----------+---------------------+
//! | 'I'  | 'G'  | version | reserved | body length (u32 BE)|   then `length` bytes of body
//! +------+------+---------+----------+---------------------+
//! ```
//!
//! The body is a [`postcard`]-encoded [`HostMessage`] (host to guest) or [`GuestMessage`] (guest to
//! host). Every frame carries the protocol version so that a guest image built by another release is
//! refused at the first frame instead of being misread.
//!
//! The host treats everything a guest sends as hostile: the decoder checks the magic, the version and
//! the length against a limit *before* it allocates or reads the body, and a body that does not decode
//! exactly is an error. This crate owns that validation; the transports (virtio-serial, vsock) and the
//! deadlines on every read live with their callers.

mod frame;
mod message;

pub use frame::{encode, read_frame, FrameDecoder, FrameError, Header, HEADER_LEN, MAGIC, VERSION};
pub use message::{
    Code, ErrorBody, FunctionSpec, GuestMessage, HostMessage, ImageProcess, InvokeRequest,
    InvokeResult, NetworkConfig, Outcome, Runtime, CODE_DRIVE_SERIAL,
};

/// Largest frame the host accepts from a guest: a 6 MiB result plus 1 MiB of logs and framing.
pub const MAX_GUEST_FRAME: u32 = 8 * 1024 * 1024;
/// Largest frame the guest accepts from the host. A node sends code on the code drive
/// ([`Code::Drive`]); a [`Code::Tar`] in a frame (test tools) must fit in this.
pub const MAX_HOST_FRAME: u32 = 72 * 1024 * 1024;
/// Largest function result (the response body), as AWS Lambda's synchronous limit.
pub const MAX_RESULT_BYTES: usize = 6 * 1024 * 1024;
/// Largest log excerpt a guest returns with one invocation; the rest is cut and marked so.
pub const MAX_LOG_BYTES: usize = 1024 * 1024;
/// The vsock port / virtio-serial port name the agent serves the host channel on.
pub const AGENT_PORT_NAME: &str = "ignition.agent";
/// The host's vsock port the agent connects to where the VMM offers vsock instead of a
/// virtio-serial port (Firecracker).
pub const AGENT_VSOCK_PORT: u32 = 1024;
