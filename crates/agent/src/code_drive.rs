//! The function's code on its drive: finding the device by its serial number, mounting the
//! filesystem the host built on it read-only, and binding its `task/` (the function's code) at
//! `/var/task` and its `opt/` (the function's layers, merged by the host) at `/opt`.
//!
//! The base snapshot's kernel probed the drive while it still held the placeholder the base VM
//! booted with (a partition scan reads its first blocks), and a restore points the drive at the
//! function's image: the block device's cached pages are dropped before the mount so that
//! nothing of the placeholder is read as the function's filesystem.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ignition_proto::CODE_DRIVE_SERIAL;
use nix::mount::MsFlags;

/// `BLKFLSBUF` (`_IO(0x12, 97)`): write back and drop a block device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// How long the drive may take to appear (it is probed with the block driver, at boot).
const FIND_LIMIT: Duration = Duration::from_secs(5);

/// The device node of the drive whose serial number is [`CODE_DRIVE_SERIAL`].
fn find() -> Result<PathBuf, String> {
    let start = Instant::now();
    loop {
        let entries =
            std::fs::read_dir("/sys/block").map_err(|e| format!("list /sys/block: {e}"))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let serial = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
            if serial.trim_end_matches(['\0', '\n']) == CODE_DRIVE_SERIAL {
                return Ok(PathBuf::from("/dev").join(name));
            }
        }
        if start.elapsed() > FIND_LIMIT {
            return Err(format!(
                "no drive with serial {CODE_DRIVE_SERIAL} appeared within {FIND_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where the drive's filesystem is mounted while its two trees are bound to their places; it is
/// detached afterwards, so that the function sees `/var/task` and `/opt` only.
const STAGING: &str = "/run/ignition-code";

/// Mounts the code drive and binds its trees at `task_root` and `opt_root`.
pub(crate) fn mount(task_root: &str, opt_root: &str) -> Result<(), String> {
    mount_drive(STAGING)?;
    let bind = |from: &str, to: &str| -> Result<(), String> {
        let from = format!("{STAGING}/{from}");
        crate::init::mount_fs(&from, to, "", MsFlags::MS_BIND, None)
            .map_err(|e| format!("bind {from} at {to}: {e}"))?;
        // A bind keeps the source mount's flags only once remounted with them.
        let ro = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOSUID;
        nix::mount::mount(None::<&str>, to, None::<&str>, ro, None::<&str>)
            .map_err(|e| format!("make {to} read-only: {e}"))
    };
    bind("task", task_root)?;
    bind("opt", opt_root)?;
    nix::mount::umount2(STAGING, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| format!("detach {STAGING}: {e}"))
}

/// Mounts the code drive's filesystem read-only at `target`.
pub(crate) fn mount_drive(target: &str) -> Result<(), String> {
    let device = find()?;
    let shown = device.display().to_string();
    let dev = std::fs::File::open(&device).map_err(|e| format!("open {shown}: {e}"))?;
    // SAFETY: `dev` is an open block device for the duration of the call; BLKFLSBUF takes no
    // argument and touches no memory of ours.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF as _, 0) };
    if r != 0 {
        return Err(format!(
            "drop the cached blocks of {shown}: {}",
            std::io::Error::last_os_error()
        ));
    }
    drop(dev);
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    crate::init::mount_fs(&shown, target, "ext4", flags, Some("noload"))
        .map_err(|e| format!("the function's code ({shown}): {e}"))
}
