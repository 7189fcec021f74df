//! What this host offers a microVM platform, found by looking and, for KVM, by measuring.
//!
//! Flags do not tell a hardware-backed `/dev/kvm` from an emulating, nested one (this project's
//! machines have `kvm_pvm`: it answers the KVM API and then runs guests through an instruction
//! emulator). So the probe runs a guest: a few hundred thousand real-mode instructions, timed.
//! Hardware virtualization runs them in well under a millisecond; an emulator takes orders of
//! magnitude longer, or fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Accel;

/// What the KVM probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmKind {
    /// Guests run on the CPU's virtualization extensions.
    Hardware,
    /// `/dev/kvm` answers, but guests run slowly through an emulator (or not at all).
    NestedEmulated,
    /// No usable `/dev/kvm`.
    Absent,
}

/// Above this, the probe's guest did not run on hardware (it needs ~0.3 ms there).
const HARDWARE_LIMIT: Duration = Duration::from_millis(50);

/// Real-mode code: `mov dx,4; l1: mov cx,0xffff; l2: inc ax; loop l2; dec dx; jnz l1; hlt`.
const PROBE_CODE: [u8; 13] = [
    0xba, 0x04, 0x00, 0xb9, 0xff, 0xff, 0x40, 0xe2, 0xfd, 0x4a, 0x75, 0xf7, 0xf4,
];

/// The outcome of running the probe guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvmProbe {
    /// The verdict.
    pub kind: KvmKind,
    /// How long the probe guest ran, if it ran to its `hlt`.
    pub elapsed_ms: Option<f64>,
    /// Why it is not hardware, in words.
    pub detail: String,
}

fn run_probe_guest() -> Result<Duration, String> {
    use kvm_ioctls::{Kvm, VcpuExit};
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("create VM: {e}"))?;
    const MEM: usize = 0x1000;
    const GUEST_ADDR: u64 = 0x1000;
    // SAFETY: an anonymous private mapping of MEM bytes with no fixed address; the result is
    // checked, and the mapping is unmapped below after the VM (which refers to it) is dropped.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if host == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let result = (|| {
        // SAFETY: `host` points to MEM writable bytes and PROBE_CODE is shorter than MEM.
        unsafe {
            std::ptr::copy_nonoverlapping(PROBE_CODE.as_ptr(), host.cast::<u8>(), PROBE_CODE.len())
        };
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: GUEST_ADDR,
            memory_size: MEM as u64,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region describes the mapping above, which outlives the VM (it is unmapped
        // only after `vm` is dropped at the end of this closure).
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("set memory: {e}"))?;
        let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("create vCPU: {e}"))?;
        let mut sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs)
            .map_err(|e| format!("set sregs: {e}"))?;
        let mut regs = vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?;
        regs.rip = GUEST_ADDR;
        regs.rflags = 2;
        vcpu.set_regs(&regs).map_err(|e| format!("set regs: {e}"))?;
        let started = Instant::now();
        loop {
            match vcpu.run() {
                Ok(VcpuExit::Hlt) => return Ok(started.elapsed()),
                Ok(other) => return Err(format!("unexpected exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(format!("KVM_RUN: {e}")),
            }
        }
    })();
    drop(vm);
    // SAFETY: `host` came from mmap above with length MEM and nothing refers to it any more.
    unsafe { libc::munmap(host, MEM) };
    result
}

/// Runs the probe guest, giving up after `limit` (it then runs on in a detached thread until it
/// finishes, which an emulator does eventually).
pub fn probe_kvm(limit: Duration) -> KvmProbe {
    if !Path::new("/dev/kvm").exists() {
        return KvmProbe {
            kind: KvmKind::Absent,
            elapsed_ms: None,
            detail: "no /dev/kvm".into(),
        };
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_probe_guest());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(d)) if d <= HARDWARE_LIMIT => KvmProbe {
            kind: KvmKind::Hardware,
            elapsed_ms: Some(d.as_secs_f64() * 1000.0),
            detail: "the probe guest ran at hardware speed".into(),
        },
        Ok(Ok(d)) => KvmProbe {
            kind: KvmKind::NestedEmulated,
            elapsed_ms: Some(d.as_secs_f64() * 1000.0),
            detail: format!("the probe guest took {d:?} (hardware needs under {HARDWARE_LIMIT:?})"),
        },
        Ok(Err(e)) if e.starts_with("open /dev/kvm") => KvmProbe {
            kind: KvmKind::Absent,
            elapsed_ms: None,
            detail: e,
        },
        Ok(Err(e)) => KvmProbe {
            kind: KvmKind::NestedEmulated,
            elapsed_ms: None,
            detail: e,
        },
        Err(_) => KvmProbe {
            kind: KvmKind::NestedEmulated,
            elapsed_ms: None,
            detail: format!("the probe guest did not finish within {limit:?}"),
        },
    }
}

/// What `ignition doctor` reports.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// KVM as measured.
    pub kvm: KvmKind,
    /// The probe's details.
    pub kvm_probe: KvmProbe,
    /// The accelerator `--accel auto` uses here.
    pub accel: &'static str,
    /// The VMM `--vmm auto` uses here.
    pub vmm: &'static str,
    /// The Firecracker binary, if installed.
    pub firecracker: Option<PathBuf>,
    /// Firecracker's `jailer`, if installed.
    pub jailer: Option<PathBuf>,
    /// QEMU's version line, if installed.
    pub qemu: Option<String>,
    /// `/dev/net/tun` exists.
    pub tun: bool,
    /// The `nft` tool is installed.
    pub nftables: bool,
    /// The `iptables` tool is installed.
    pub iptables: bool,
    /// `v1` or `v2`.
    pub cgroup: &'static str,
    /// `vhost_vsock` (QEMU's vsock) is available.
    pub vhost_vsock: bool,
    /// CPUs.
    pub cpus: usize,
}

/// `name` on `PATH` (or, when that lacks them, the system's sbin directories).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn qemu_version(binary: &Path) -> Option<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

/// What `--vmm auto` picks: Firecracker where `firecracker` (a path, or a name on `PATH`) is
/// installed and KVM (`kvm`, as [`probe_kvm`] measured it) runs at hardware speed; QEMU
/// everywhere else.
pub fn auto_vmm(firecracker: &Path, kvm: KvmKind) -> crate::VmmKind {
    let found = if firecracker.components().count() > 1 {
        firecracker.is_file()
    } else {
        which(&firecracker.to_string_lossy()).is_some()
    };
    if found && kvm == KvmKind::Hardware {
        crate::VmmKind::Firecracker
    } else {
        crate::VmmKind::Qemu
    }
}

/// What `--accel auto` picks: KVM only when the CPU flags allow it *and* KVM (`kvm`, as
/// [`probe_kvm`] measured it) runs at hardware speed; TCG otherwise.
pub fn auto_accel(kvm: KvmKind) -> Accel {
    let flags = Accel::Auto.resolve(crate::accel::HostVirt::probe());
    if flags == Accel::Kvm && kvm == KvmKind::Hardware {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Inspects the host.
pub fn inspect(qemu: &Path) -> HostReport {
    let kvm_probe = probe_kvm(Duration::from_secs(5));
    let kvm = kvm_probe.kind;
    let firecracker = which("firecracker");
    let qemu_path = if qemu.components().count() > 1 {
        Some(qemu.to_path_buf())
    } else {
        which(&qemu.to_string_lossy())
    };
    let vmm = auto_vmm(Path::new("firecracker"), kvm).name();
    HostReport {
        kvm,
        accel: if kvm == KvmKind::Hardware {
            "kvm"
        } else {
            "tcg"
        },
        vmm,
        firecracker,
        jailer: which("jailer"),
        qemu: qemu_path.as_deref().and_then(qemu_version),
        tun: Path::new("/dev/net/tun").exists(),
        nftables: which("nft").is_some(),
        iptables: which("iptables").is_some(),
        cgroup: if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else {
            "v1"
        },
        vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kvm_probe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this project's machines KVM is nested and emulating: the probe must say so by
    /// measuring, and `auto` must not pick it. On a hardware host it must say hardware.
    #[test]
    fn probe_classifies_this_host() {
        let p = probe_kvm(Duration::from_secs(10));
        let nested = Path::new("/sys/module/kvm_pvm").exists();
        if nested {
            assert_eq!(p.kind, KvmKind::NestedEmulated, "{p:?}");
        }
        if p.kind == KvmKind::Hardware {
            assert!(p.elapsed_ms.is_some_and(|ms| ms <= 50.0));
        }
    }
}
