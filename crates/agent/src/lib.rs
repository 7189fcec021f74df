//! The guest side of Ignition: everything PID 1 does inside a microVM.
//!
//! It owns the guest side of an execution: it prepares the guest (mounts, kernel modules, the
//! read-only root with a writable layer that dies with the VM), opens the host channel, and serves
//! the AWS Lambda Runtime API to whatever runtime runs the function. The host is trusted here; the
//! function is not, so the agent keeps the runtime at arm's length: it runs as an unprivileged
//! user with a process limit, its output is bounded, its answers are size-checked, and the agent
//! itself never exits (PID 1 exiting panics the kernel).
//!
//! The library form exists so that test fixtures (a deliberately hostile guest) can reuse the
//! guest set-up; `ignition-agent` is the binary.

#![cfg(target_os = "linux")]

pub mod channel;
mod code_drive;
mod entropy;
mod handlers;
mod image_root;
pub mod init;
mod network;
mod runtime_api;
pub mod session;
mod supervisor;

/// The runtime clients Ignition ships, written into the guest at boot; each speaks the Runtime
/// API to the agent and calls the function's handler.
const PYTHON_RUNTIME: &str = include_str!("../runtimes/python/bootstrap.py");
const NODE_RUNTIME: &str = include_str!("../runtimes/nodejs/bootstrap.js");
