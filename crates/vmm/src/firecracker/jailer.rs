//! Firecracker's own jailer, used where it is installed ([`super::FirecrackerConfig::jailer`]).
//!
//! The server still does for a jailed Firecracker what it does for every VMM
//! (`crate::jail::confine`): its cgroup (joined before the jailer runs), the VM's network
//! namespace, new mount, IPC, UTS and PID namespaces, no environment and no inherited
//! descriptors; and it binds the VM's files into the jailer's chroot at their own absolute paths
//! (`JailRoot::binds_only`), so every path given to Firecracker's API means the
//! same inside. The jailer then does the rest its own, production-proven way: it enters that
//! directory, makes `/dev/kvm` and `/dev/net/tun` there, copies Firecracker in, switches to the
//! VM's user and group, and execs Firecracker, whose seccomp filters follow.
//!
//! Not passed: `--new-pid-ns` and `--daemonize`, so that the process the server started becomes
//! the VMM and its exit is seen as QEMU's is (the PID namespace is the server's doing); `--netns`
//! (already joined); `--cgroup` (the server's cgroup already limits it, v1 or v2 alike).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::jail::VmmIdentity;

/// The directory the jailer chroots into for VM `id`: `<base>/<exec file name>/<id>/root`, as
/// its documentation lays it out.
pub(crate) fn chroot_dir(base: &Path, exec_file: &Path, id: &str) -> PathBuf {
    let exec_name = exec_file
        .file_name()
        .map_or_else(|| "firecracker".into(), |n| n.to_os_string());
    base.join(exec_name).join(id).join("root")
}

/// The jailer's arguments for VM `id`: run `exec_file` as `user` in a chroot under `base`,
/// serving its API on `api_sock`.
pub(crate) fn args(
    exec_file: &Path,
    id: &str,
    user: VmmIdentity,
    base: &Path,
    api_sock: &Path,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    push("--id");
    push(id);
    push("--exec-file");
    a.push(exec_file.into());
    let mut push = |s: &str| a.push(s.into());
    push("--uid");
    push(&user.uid.to_string());
    push("--gid");
    push(&user.gid.to_string());
    push("--chroot-base-dir");
    a.push(base.into());
    // Everything after `--` is Firecracker's.
    a.push("--".into());
    a.push("--api-sock".into());
    a.push(api_sock.into());
    a
}

/// The jailer to use: `jailer` beside `firecracker`, or on `PATH`; `None` when there is none.
pub fn find(firecracker: &Path) -> Option<PathBuf> {
    let beside = firecracker
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join("jailer"));
    beside
        .filter(|p| p.is_file())
        .or_else(|| crate::doctor::which("jailer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chroot_is_where_the_jailer_documents_it() {
        assert_eq!(
            chroot_dir(
                Path::new("/run/ig/vm-1/jail"),
                Path::new("/usr/bin/firecracker"),
                "vm-1"
            ),
            Path::new("/run/ig/vm-1/jail/firecracker/vm-1/root")
        );
    }

    #[test]
    fn arguments_follow_the_jailers_usage() {
        let a = args(
            Path::new("/usr/bin/firecracker"),
            "vm-1",
            VmmIdentity { uid: 7, gid: 9 },
            Path::new("/run/ig/vm-1/jail"),
            Path::new("/run/ig/vm-1/api.sock"),
        );
        let a: Vec<String> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a,
            [
                "--id",
                "vm-1",
                "--exec-file",
                "/usr/bin/firecracker",
                "--uid",
                "7",
                "--gid",
                "9",
                "--chroot-base-dir",
                "/run/ig/vm-1/jail",
                "--",
                "--api-sock",
                "/run/ig/vm-1/api.sock"
            ]
        );
        // The jailer refuses ids longer than 64 characters or with other than [A-Za-z0-9-].
        let id = format!("vm-{}", "0123456789abcdef".repeat(2));
        assert!(id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
