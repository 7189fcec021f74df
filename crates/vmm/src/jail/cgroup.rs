//! A VMM's cgroup (v1: one per controller; v2: one unified), with limits sized from its VM.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::VmmError;

/// How a VMM shares the CPU with the others when the host is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuPriority {
    /// A VM an invocation is waiting for.
    #[default]
    Foreground,
    /// A VM made ahead of need (a warm slot being filled): on a busy host it gets a sixteenth
    /// of a foreground VM's share, so refills do not slow the invocations they are made for.
    Background,
}

impl CpuPriority {
    /// cgroup v1 `cpu.shares` (the kernel's default is 1024).
    fn shares(self) -> u32 {
        match self {
            Self::Foreground => 1024,
            Self::Background => 64,
        }
    }

    /// cgroup v2 `cpu.weight` (the kernel's default is 100).
    fn weight(self) -> u32 {
        match self {
            Self::Foreground => 100,
            Self::Background => 6,
        }
    }
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
    /// Its share of the CPU against other VMs.
    pub priority: CpuPriority,
}

impl CgroupLimits {
    /// These limits with `priority`.
    pub fn with_priority(self, priority: CpuPriority) -> Self {
        Self { priority, ..self }
    }

    /// Limits for a VM with `memory_mib` of guest memory and `vcpus` vCPUs: the guest's memory
    /// plus 256 MiB for the VMM (device model, TCG's translation buffers), the vCPUs plus a fifth
    /// of a core for I/O threads, 64 tasks.
    pub fn for_vm(memory_mib: u32, vcpus: u8) -> Self {
        Self {
            memory_bytes: (u64::from(memory_mib) + 256) * 1024 * 1024,
            cpu_quota_us: u64::from(vcpus) * 100_000 + 20_000,
            pids: 64,
            priority: CpuPriority::Foreground,
        }
    }
}

/// The cgroup (or, under v1, the set of per-controller cgroups) of one VM.
#[derive(Debug)]
pub(crate) struct VmCgroup {
    dirs: Vec<PathBuf>,
    /// The file that sets its CPU share, and whether it is v2's `cpu.weight`.
    cpu_share: Option<(PathBuf, bool)>,
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
        let mut made = Self {
            dirs: Vec::new(),
            cpu_share: None,
        };
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
                    ("cpu.shares", limits.priority.shares().to_string()),
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
            if controller == "cpu" {
                made.cpu_share = Some((dir.join("cpu.shares"), false));
            }
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
            cpu_share: Some((dir.join("cpu.weight"), true)),
        };
        write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
        write(
            &dir.join("cpu.max"),
            &format!("{} 100000", limits.cpu_quota_us),
        )?;
        write(&dir.join("pids.max"), &limits.pids.to_string())?;
        made.set_priority(limits.priority)?;
        Ok(made)
    }

    /// Changes the VM's share of the CPU.
    pub(crate) fn set_priority(&self, priority: CpuPriority) -> Result<(), VmmError> {
        match &self.cpu_share {
            Some((file, true)) => write(file, &priority.weight().to_string()),
            Some((file, false)) => write(file, &priority.shares().to_string()),
            None => Ok(()),
        }
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
    fn limits_follow_the_vm() {
        let l = CgroupLimits::for_vm(128, 1);
        assert_eq!(l.memory_bytes, 384 * 1024 * 1024);
        assert_eq!(l.cpu_quota_us, 120_000);
        assert_eq!(l.pids, 64);
    }
}
