//! Confinement of VMM processes: namespaces, a seccomp filter, and a cgroup per VM.
//!
//! Each VMM process gets its own mount, IPC, UTS and network namespaces (it needs no network:
//! its sockets are filesystem paths, which namespaces do not hide), QEMU's own seccomp filter
//! (`-sandbox`), no inherited environment, and a cgroup with memory, CPU and process limits sized
//! from the VM. cgroup v1 (one hierarchy per controller, as on this project's machines) and v2
//! (one unified hierarchy) are both handled; the cgroups are made under the server's own cgroup.
//!
//! The VMM also gets a PID namespace of its own, as PID 1 of it (see `confine`), and QEMU a
//! root of its own ([`JailRoot`]): `/usr` and the dynamic loader's cache read-only, a handful of
//! device nodes, and exactly the files of its VM (kernel, initramfs and root disk read-only,
//! its sockets, its snapshot files), bind-mounted at their own paths inside a directory it is
//! chrooted into. It runs as an unprivileged user of its own ([`VmmUsers`]: a uid per VM from
//! a range, one group for all VMMs) with no capabilities at all (the bounding set emptied before
//! exec, `no_new_privs`): it cannot mount, chroot again, trace or signal another VMM, or open
//! devices or files it was not given. What it must write is made its own before it starts (its
//! run directory and sockets, the directory a snapshot is written to); a snapshot's memory file,
//! which QEMU 7.2 opens for writing even to map it privately, is made writable by the VMM group
//! (a VMM that wrote to it anyway changes the file's modification time, and the snapshot store
//! verifies the checksum again on the next restore).

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::{VmSource, VmSpec, VmmError};

/// QEMU's seccomp options: its default filter plus denial of obsolete system calls, privilege
/// changes and resource control. `spawn` stays allowed because snapshots go through `exec:`
/// migration (a shell running `cat`).
pub(crate) const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny";

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

/// Gives a jailed VMM running as `user` what it must write: its run directory (where it makes its
/// own sockets) and the sockets and files the host made there for it before it starts (not the
/// directories: its jail root stays root's), and the directory a snapshot is written to; and
/// lets it open a restored snapshot's memory file, through the VMMs' group.
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

/// What a jailed VMM needs of the host for `spec`, besides `/usr` and device nodes: its run
/// directory (sockets), its image (read-only), its binary if it lives outside `/usr`, and its
/// snapshot files: the directory a snapshot is written to read-write; a snapshot restored from
/// read-only but for its memory file, which QEMU 7.2 opens for writing even to map it privately.
pub(crate) fn vm_paths(spec: &VmSpec, run_dir: &Path, binary: &Path) -> Vec<(PathBuf, Access)> {
    let mut paths = vec![(run_dir.to_owned(), Access::ReadWrite)];
    let image = match &spec.source {
        VmSource::Boot { image, .. } | VmSource::Restore { image, .. } => image,
    };
    for file in [&image.kernel, &image.initramfs, &image.rootfs] {
        paths.push((file.clone(), Access::ReadOnly));
    }
    if !binary.starts_with("/usr") && binary.is_absolute() {
        paths.push((binary.to_owned(), Access::ReadOnly));
    }
    let parent = |p: &Path| p.parent().map(Path::to_owned);
    match &spec.source {
        VmSource::Boot {
            snapshot_memory: Some(memory),
            ..
        } => paths.extend(parent(memory).map(|d| (d, Access::ReadWrite))),
        VmSource::Boot { .. } => {}
        VmSource::Restore {
            snapshot,
            derive_into,
            ..
        } => {
            paths.extend(parent(&snapshot.state).map(|d| (d, Access::ReadOnly)));
            match derive_into {
                Some(copy) => paths.extend(parent(copy).map(|d| (d, Access::ReadWrite))),
                None => paths.push((snapshot.memory.clone(), Access::ReadWrite)),
            }
        }
    }
    paths
}

/// Namespaces a VMM process is moved into before it executes.
pub(crate) const NAMESPACES: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;

/// How a VMM may use a path of its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read, never write.
    ReadOnly,
    /// Read and write (sockets, a snapshot being written).
    ReadWrite,
}

/// One bind mount into a jail root, as C strings made before the fork.
#[derive(Debug)]
struct BindMount {
    source: CString,
    target: CString,
    read_only: bool,
}

/// A device node made in a jail's `/dev`.
#[derive(Debug)]
struct DeviceNode {
    path: CString,
    rdev: libc::dev_t,
    mode: libc::mode_t,
    /// The group it is given to (the VMMs'), for nodes not open to everyone.
    group: Option<libc::gid_t>,
}

/// A root directory for one VMM, holding only what it needs; the mounts are made in the VMM's
/// own mount namespace (see [`confine`]), so the host sees only empty mount points, removed
/// with the directory.
#[derive(Debug)]
pub(crate) struct JailRoot {
    root: CString,
    mounts: Vec<BindMount>,
    /// The jail's `/dev`, for a root this process enters itself.
    dev: Option<DevDir>,
}

/// A jail's `/dev` (a tmpfs in the VMM's mount namespace), `/dev/net` and their nodes.
#[derive(Debug)]
struct DevDir {
    dev: CString,
    dev_net: CString,
    devices: Vec<DeviceNode>,
}

/// Device nodes a VMM may open (those that exist on the host): the first four by anyone, the
/// tun and KVM devices by the VMMs' group. They are made afresh in the jail rather than bound
/// from the host, whose nodes for the latter two may be root's alone (they are, here) and whose
/// run directory may be on a file system that ignores device nodes (`nodev`).
const DEVICES: &[(&str, bool)] = &[
    ("/dev/null", true),
    ("/dev/zero", true),
    ("/dev/random", true),
    ("/dev/urandom", true),
    ("/dev/net/tun", false),
    ("/dev/kvm", false),
];

fn cstring(p: &Path) -> Result<CString, VmmError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        VmmError::io(format!("jail root: {}", p.display()))(std::io::Error::from(
            std::io::ErrorKind::InvalidInput,
        ))
    })
}

impl JailRoot {
    /// Makes `dir` (it must not exist) the root for a VMM that needs `paths`, each at its own
    /// absolute path, plus the system's `/usr` (with Debian's `/bin`, `/lib`, ... links into
    /// it), the loader cache and [`DEVICES`] (the restricted ones for group `group`).
    pub(crate) fn prepare(
        dir: &Path,
        paths: &[(PathBuf, Access)],
        group: libc::gid_t,
    ) -> Result<Self, VmmError> {
        let io = |what: &Path| VmmError::io(format!("jail root: {}", what.display()));
        std::fs::create_dir(dir).map_err(io(dir))?;
        let mut binds: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
        for top in ["bin", "lib", "lib32", "lib64", "sbin"] {
            let host = Path::new("/").join(top);
            match std::fs::read_link(&host) {
                Ok(to) => std::os::unix::fs::symlink(&to, dir.join(top)).map_err(io(&host))?,
                Err(_) if host.is_dir() => binds.push((host.clone(), host, true)),
                Err(_) => {}
            }
        }
        binds.push(("/usr".into(), "/usr".into(), true));
        if Path::new("/etc/ld.so.cache").exists() {
            binds.push(("/etc/ld.so.cache".into(), "/etc/ld.so.cache".into(), true));
        }
        let dev = dir.join("dev");
        std::fs::create_dir(&dev).map_err(io(&dev))?;
        let mut devices = Vec::new();
        for (path, public) in DEVICES {
            use std::os::unix::fs::MetadataExt;
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            devices.push(DeviceNode {
                path: cstring(&dir.join(path.trim_start_matches('/')))?,
                rdev: meta.rdev(),
                mode: libc::S_IFCHR | if *public { 0o666 } else { 0o660 },
                group: (!public).then_some(group),
            });
        }
        for (p, access) in paths {
            binds.push((p.clone(), p.clone(), *access == Access::ReadOnly));
        }
        Ok(Self {
            root: cstring(dir)?,
            mounts: mount_points(dir, binds)?,
            dev: Some(DevDir {
                dev_net: cstring(&dev.join("net"))?,
                dev: cstring(&dev)?,
                devices,
            }),
        })
    }

    /// Makes `dir` (made if missing) a root that another program enters itself (Firecracker's
    /// jailer, which adds its device nodes and its binary): just `paths`, each bound at its own
    /// absolute path inside, in the VMM's mount namespace. The process is neither chrooted nor
    /// stripped of its capabilities here: the jailer needs them to do the same.
    pub(crate) fn binds_only(dir: &Path, paths: &[(PathBuf, Access)]) -> Result<Self, VmmError> {
        std::fs::create_dir_all(dir)
            .map_err(VmmError::io(format!("jail root: {}", dir.display())))?;
        let binds = paths
            .iter()
            .map(|(p, access)| (p.clone(), p.clone(), *access == Access::ReadOnly))
            .collect();
        Ok(Self {
            root: cstring(dir)?,
            mounts: mount_points(dir, binds)?,
            dev: None,
        })
    }

    /// Whether the process enters this root itself (chroot, no capabilities, its user).
    fn entered(&self) -> bool {
        self.dev.is_some()
    }
}

/// Mount points in `dir` for `binds` (source, target, read-only), parents first.
fn mount_points(
    dir: &Path,
    mut binds: Vec<(PathBuf, PathBuf, bool)>,
) -> Result<Vec<BindMount>, VmmError> {
    let io = |what: &Path| VmmError::io(format!("jail root: {}", what.display()));
    // Parents before what lies inside them.
    binds.sort_by_key(|(_, target, _)| target.components().count());
    let mut mounts = Vec::with_capacity(binds.len());
    for (source, target, read_only) in binds {
        let inside = dir.join(target.strip_prefix("/").unwrap_or(&target));
        if source.is_dir() {
            std::fs::create_dir_all(&inside).map_err(io(&inside))?;
        } else {
            if let Some(parent) = inside.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            if !inside.exists() {
                std::fs::File::create(&inside).map_err(io(&inside))?;
            }
        }
        mounts.push(BindMount {
            source: cstring(&source)?,
            target: cstring(&inside)?,
            read_only,
        });
    }
    Ok(mounts)
}

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
                enter_root(root)?;
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

/// Mounts a `/dev` with `root`'s device nodes and `root`'s binds in the (new, unshared) mount
/// namespace, and chroots into it. Runs
/// between fork and exec: system calls only, on strings made before the fork.
///
/// # Safety
/// Call only in a forked child, after unsharing the mount namespace.
unsafe fn enter_root(root: &JailRoot) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: the pointers are valid NUL-terminated strings owned by `root`, which outlives
    // the calls; null pointers are what mount(2) takes for unused arguments.
    unsafe {
        // Nothing mounted here propagates back to the host's namespace.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return fail();
        }
        // A /dev of its own, holding only the nodes the VMM may open.
        let no_devices = Vec::new();
        if let Some(dev) = &root.dev {
            if libc::mount(
                c"tmpfs".as_ptr(),
                dev.dev.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"mode=755,size=64k".as_ptr().cast(),
            ) != 0
                || libc::mkdir(dev.dev_net.as_ptr(), 0o755) != 0
            {
                return fail();
            }
        }
        for d in root.dev.as_ref().map_or(&no_devices, |d| &d.devices) {
            // mknod applies the umask; chmod sets the mode exactly.
            if libc::mknod(d.path.as_ptr(), d.mode, d.rdev) != 0
                || libc::chmod(d.path.as_ptr(), d.mode & 0o777) != 0
            {
                return fail();
            }
            if let Some(gid) = d.group {
                if libc::chown(d.path.as_ptr(), 0, gid) != 0 {
                    return fail();
                }
            }
        }
        for m in &root.mounts {
            if libc::mount(
                m.source.as_ptr(),
                m.target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            if m.read_only
                && libc::mount(
                    std::ptr::null(),
                    m.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                    std::ptr::null(),
                ) != 0
            {
                return fail();
            }
        }
        if root.entered()
            && (libc::chroot(root.root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0)
        {
            return fail();
        }
    }
    Ok(())
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

/// Limits for one VM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory of the whole VMM process (guest memory plus the VMM's own).
    pub memory_bytes: u64,
    /// CPU time per 100 ms period, µs.
    pub cpu_quota_us: u64,
    /// Processes and threads.
    pub pids: u64,
}

impl CgroupLimits {
    /// Limits for a VM with `memory_mib` of guest memory and `vcpus` vCPUs: the guest's memory
    /// plus 256 MiB for the VMM (device model, TCG's translation buffers), the vCPUs plus a fifth
    /// of a core for I/O threads, 64 tasks.
    pub fn for_vm(memory_mib: u32, vcpus: u8) -> Self {
        Self {
            memory_bytes: (u64::from(memory_mib) + 256) * 1024 * 1024,
            cpu_quota_us: u64::from(vcpus) * 100_000 + 20_000,
            pids: 64,
        }
    }
}

/// The cgroup (or, under v1, the set of per-controller cgroups) of one VM.
#[derive(Debug)]
pub(crate) struct VmCgroup {
    dirs: Vec<PathBuf>,
}

/// This process's cgroup path for `controller` (v1), or its unified path (v2, `controller` "").
fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_owned())
    })
}

fn write(path: &Path, value: &str) -> Result<(), VmmError> {
    std::fs::write(path, value).map_err(VmmError::io(format!(
        "write {value:?} to {}",
        path.display()
    )))
}

impl VmCgroup {
    /// Creates the VM's cgroup with `limits`, under `ignition/<scope>/` below the server's own
    /// cgroup (`scope` keeps servers sharing a cgroup apart).
    pub(crate) fn create(scope: &str, vm_id: &str, limits: CgroupLimits) -> Result<Self, VmmError> {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            return Self::create_v2(root, scope, vm_id, limits);
        }
        let mut made = Self { dirs: Vec::new() };
        for (controller, files) in [
            (
                "memory",
                vec![("memory.limit_in_bytes", limits.memory_bytes.to_string())],
            ),
            (
                "cpu",
                vec![
                    ("cpu.cfs_period_us", "100000".to_owned()),
                    ("cpu.cfs_quota_us", limits.cpu_quota_us.to_string()),
                ],
            ),
            ("pids", vec![("pids.max", limits.pids.to_string())]),
        ] {
            let own = own_path(controller).unwrap_or_else(|| "/".into());
            let dir = root
                .join(controller)
                .join(own.trim_start_matches('/'))
                .join("ignition")
                .join(scope)
                .join(vm_id);
            std::fs::create_dir_all(&dir)
                .map_err(VmmError::io(format!("create cgroup {}", dir.display())))?;
            made.dirs.push(dir.clone());
            for (file, value) in files {
                write(&dir.join(file), &value)?;
            }
        }
        Ok(made)
    }

    fn create_v2(
        root: &Path,
        scope: &str,
        vm_id: &str,
        limits: CgroupLimits,
    ) -> Result<Self, VmmError> {
        let own = own_path("").unwrap_or_else(|| "/".into());
        let top = root.join(own.trim_start_matches('/')).join("ignition");
        let parent = top.join(scope);
        std::fs::create_dir_all(&parent)
            .map_err(VmmError::io(format!("create cgroup {}", parent.display())))?;
        // Controllers must be enabled on the way down; the server's own cgroup may refuse
        // (processes there), in which case the limits below fail and say so.
        let _ = std::fs::write(top.join("cgroup.subtree_control"), "+memory +cpu +pids");
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids");
        let dir = parent.join(vm_id);
        std::fs::create_dir_all(&dir)
            .map_err(VmmError::io(format!("create cgroup {}", dir.display())))?;
        let made = Self {
            dirs: vec![dir.clone()],
        };
        write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
        write(
            &dir.join("cpu.max"),
            &format!("{} 100000", limits.cpu_quota_us),
        )?;
        write(&dir.join("pids.max"), &limits.pids.to_string())?;
        Ok(made)
    }

    /// The `cgroup.procs` files a process writes to join the cgroup.
    pub(crate) fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Removes the cgroup; its processes must have exited.
    pub(crate) fn remove(&self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Removes the empty VM cgroups of `scope` (left by VMMs that were killed rather than
/// destroyed, or by an earlier server on the same run directory), and the scope if it is empty.
pub fn sweep(scope: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let scopes: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        let own = own_path("").unwrap_or_else(|| "/".into());
        vec![root
            .join(own.trim_start_matches('/'))
            .join("ignition")
            .join(scope)]
    } else {
        ["memory", "cpu", "pids"]
            .iter()
            .map(|c| {
                let own = own_path(c).unwrap_or_else(|| "/".into());
                root.join(c)
                    .join(own.trim_start_matches('/'))
                    .join("ignition")
                    .join(scope)
            })
            .collect()
    };
    for dir in scopes {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    // rmdir fails while the cgroup still has processes: those are kept.
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        self.remove();
    }
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

    /// What Firecracker's jailer is handed (no jailer here: a shell stands in for it, and the
    /// test is about the binds, not a VM): the VM's files at their own paths inside the chroot
    /// directory, read-only where asked, seen only in the process's own mount namespace, and the
    /// capabilities the jailer needs to do the rest still there.
    #[tokio::test]
    async fn a_root_for_the_jailer_binds_the_files_and_keeps_the_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("kernel");
        std::fs::write(&image, "KERNEL").unwrap();
        let chroot = dir.path().join("jail/firecracker/vm-1/root");
        let root = JailRoot::binds_only(&chroot, &[(image.clone(), Access::ReadOnly)]).unwrap();
        let inside = chroot.join(image.strip_prefix("/").unwrap());
        let script = format!(
            "cat {0}; echo; echo changed > {0} 2>/dev/null && echo writable; grep CapEff /proc/self/status",
            inside.display()
        );
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", &script])
            .stdout(std::process::Stdio::piped());
        confine(&mut cmd, true, None, Vec::new(), Some(root), None);
        let out = cmd.output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("KERNEL\n"), "{text}");
        assert!(!text.contains("writable"), "{text}");
        assert!(!text.contains("CapEff:\t0000000000000000"), "{text}");
        // The host sees only the empty mount point, and the file unchanged.
        assert_eq!(std::fs::read_to_string(&inside).unwrap(), "");
        assert_eq!(std::fs::read_to_string(&image).unwrap(), "KERNEL");
    }

    #[test]
    fn limits_follow_the_vm() {
        let l = CgroupLimits::for_vm(128, 1);
        assert_eq!(l.memory_bytes, 384 * 1024 * 1024);
        assert_eq!(l.cpu_quota_us, 120_000);
        assert_eq!(l.pids, 64);
    }
}
