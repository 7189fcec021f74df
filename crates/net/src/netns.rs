//! Network namespaces held by file descriptor.
//!
//! A namespace is created by a short-lived thread that unshares its own network namespace,
//! opens a descriptor to it and runs the set-up inside it; the namespace then lives as long as
//! that descriptor or a process in it (the VMM) does. No `/run/netns` names, so nothing is left
//! in the filesystem if the server dies.

use std::os::fd::OwnedFd;

use nix::fcntl::{open, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;

use crate::NetError;

/// A descriptor of the calling thread's network namespace.
pub(crate) fn current() -> Result<OwnedFd, NetError> {
    open(
        "/proc/thread-self/ns/net",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| NetError::Namespace(format!("open /proc/thread-self/ns/net: {e}")))
}

/// Creates a network namespace and runs `setup` inside it, on a thread of its own (joining a
/// namespace changes the calling thread, which must not be one of the runtime's).
pub(crate) async fn create<T, F>(setup: F) -> Result<(OwnedFd, T), NetError>
where
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ignition-netns".into())
        .spawn(move || {
            let made = unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Namespace(format!("unshare(CLONE_NEWNET): {e}")))
                .and_then(|()| current())
                .and_then(|fd| setup().map(|t| (fd, t)));
            let _ = tx.send(made);
        })
        .map_err(|e| NetError::Namespace(format!("spawn a namespace thread: {e}")))?;
    rx.await
        .map_err(|_| NetError::Namespace("the namespace thread died".into()))?
}

/// Runs `f` on a thread of its own inside the namespace `ns`.
pub(crate) async fn enter<T, F>(ns: &OwnedFd, f: F) -> Result<T, NetError>
where
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
    T: Send + 'static,
{
    let ns = ns
        .try_clone()
        .map_err(|e| NetError::Namespace(format!("duplicate the namespace descriptor: {e}")))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ignition-netns".into())
        .spawn(move || {
            let r = setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Namespace(format!("setns: {e}")))
                .and_then(|()| f());
            let _ = tx.send(r);
        })
        .map_err(|e| NetError::Namespace(format!("spawn a namespace thread: {e}")))?;
    rx.await
        .map_err(|_| NetError::Namespace("the namespace thread died".into()))?
}
