//! The QEMU command line for a `microvm` guest.

use std::ffi::OsString;
use std::path::Path;

use ignition_proto::AGENT_PORT_NAME;

use crate::{Accel, BootImage, VmSource, VmSpec};

/// The version of the device model built here. A snapshot restores only into the devices it was
/// taken with (QEMU refuses a device whose features differ), so it is part of every snapshot's
/// key: change it with any device option.
pub(crate) const DEVICE_MODEL: u32 = 3;

/// Host-side paths of one VM's sockets.
#[derive(Debug, Clone)]
pub(crate) struct Sockets<'a> {
    pub(crate) agent: &'a Path,
    pub(crate) console: &'a Path,
    pub(crate) qmp: &'a Path,
}

/// The kernel command line for a host whose TSC runs at `tsc_khz`. `tsc_early_khz` avoids a
/// calibration against the PIT that hung about half the boots under TCG, and must be the host's
/// frequency or the guest's clock runs at the wrong rate ([`crate::tsc`]); `panic=-1` with
/// QEMU's `-no-reboot` turns a guest panic into a VMM exit the host sees at once.
pub(crate) fn base_cmdline(tsc_khz: u32) -> String {
    format!(
        "console=ttyS0 reboot=t panic=-1 tsc_early_khz={tsc_khz} tsc=reliable quiet loglevel=4 {GUEST_QUIET}"
    )
}

/// Kernel features a one-function guest has no use for, off: pressure-stall accounting, memory
/// cgroups (nothing in the guest makes cgroups), transparent huge pages (a fault would zero and
/// dirty a 2 MiB page of a snapshot's copy-on-write memory), the lockup watchdogs, audit. Each
/// is periodic or per-event kernel work that a restored VM under TCG translates anew.
const GUEST_QUIET: &str =
    "psi=0 cgroup_disable=memory transparent_hugepage=never nowatchdog audit=0";

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

fn path_opt(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s.push(suffix);
    s
}

fn escape_commas(path: &Path) -> OsString {
    // QEMU splits option strings on commas; a comma in a value is doubled.
    path.to_string_lossy().replace(',', ",,").into()
}

/// The kernel, its initramfs and command line: for boots only. A restored guest's kernel is
/// already in its memory, and QEMU would otherwise read both files into its own heap on every
/// restore (the bzImage stays there for the firmware: ~14 MiB per VM, and the time to read it).
fn kernel_args(a: &mut Vec<OsString>, image: &BootImage, tsc_khz: u32) {
    push(a, &["-kernel"]);
    a.push(image.kernel.clone().into());
    push(a, &["-initrd"]);
    a.push(image.initramfs.clone().into());
    let mut cmdline = base_cmdline(tsc_khz);
    for w in &image.extra_cmdline {
        cmdline.push(' ');
        cmdline.push_str(w);
    }
    push(a, &["-append", &cmdline]);
}

/// The read-only root filesystem and the code drive: devices, so boots and restores both have
/// them. A restore opens the code drive's file named here, whichever the snapshot was taken
/// with (QEMU migrates a device's state, not its backing file).
fn drives(a: &mut Vec<OsString>, image: &BootImage) {
    push(a, &["-drive"]);
    let mut drive = OsString::from("id=root,file=");
    drive.push(escape_commas(&image.rootfs));
    drive.push(",format=raw,if=none,readonly=on");
    a.push(drive);
    push(a, &["-device", "virtio-blk-device,drive=root"]);
    push(a, &["-drive"]);
    let mut drive = OsString::from("id=code,file=");
    drive.push(escape_commas(&image.code_drive));
    drive.push(",format=raw,if=none,readonly=on");
    a.push(drive);
    push(
        a,
        &[
            "-device",
            &format!(
                "virtio-blk-device,drive=code,serial={}",
                ignition_proto::CODE_DRIVE_SERIAL
            ),
        ],
    );
}

/// The machine, accelerator, memory and the options every VMM gets.
fn machine(a: &mut Vec<OsString>, accel: Accel, memory_mib: u32) {
    let mib = memory_mib.to_string();
    push(
        a,
        &["-M", "microvm", "-accel", accel.qemu_name(), "-m", &mib],
    );
    push(a, &["-nodefaults", "-no-user-config", "-display", "none"]);
}

/// Arguments for a VMM with no guest: paused before the first instruction, only QMP.
pub(crate) fn floor(accel: Accel, memory_mib: u32, qmp: &Path) -> Vec<OsString> {
    let mut a = Vec::new();
    machine(&mut a, accel, memory_mib);
    push(&mut a, &["-S", "-qmp"]);
    a.push(path_opt("unix:", qmp, ",server=on,wait=off"));
    a
}

/// Builds the argument list (without the binary).
pub(crate) fn build(
    spec: &VmSpec,
    accel: Accel,
    tsc_khz: u32,
    sockets: &Sockets<'_>,
) -> Vec<OsString> {
    let mut a = Vec::new();
    machine(&mut a, accel, spec.memory_mib);
    let cpu = if accel == Accel::Kvm {
        "host"
    } else {
        "qemu64"
    };
    push(
        &mut a,
        &["-cpu", cpu, "-smp", &spec.vcpus.to_string(), "-no-reboot"],
    );
    push(&mut a, &["-chardev"]);
    a.push(path_opt("socket,id=con,path=", sockets.console, ""));
    push(&mut a, &["-serial", "chardev:con"]);
    push(&mut a, &["-qmp"]);
    a.push(path_opt("unix:", sockets.qmp, ",server=on,wait=off"));
    push(&mut a, &["-chardev"]);
    a.push(path_opt("socket,id=agent,path=", sockets.agent, ""));
    push(
        &mut a,
        &[
            "-device",
            "virtio-serial-device",
            "-device",
            &format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
            "-device",
            "virtio-rng-device",
        ],
    );
    if let Some(net) = &spec.network {
        // vhost stays off: the jail's seccomp filter and the namespace keep the device model in
        // QEMU's own process.
        push(&mut a, &["-netdev"]);
        a.push(
            format!(
                "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
                net.tap
            )
            .into(),
        );
        push(
            &mut a,
            &[
                "-device",
                // guest_announce off: after every restore QEMU would otherwise ask the guest to
                // announce itself (gratuitous ARP, IPv6 neighbour adverts, link notifications),
                // kernel work that a VM behind its own namespace's router has no use for.
                &format!(
                    "virtio-net-device,netdev=net0,mac={},guest_announce=off",
                    crate::GUEST_MAC
                ),
            ],
        );
    }
    let (image, memory) = match &spec.source {
        VmSource::Boot {
            image,
            snapshot_memory,
        } => {
            kernel_args(&mut a, image, tsc_khz);
            (image, snapshot_memory.as_ref().map(|m| (m, true)))
        }
        VmSource::Restore {
            image,
            snapshot,
            derive_into,
            ..
        } => {
            // Loaded over QMP (`migrate-incoming`) once QEMU is up; `-S` keeps it paused after.
            push(&mut a, &["-incoming", "defer", "-S"]);
            match derive_into {
                Some(copy) => (image, Some((copy, true))),
                None => (image, Some((&snapshot.memory, false))),
            }
        }
    };
    if let Some((path, shared)) = memory {
        // share=on for the VM that will be snapshotted (its memory *is* the snapshot);
        // share=off for restored VMs: a private, copy-on-write mapping of the same file, so VMs
        // restored from one snapshot share every page none of them wrote.
        push(&mut a, &["-object"]);
        let mut obj = OsString::from(format!(
            "memory-backend-file,id=mem,size={}M,share={},mem-path=",
            spec.memory_mib,
            if shared { "on" } else { "off" }
        ));
        obj.push(escape_commas(path));
        a.push(obj);
        let machine = a.iter().position(|x| x == "microvm").unwrap_or(1);
        a[machine] = "microvm,memory-backend=mem".into();
    }
    drives(&mut a, image);
    a
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::SnapshotFiles;

    fn image() -> BootImage {
        BootImage {
            kernel: PathBuf::from("/k/vmlinuz"),
            initramfs: PathBuf::from("/k/initrd"),
            rootfs: PathBuf::from("/k/root,fs.ext4"),
            code_drive: PathBuf::from("/c/code.img"),
            extra_cmdline: vec!["ignition.scratch_mib=32".into()],
        }
    }

    fn spec() -> VmSpec {
        VmSpec {
            id: "vm1".into(),
            source: VmSource::Boot {
                image: image(),
                snapshot_memory: None,
            },
            memory_mib: 128,
            vcpus: 1,
            connect_timeout: Duration::from_secs(1),
            network: None,
            priority: Default::default(),
        }
    }

    #[test]
    fn boot_command_line_has_the_devices_and_read_only_root() {
        let s = Sockets {
            agent: Path::new("/r/agent.sock"),
            console: Path::new("/r/console.sock"),
            qmp: Path::new("/r/qmp.sock"),
        };
        let args: Vec<String> = build(&spec(), Accel::Tcg, 2_596_000, &s)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-M microvm -accel tcg -m 128"), "{joined}");
        assert!(joined.contains("-cpu qemu64 -smp 1"), "{joined}");
        assert!(joined.contains("file=/k/root,,fs.ext4,format=raw,if=none,readonly=on"));
        assert!(
            joined.contains("id=code,file=/c/code.img,format=raw,if=none,readonly=on")
                && joined.contains("virtio-blk-device,drive=code,serial=ignition_code"),
            "the code drive, read-only, found by its serial: {joined}"
        );
        assert!(joined.contains("virtserialport,chardev=agent,name=ignition.agent"));
        assert!(joined.contains("unix:/r/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("ignition.scratch_mib=32"));
        assert!(joined.contains("-no-reboot"));
        assert!(
            !joined.contains("memory-backend"),
            "plain boots use anonymous memory"
        );
        let kvm = build(&spec(), Accel::Kvm, 2_596_000, &s);
        assert!(kvm.iter().any(|a| a == "host"), "KVM runs with -cpu host");
    }

    fn joined(spec: &VmSpec) -> String {
        let s = Sockets {
            agent: Path::new("/r/agent.sock"),
            console: Path::new("/r/console.sock"),
            qmp: Path::new("/r/qmp.sock"),
        };
        build(spec, Accel::Tcg, 2_596_000, &s)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn snapshot_source_maps_memory_shared_and_restore_maps_it_private() {
        let mut boot = spec();
        boot.source = VmSource::Boot {
            image: image(),
            snapshot_memory: Some(PathBuf::from("/s/mem")),
        };
        let b = joined(&boot);
        assert!(b.contains("-M microvm,memory-backend=mem"), "{b}");
        assert!(
            b.contains("memory-backend-file,id=mem,size=128M,share=on,mem-path=/s/mem"),
            "{b}"
        );
        assert!(!b.contains("-incoming"));

        let mut restore = spec();
        restore.source = VmSource::Restore {
            image: image(),
            snapshot: SnapshotFiles {
                memory: PathBuf::from("/s/mem"),
                state: PathBuf::from("/s/state"),
            },
            derive_into: None,
            snapshot_code_drive: PathBuf::from("/c/placeholder.img"),
        };
        let r = joined(&restore);
        assert!(
            r.contains("share=off,mem-path=/s/mem"),
            "restores never map the snapshot shared: {r}"
        );
        assert!(
            b.contains("-kernel /k/vmlinuz") && b.contains("-initrd /k/initrd"),
            "{b}"
        );
        for boot_only in ["-kernel", "-initrd", "-append"] {
            assert!(
                !r.split(' ').any(|w| w == boot_only),
                "a restore's kernel is in its memory, not read again: {r}"
            );
        }
        assert!(r.contains("-incoming defer -S"), "{r}");
        assert!(
            r.contains("id=code,file=/c/code.img,"),
            "a restore opens the code drive it is given: {r}"
        );
        let mut derive = restore.clone();
        if let VmSource::Restore { derive_into, .. } = &mut derive.source {
            *derive_into = Some(PathBuf::from("/s/copy"));
        }
        let d = joined(&derive);
        assert!(
            d.contains("share=on,mem-path=/s/copy"),
            "a derived VM maps its own copy shared: {d}"
        );
        // The device model must be the one the snapshot was taken with.
        let devices = |s: &str| {
            s.split(" -device ")
                .skip(1)
                .map(|d| d.split(' ').next().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(devices(&b), devices(&r));
    }
}
