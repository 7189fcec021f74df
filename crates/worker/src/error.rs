//! Why an execution failed.

use std::time::Duration;

use ignition_vmm::VmmError;

use crate::snapshot::SnapshotError;

/// Why an execution failed (a handler error is not a failure: it is an
/// [`ignition_proto::Outcome`]).
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
    /// A snapshot could not be made or used.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The function's code could not be put on its drive.
    #[error("{0}")]
    CodeImage(#[from] crate::CodeImageError),
    /// No warm slot could be had before the deadline.
    #[error("no warm slot became available within {0:?}")]
    NoSlot(Duration),
    /// The VM's network could not be made.
    #[error("VM network: {0}")]
    Network(#[from] ignition_net::NetError),
    /// The worker is shutting down.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The node's queue holds its limit of invocations waiting for a slot.
    #[error("the node's queue holds its limit of {0} invocations waiting for a microVM")]
    QueueFull(usize),
    /// Another node of the cluster took the invocation and could not run it, or the
    /// invocation could not be placed.
    #[error("cluster: {0}")]
    Cluster(String),
}
