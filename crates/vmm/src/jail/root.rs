//! The directory a jailed VMM is chrooted into: only what it needs, bound at its own paths,
//! and a `/dev` of its own.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::{VmSource, VmSpec, VmmError};

/// What a jailed VMM needs of the host for `spec`, besides `/usr` and device nodes: its run
/// directory (sockets), its image (read-only), its binary if it lives outside `/usr`, and its
/// snapshot files: the directory a snapshot is written to read-write; a snapshot restored from
/// read-only but for its memory file, which QEMU 7.2 opens for writing even to map it privately.
pub(crate) fn vm_paths(spec: &VmSpec, run_dir: &Path, binary: &Path) -> Vec<(PathBuf, Access)> {
    let mut paths = vec![(run_dir.to_owned(), Access::ReadWrite)];
    // A restored guest's kernel is in its memory: only a boot reads the kernel and initramfs.
    match &spec.source {
        VmSource::Boot { image, .. } => {
            for file in [
                &image.kernel,
                &image.initramfs,
                &image.rootfs,
                &image.code_drive,
            ] {
                paths.push((file.clone(), Access::ReadOnly));
            }
        }
        VmSource::Restore {
            image,
            snapshot_code_drive,
            ..
        } => {
            for file in [&image.rootfs, &image.code_drive, snapshot_code_drive] {
                if !paths.iter().any(|(p, _)| p == file) {
                    paths.push((file.clone(), Access::ReadOnly));
                }
            }
        }
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
/// own mount namespace (see [`super::confine`]), so the host sees only empty mount points, removed
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
    pub(super) fn entered(&self) -> bool {
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

/// Mounts a `/dev` with `root`'s device nodes and `root`'s binds in the (new, unshared) mount
/// namespace, and chroots into it. Runs
/// between fork and exec: system calls only, on strings made before the fork.
///
/// # Safety
/// Call only in a forked child, after unsharing the mount namespace.
pub(super) unsafe fn enter_root(root: &JailRoot) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::confine;

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
}
