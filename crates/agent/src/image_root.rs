//! A container image as the function's root filesystem.
//!
//! The code drive holds the image's flattened filesystem (made by the host). It is mounted
//! read-only under a writable tmpfs overlay, as the guest's own root is, and the function's
//! process is started `chroot`ed into it with the image's user, working directory and
//! environment. The agent itself stays where it is, PID 1 in the guest's root: it keeps serving
//! the Runtime API on loopback (the network namespace is shared), reaping, and enforcing the
//! limits it enforces on every runtime.

use std::ffi::CString;

use nix::mount::MsFlags;

use crate::init::mount_fs;

const LOWER: &str = "/run/ignition-image/lower";
const RW: &str = "/run/ignition-image/rw";
/// Where the image's root is, seen from the agent.
pub(crate) const ROOT: &str = "/run/ignition-image/root";

/// Mounts the image from the code drive at [`ROOT`], writable through a tmpfs of `scratch_mib`,
/// with `/proc`, `/dev` and `/tmp` inside it.
pub(crate) fn mount(scratch_mib: u64) -> Result<(), String> {
    crate::code_drive::mount_drive(LOWER)?;
    let size = format!("size={scratch_mib}m,mode=0755");
    mount_fs(
        "tmpfs",
        RW,
        "tmpfs",
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(&size),
    )?;
    for d in [format!("{RW}/data"), format!("{RW}/work")] {
        std::fs::create_dir_all(&d).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    mount_fs(
        "overlay",
        ROOT,
        "overlay",
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(&format!(
            "lowerdir={LOWER},upperdir={RW}/data,workdir={RW}/work"
        )),
    )?;
    // The image's own entries where the agent mounts are replaced by directories: a link
    // there (`proc -> /etc`) would be followed in the agent's root, not the image's.
    for d in ["proc", "dev", "tmp"] {
        own_directory(&format!("{ROOT}/{d}"))?;
    }
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("proc", &format!("{ROOT}/proc"), "proc", hardened, None)?;
    mount_fs("/dev", &format!("{ROOT}/dev"), "", MsFlags::MS_BIND, None)?;
    mount_fs(
        "tmpfs",
        &format!("{ROOT}/tmp"),
        "tmpfs",
        hardened,
        Some("mode=1777"),
    )?;
    // Resolvers configured before the image was mounted (at boot).
    if let Ok(text) = std::fs::read_to_string("/etc/resolv.conf") {
        write_resolv_conf(&text);
    }
    Ok(())
}

/// Makes `path` a directory of its own: anything else there (a link, a file) is removed first.
fn own_directory(path: &str) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            std::fs::remove_file(path).map_err(|e| format!("replace {path}: {e}"))?;
            std::fs::create_dir(path).map_err(|e| format!("mkdir {path}: {e}"))
        }
        Err(_) => std::fs::create_dir(path).map_err(|e| format!("mkdir {path}: {e}")),
    }
}

/// Writes the guest's resolvers into the image's `/etc/resolv.conf` too, when an image is
/// mounted. The image's own entry is replaced, never followed: a link planted there would
/// resolve in the agent's root, not the image's.
pub(crate) fn write_resolv_conf(text: &str) {
    use std::io::Write;
    let etc = format!("{ROOT}/etc");
    if !std::path::Path::new(ROOT).join("proc/self").exists()
        || !std::fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir())
    {
        return;
    }
    let path = format!("{etc}/resolv.conf");
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let _ = std::fs::remove_file(&path);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        crate::init::console(&format!("the image's resolv.conf: {e}"));
    }
}

/// A user and group ids for the image's `USER` (`name`, `uid`, either with `:group`), names
/// looked up in the image's own `/etc/passwd` and `/etc/group`. Root, named or implied, is the
/// unprivileged `fallback` instead: the agent's limits hold only for a user that is not root,
/// and Lambda, too, runs images as a user of its own.
pub(crate) fn user_ids(user: &str, fallback: u32) -> Result<(u32, u32), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(format!("{ROOT}/etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(format!("{ROOT}/etc/group")).unwrap_or_default();
    let lookup = |table: &str, name: &str| -> Option<(u32, Option<u32>)> {
        table.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&name) {
                return None;
            }
            let id = f.get(2)?.parse().ok()?;
            Some((id, f.get(3).and_then(|g| g.parse().ok())))
        })
    };
    let (uid, primary) = match u {
        "" => (0, Some(0)),
        n if n.bytes().all(|b| b.is_ascii_digit()) => {
            let uid: u32 = n
                .parse()
                .map_err(|_| format!("USER {user:?}: uid out of range"))?;
            let primary = passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.get(2) != Some(&n) {
                    return None;
                }
                f.get(3).and_then(|g| g.parse().ok())
            });
            (uid, primary)
        }
        name => lookup(&passwd, name)
            .ok_or_else(|| format!("USER {user:?}: no such user in the image's /etc/passwd"))?,
    };
    let gid = match g {
        None | Some("") => primary.unwrap_or(uid),
        Some(g) if g.bytes().all(|b| b.is_ascii_digit()) => g
            .parse()
            .map_err(|_| format!("USER {user:?}: gid out of range"))?,
        Some(name) => lookup(&group, name)
            .map(|(gid, _)| gid)
            .ok_or_else(|| format!("USER {user:?}: no such group in the image's /etc/group"))?,
    };
    Ok(if uid == 0 {
        (fallback, fallback)
    } else {
        (uid, if gid == 0 { fallback } else { gid })
    })
}

/// What the child does between fork and exec: into the image, its directory, its user.
pub(crate) struct Enter {
    root: CString,
    dir: CString,
    uid: u32,
    gid: u32,
}

impl Enter {
    pub(crate) fn new(working_dir: &str, uid: u32, gid: u32) -> Result<Self, String> {
        let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
        Ok(Self {
            root: c(ROOT)?,
            dir: c(working_dir)?,
            uid,
            gid,
        })
    }

    /// Runs in the forked child: only async-signal-safe calls, no allocation.
    pub(crate) fn apply(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: every pointer is to a NUL-terminated string this struct owns for the
        // duration of the call; these calls are async-signal-safe and touch no other memory.
        unsafe {
            check(libc::chroot(self.root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::chdir(self.dir.as_ptr()))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_never_the_runtime_user() {
        // No image root here: names cannot resolve, numbers do.
        assert_eq!(super::user_ids("", 993).unwrap(), (993, 993));
        assert_eq!(super::user_ids("0", 993).unwrap(), (993, 993));
        assert_eq!(super::user_ids("1000:1001", 993).unwrap(), (1000, 1001));
        assert_eq!(super::user_ids("1000:0", 993).unwrap(), (1000, 993));
        assert!(super::user_ids("nobody-here", 993).is_err());
    }
}
