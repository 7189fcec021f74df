//! Runs invocations in microVMs: one fresh VM per invocation, destroyed afterwards.
//!
//! This crate owns the host side of an execution: admission (how many VMs run at once), the
//! VM's lifecycle around one invocation, and the host end of the guest protocol, where every
//! frame from the guest is size-checked, decoded strictly, matched against what was asked, and
//! read under a deadline. A guest that misbehaves costs its own VM and nothing else.

mod channel;
mod execute;

pub use channel::ChannelError;
pub use execute::{ExecError, Execution, Job, Timings, Worker, WorkerConfig};
