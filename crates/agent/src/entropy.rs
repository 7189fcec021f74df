//! Reseeding the guest's RNG with entropy from the host.
//!
//! Every VM restored from one snapshot starts with the same RNG state; without this, two
//! invocations on two VMs would draw the same "random" bytes.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
const MAX_ENTROPY: usize = 256;

/// `struct rand_pool_info` with its buffer inline.
#[repr(C)]
struct PoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_ENTROPY],
}

/// Mixes `bytes` into the kernel's pool (crediting them as entropy when `credit`) and forces the
/// CRNG to reseed from it.
pub(crate) fn reseed(bytes: &[u8], credit: bool) -> Result<(), String> {
    if bytes.is_empty() {
        return Ok(());
    }
    let n = bytes.len().min(MAX_ENTROPY);
    let mut info = PoolInfo {
        entropy_count: if credit {
            libc::c_int::try_from(n * 8).unwrap_or(0)
        } else {
            0
        },
        buf_size: libc::c_int::try_from(n).unwrap_or(0),
        buf: [0; MAX_ENTROPY],
    };
    info.buf[..n].copy_from_slice(&bytes[..n]);
    let dev = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("open /dev/urandom: {e}"))?;
    // SAFETY: the fd is open for the duration of the call; `info` is a valid rand_pool_info
    // whose buf_size does not exceed its inline buffer; the kernel only reads it.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY, &info) };
    if rc < 0 {
        return Err(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG) };
    if rc < 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
