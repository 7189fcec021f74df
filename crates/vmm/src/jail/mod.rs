//! Confinement of VMM processes: namespaces, a seccomp filter, and a cgroup per VM.
//!
//! Each VMM process gets its own mount, IPC, UTS and network namespaces (it needs no network:
//! its sockets are filesystem paths, which namespaces do not hide), QEMU's own seccomp filter
//! (`-sandbox`), no inherited environment, and a cgroup with memory, CPU and process limits sized
//! from the VM. cgroup v1 (one hierarchy per controller, as on this project's machines) and v2
//! (one unified hierarchy) are both handled; the cgroups are made under the server's own cgroup.
//!
//! The VMM also gets a PID namespace of its own, as PID 1 of it (see `confine`), and QEMU a
//! root of its own (`JailRoot`): `/usr` and the dynamic loader's cache read-only, a handful of
//! device nodes, and exactly the files of its VM (kernel, initramfs and root disk read-only,
//! its sockets, its snapshot files), bind-mounted at their own paths inside a directory it is
//! chrooted into. It runs as an unprivileged user of its own ([`VmmUsers`]: a uid per VM from
//! a range, one group for all VMMs) with no capabilities at all (the bounding set emptied before
//! exec, `no_new_privs`): it cannot mount, chroot again, trace or signal another VMM, or open
//! devices or files it was not given. What it must write is made its own before it starts (its
//! run directory and sockets, the directory a snapshot is written to); a snapshot's memory file,
//! which QEMU 7.2 opens for writing even to map it privately, is made writable by the VMM group
//! (a VMM that wrote to it anyway changes the file's modification time, and the snapshot store
//! verifies the checksum again on the next restore). Firecracker gets the same, or, where its
//! `jailer` is installed, the namespaces, cgroup and binds from here and the rest from the
//! jailer ([`crate::firecracker::jailer`]).
//!
//! The parts: `users` (who a VMM runs as, and what it is handed), `root` (the directory it
//! is chrooted into), `cgroup` (its limits); this module puts them together in `confine`,
//! between fork and exec.

mod cgroup;
mod root;
mod users;

use std::ffi::CString;
use std::os::fd::RawFd;

pub(crate) use cgroup::VmCgroup;
pub use cgroup::{sweep, CgroupLimits, CpuPriority};
pub(crate) use root::{vm_paths, Access, JailRoot};
pub(crate) use users::{give, hand_over};
pub use users::{VmmIdentity, VmmUsers, DEFAULT_FIRST_UID, DEFAULT_GID, DEFAULT_UID_COUNT};

/// QEMU's seccomp options: its default filter plus denial of obsolete system calls, privilege
/// changes, process creation and resource control. Snapshots are written to and read from
/// descriptors the server opens and hands over QMP, so QEMU never needs to start a process.
pub(crate) const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Namespaces a VMM process is moved into before it executes.
pub(crate) const NAMESPACES: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;

/// Makes `cmd` (a VMM about to be spawned) die with the server, join its cgroup (the
/// `cgroup.procs` files in `cgroup_procs`), join the VM's network namespace `netns` (when it
/// has a network) and, with `jail`, new mount, IPC, UTS and PID namespaces (and an empty
/// network namespace when the VM has no network of its own).
///
/// A new PID namespace takes effect for children only, so the child forks once more: the
/// grandchild, PID 1 of the new namespace, execs the VMM; the child closes its descriptors,
/// waits for it and exits with its status. Killing the child (what the caller holds) kills the
/// VMM (`PR_SET_PDEATHSIG`), and a VMM that exits ends the child, so the caller sees the VMM's
/// life through it. The cgroup is joined before the fork so that both are in it.
/// The caller keeps `netns` open until the spawn returns.
///
/// With `root` (and `jail`), the VMM's mount namespace gets the root's bind mounts, the VMM is
/// chrooted into it, and it execs with an empty capability bounding set and `no_new_privs`;
/// with `user` too, as that user, without supplementary groups.
pub(crate) fn confine(
    cmd: &mut tokio::process::Command,
    jail: bool,
    netns: Option<RawFd>,
    cgroup_procs: Vec<CString>,
    root: Option<JailRoot>,
    user: Option<VmmIdentity>,
) {
    let root = root.filter(|_| jail);
    let entered = root.as_ref().is_some_and(JailRoot::entered);
    let user = user.filter(|_| entered);
    let namespaces = match (netns, jail) {
        (Some(_), true) => (NAMESPACES & !libc::CLONE_NEWNET) | libc::CLONE_NEWPID,
        (None, true) => NAMESPACES | libc::CLONE_NEWPID,
        (_, false) => 0,
    };
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, open, write, close, setns, unshare, fork, waitpid,
    // mount, mknod, chmod, chown, chroot, chdir, fcntl, getrlimit, raw syscalls: close_range,
    // setgroups, setresgid, setresuid; _exit); it reads captured integers and C strings prepared before
    // the fork, and allocates nothing. The namespace descriptor is open in the parent for the
    // whole spawn, so it is valid in the child.
    unsafe {
        cmd.pre_exec(move || {
            // The VMM dies with the server, so a crashed server leaves no VM behind.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for path in &cgroup_procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = netns {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if namespaces != 0 && libc::unshare(namespaces) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(root) = &root {
                root::enter_root(root)?;
            }
            if namespaces & libc::CLONE_NEWPID == 0 {
                close_inherited_on_exec();
                return Ok(());
            }
            let pid = libc::fork();
            if pid < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if pid == 0 {
                // PID 1 of the new namespace: becomes the VMM's user, dies with its parent,
                // then execs the VMM.
                if entered {
                    drop_capabilities()?;
                }
                if let Some(u) = user {
                    become_user(u)?;
                }
                // After the change of user, which clears the parent-death signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                close_inherited_on_exec();
                return Ok(());
            }
            // The waiting parent holds no descriptor (the spawn's error pipe included, so the
            // spawner hears of the exec from the VMM alone), and no capability either.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if entered && drop_capabilities().is_err() {
                libc::_exit(127);
            }
            let mut status = 0;
            loop {
                let r = libc::waitpid(pid, &mut status, 0);
                if r == pid {
                    break;
                }
                if r < 0 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(127);
                }
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            libc::_exit(code)
        });
    }
}

/// Marks every descriptor above standard error close-on-exec, so the VMM starts with only its
/// standard streams: the server may hold descriptors it did not open itself (inherited from
/// whoever started it) without that flag. Runs between fork and exec.
///
/// # Safety
/// Call only in a forked child, before exec.
unsafe fn close_inherited_on_exec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range and fcntl take integers only.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            // Kernels before 5.11: one descriptor at a time, up to the limit of open files.
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(65_536) as libc::c_int
            } else {
                1024
            };
            for fd in 3..top {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// Switches to `who` without supplementary groups (real, effective and saved ids alike, so there
/// is no way back); the kernel drops every capability with the change from uid 0. Raw system
/// calls: glibc's wrappers signal other threads, and after a fork there are none.
///
/// # Safety
/// Call only in a forked child, before exec.
unsafe fn become_user(who: VmmIdentity) -> std::io::Result<()> {
    // SAFETY: integer arguments; setgroups with a count of 0 reads no memory.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, who.gid, who.gid, who.gid) != 0
            || libc::syscall(libc::SYS_setresuid, who.uid, who.uid, who.uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Empties the capability bounding set (so root's capabilities are gone after exec) and sets
/// `no_new_privs`. Runs between fork and exec.
///
/// # Safety
/// Call only in a forked child.
unsafe fn drop_capabilities() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments; no memory is passed.
    unsafe {
        for cap in 0..=63 {
            // EINVAL past the kernel's last capability: nothing left to drop.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
