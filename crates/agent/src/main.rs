//! `ignition-agent`: PID 1 inside every microVM (see the library's documentation).
//!
//! Outside a VM (not PID 1) it refuses to run, so that nobody mounts over a host's root by mistake.

#[cfg(target_os = "linux")]
fn main() {
    use ignition_agent::{init, session};
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
