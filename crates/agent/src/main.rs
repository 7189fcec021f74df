//! `ignition-agent`: PID 1 inside every microVM.
//!
//! It owns the guest side of an execution: it prepares the guest (mounts, kernel modules, the
//! read-only root with a writable layer that dies with the VM), opens the host channel, and serves
//! the AWS Lambda Runtime API to whatever runtime runs the function. The host is trusted here; the
//! function is not, so the agent keeps the runtime at arm's length: its output is bounded, its
//! answers are size-checked, and the agent itself never exits (PID 1 exiting panics the kernel).
//!
//! Outside a VM (not PID 1) it refuses to run, so that nobody mounts over a host's root by mistake.

#[cfg(target_os = "linux")]
mod channel;
#[cfg(target_os = "linux")]
mod entropy;
#[cfg(target_os = "linux")]
mod init;
#[cfg(target_os = "linux")]
mod runtime_api;
#[cfg(target_os = "linux")]
mod session;
#[cfg(target_os = "linux")]
mod supervisor;

/// The Python bootstrap, written into the guest at boot; it speaks the Runtime API.
#[cfg(target_os = "linux")]
const PYTHON_BOOTSTRAP: &str = include_str!("../runtimes/python/bootstrap.py");

#[cfg(target_os = "linux")]
fn main() {
    if std::process::id() != 1 {
        eprintln!("ignition-agent: must run as PID 1 inside an Ignition microVM");
        std::process::exit(2);
    }
    let err = match init::prepare_guest() {
        Ok(guest) => session::serve(guest),
        Err(e) => e,
    };
    init::die(&err);
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("ignition-agent runs only inside a Linux microVM");
    std::process::exit(2);
}
