//! Tap devices, made with the tun driver's ioctls (the kernel refuses to create them over
//! rtnetlink).

use std::os::fd::AsRawFd;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::NetError;

/// Creates a persistent tap device `name` in the calling thread's network namespace, which
/// processes of group `group` may attach to. It stays after this returns (the VMM attaches to it
/// by name) and goes with its namespace.
pub(crate) fn create_persistent(name: &str, group: u32) -> Result<(), NetError> {
    let err = |what: &str, e: std::io::Error| NetError::Link(format!("tap {name}: {what}: {e}"));
    let fd = open(
        "/dev/net/tun",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open /dev/net/tun", e.into()))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value (empty name, no flags).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(NetError::Link(format!("tap name {name:?} is too long")));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // The flags are a c_short; both fit.
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq; `ifr` is a valid, initialized ifreq that outlives the
    // call, and `fd` is an open /dev/net/tun descriptor.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(err("TUNSETIFF", std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value; `fd` is attached to the tap.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(err("TUNSETPERSIST", std::io::Error::last_os_error()));
    }
    // A jailed VMM runs as an unprivileged user of the VMMs' group, and the tun driver lets it
    // attach only to a tap of its group (with neither owner nor group, attaching needs
    // CAP_NET_ADMIN). Only a process in the VM's network namespace sees this tap at all.
    // SAFETY: TUNSETGROUP takes a gid by value; `fd` is attached to the tap.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETGROUP,
            libc::c_ulong::from(group),
        )
    } < 0
    {
        return Err(err("TUNSETGROUP", std::io::Error::last_os_error()));
    }
    Ok(())
}
