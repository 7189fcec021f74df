//! Who a jailed VMM runs as, and what it is handed before it starts.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::{VmSource, VmSpec, VmmError};

/// The first uid of jailed VMMs by default: far above the ids of real users and of the usual
/// subordinate-id ranges, below 2^31 for tools that read ids as signed.
pub const DEFAULT_FIRST_UID: u32 = 2_000_000_000;

/// How many uids jailed VMMs take in turn by default.
pub const DEFAULT_UID_COUNT: u32 = 65_536;

/// The group of jailed VMMs by default (it owns nothing else on the host).
pub const DEFAULT_GID: u32 = 2_000_000_000;

/// The user and group a jailed VMM process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmIdentity {
    /// Its own user id.
    pub uid: u32,
    /// The VMMs' group.
    pub gid: u32,
}

/// Identities for jailed VMMs: each VM takes the next uid of `count` starting at `first_uid`
/// (so two VMMs running at once have different users unless `count` VMs are running), all in
/// group `gid`.
#[derive(Debug)]
pub struct VmmUsers {
    first_uid: u32,
    count: u32,
    gid: u32,
    next: std::sync::atomic::AtomicU32,
}

impl Default for VmmUsers {
    fn default() -> Self {
        Self::new(DEFAULT_FIRST_UID, DEFAULT_UID_COUNT, DEFAULT_GID)
    }
}

impl VmmUsers {
    /// `count` uids from `first_uid` (at least one; uid 0 is never handed out), group `gid`.
    pub fn new(first_uid: u32, count: u32, gid: u32) -> Self {
        // Neither root nor (uid_t)-1, which means "no change" to the kernel.
        let first_uid = first_uid.clamp(1, u32::MAX - 1);
        Self {
            first_uid,
            count: count.clamp(1, u32::MAX - first_uid),
            gid,
            next: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The group every VMM runs in.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The identity for the next VMM.
    pub fn next(&self) -> VmmIdentity {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        VmmIdentity {
            uid: self.first_uid + n % self.count,
            gid: self.gid,
        }
    }
}

/// Makes `path` belong to `who` (user and group), so that a VMM running as it may write there.
pub(crate) fn give(path: &Path, who: VmmIdentity) -> Result<(), VmmError> {
    std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid))
        .map_err(VmmError::io(format!("chown {}", path.display())))
}

/// Makes `file` readable and writable by the VMMs' group, and root's: a VMM may then write it
/// but, not owning it, cannot set its modification time back (which the snapshot store relies
/// on to notice a change).
pub(crate) fn share_with_group(file: &Path, gid: u32) -> Result<(), VmmError> {
    use std::os::unix::fs::PermissionsExt;
    let io = || VmmError::io(format!("share {} with the VMM group", file.display()));
    std::os::unix::fs::chown(file, Some(0), Some(gid)).map_err(io())?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o660)).map_err(io())
}

/// Makes `file` readable, not writable, by the VMMs' group, and by no one else but root: a code
/// drive is read by every VMM of the functions that share its code, and by nothing else.
pub(crate) fn share_read_only_with_group(file: &Path, gid: u32) -> Result<(), VmmError> {
    use std::os::unix::fs::PermissionsExt;
    let io = || VmmError::io(format!("share {} with the VMM group", file.display()));
    std::os::unix::fs::chown(file, Some(0), Some(gid)).map_err(io())?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o640)).map_err(io())
}

/// Gives a jailed VMM running as `user` what it must write: its run directory (where it makes its
/// own sockets) and the sockets and files the host made there for it before it starts (not the
/// directories: its jail root stays root's), and the directory a snapshot is written to; and
/// lets it open a restored snapshot's memory file and read its code drives, through the VMMs'
/// group.
pub(crate) fn hand_over(spec: &VmSpec, run_dir: &Path, user: VmmIdentity) -> Result<(), VmmError> {
    give(run_dir, user)?;
    let entries =
        std::fs::read_dir(run_dir).map_err(VmmError::io(format!("read {}", run_dir.display())))?;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_socket() || t.is_file()) {
            give(&e.path(), user)?;
        }
    }
    match &spec.source {
        VmSource::Boot { image, .. } => share_read_only_with_group(&image.code_drive, user.gid)?,
        VmSource::Restore {
            image,
            snapshot_code_drive,
            ..
        } => {
            share_read_only_with_group(&image.code_drive, user.gid)?;
            share_read_only_with_group(snapshot_code_drive, user.gid)?;
        }
    }
    match &spec.source {
        VmSource::Boot {
            snapshot_memory: Some(memory),
            ..
        } => {
            if let Some(dir) = memory.parent() {
                give(dir, user)?;
            }
        }
        VmSource::Boot { .. } => {}
        VmSource::Restore {
            derive_into: Some(copy),
            ..
        } => {
            if let Some(dir) = copy.parent() {
                give(dir, user)?;
            }
            give(copy, user)?;
        }
        VmSource::Restore { snapshot, .. } => {
            share_with_group(&snapshot.memory, user.gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmms_take_the_users_of_their_range_in_turn_never_root() {
        let users = VmmUsers::new(500, 3, 77);
        let uids: Vec<u32> = (0..7).map(|_| users.next().uid).collect();
        assert_eq!(uids, [500, 501, 502, 500, 501, 502, 500]);
        assert!((0..3).all(|_| users.next().gid == 77));
        let from_zero = VmmUsers::new(0, 2, 9);
        assert!((0..4).all(|_| from_zero.next().uid != 0));
        // A range that would run past the last uid is cut short rather than wrapping to root.
        let top = VmmUsers::new(u32::MAX - 2, 10, 9);
        assert!((0..20).all(|_| (u32::MAX - 2..u32::MAX).contains(&top.next().uid)));
        let last = VmmUsers::new(u32::MAX, 5, 9);
        assert_eq!(last.next().uid, u32::MAX - 1);
    }
}
