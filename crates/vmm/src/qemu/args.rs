//! The QEMU command line for a `microvm` guest.

use std::ffi::OsString;
use std::path::Path;

use ignition_proto::AGENT_PORT_NAME;

use crate::{Accel, VmSource, VmSpec};

/// Host-side paths of one VM's sockets.
#[derive(Debug, Clone)]
pub(crate) struct Sockets<'a> {
    pub(crate) agent: &'a Path,
    pub(crate) console: &'a Path,
    pub(crate) qmp: &'a Path,
}

/// The kernel command line. `tsc_early_khz` avoids a calibration against the PIT that hung about
/// half the boots under TCG; `panic=-1` with QEMU's `-no-reboot` turns a guest panic into a VMM
/// exit the host sees at once.
pub(crate) const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 tsc=reliable quiet loglevel=4";

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

fn path_opt(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s.push(suffix);
    s
}

/// Builds the argument list (without the binary).
pub(crate) fn build(spec: &VmSpec, accel: Accel, sockets: &Sockets<'_>) -> Vec<OsString> {
    let mut a = Vec::new();
    let cpu = if accel == Accel::Kvm {
        "host"
    } else {
        "qemu64"
    };
    push(
        &mut a,
        &[
            "-M",
            "microvm",
            "-accel",
            accel.qemu_name(),
            "-cpu",
            cpu,
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            &spec.vcpus.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ],
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
    match &spec.source {
        VmSource::Boot {
            kernel,
            initramfs,
            rootfs,
            extra_cmdline,
        } => {
            push(&mut a, &["-kernel"]);
            a.push(kernel.into());
            push(&mut a, &["-initrd"]);
            a.push(initramfs.into());
            let mut cmdline = BASE_CMDLINE.to_owned();
            for w in extra_cmdline {
                cmdline.push(' ');
                cmdline.push_str(w);
            }
            push(&mut a, &["-append", &cmdline, "-drive"]);
            // QEMU splits -drive options on commas; a comma in the path is doubled.
            let escaped = rootfs.to_string_lossy().replace(',', ",,");
            a.push(format!("id=root,file={escaped},format=raw,if=none,readonly=on").into());
            push(&mut a, &["-device", "virtio-blk-device,drive=root"]);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "vm1".into(),
            source: VmSource::Boot {
                kernel: PathBuf::from("/k/vmlinuz"),
                initramfs: PathBuf::from("/k/initrd"),
                rootfs: PathBuf::from("/k/root,fs.ext4"),
                extra_cmdline: vec!["ignition.scratch_mib=32".into()],
            },
            memory_mib: 128,
            vcpus: 1,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn boot_command_line_has_the_devices_and_read_only_root() {
        let s = Sockets {
            agent: Path::new("/r/agent.sock"),
            console: Path::new("/r/console.sock"),
            qmp: Path::new("/r/qmp.sock"),
        };
        let args: Vec<String> = build(&spec(), Accel::Tcg, &s)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-M microvm -accel tcg -cpu qemu64 -m 128 -smp 1"));
        assert!(joined.contains("file=/k/root,,fs.ext4,format=raw,if=none,readonly=on"));
        assert!(joined.contains("virtserialport,chardev=agent,name=ignition.agent"));
        assert!(joined.contains("unix:/r/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("ignition.scratch_mib=32"));
        assert!(joined.contains("-no-reboot"));
        let kvm = build(&spec(), Accel::Kvm, &s);
        assert!(kvm.iter().any(|a| a == "host"), "KVM runs with -cpu host");
    }
}
