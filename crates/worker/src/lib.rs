//! Runs invocations in microVMs.
//!
//! This crate owns the host side of an execution: admission (how many VMs run at once), where
//! a guest comes from (a fresh boot, a restore from the function's snapshot, or a warm slot
//! from the pool), the guest's lifecycle around one invocation, and the host end of the guest
//! protocol, where every frame from the guest is size-checked, decoded strictly, matched
//! against what was asked, and read under a deadline. A guest that misbehaves costs its own VM
//! and nothing else.
//!
//! Every invocation gets a VM no one used before, destroyed after, unless the function opted
//! into reuse, and then a VM only ever serves that one function.

mod channel;
mod code_image;
mod error;
mod guest;
mod launcher;
mod pool;
mod reuse;
mod snapshot;
mod worker;

pub use channel::ChannelError;
pub use code_image::{CodeImageError, CodeSource, LayerCode, DRIVE_BYTES};
pub use error::ExecError;
pub use pool::{PoolConfig, PoolStatus};
pub use snapshot::SnapshotError;
pub use worker::{
    is_version_of, version_spec_name, Execution, Job, StartKind, StartMode, Timings, Worker,
    WorkerConfig, WorkerStats,
};
