//! Choosing the accelerator.
//!
//! `auto` picks KVM only where the CPU offers hardware virtualization (the `vmx` or `svm` flag) and
//! `/dev/kvm` is usable. The development machines of this project have a `/dev/kvm` backed by a
//! nested, page-table based KVM (`kvm_pvm`) that runs stock kernels through an instruction
//! emulator and stops on instructions it cannot emulate; it shows no `vmx`/`svm` flag, so `auto`
//! falls back to TCG there.

use std::str::FromStr;

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, slower.
    Tcg,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// KVM where it is hardware-backed, TCG otherwise.
    Auto,
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcg" => Ok(Self::Tcg),
            "kvm" => Ok(Self::Kvm),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown accelerator {other:?} (expected tcg, kvm or auto)"
            )),
        }
    }
}

/// What the host offers, as read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostVirt {
    /// `/dev/kvm` opens read-write.
    pub kvm_device: bool,
    /// The CPU flags include `vmx` or `svm`.
    pub hardware_flags: bool,
    /// A nested, emulating KVM module (`kvm_pvm`) is loaded.
    pub nested_emulated: bool,
}

impl HostVirt {
    /// Reads the host.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            kvm_device: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
            hardware_flags: cpuinfo_has_virt_flag(&cpuinfo),
            nested_emulated: std::path::Path::new("/sys/module/kvm_pvm").exists(),
        }
    }
}

fn cpuinfo_has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

impl Accel {
    /// The concrete accelerator for this host (`Auto` resolved).
    pub fn resolve(self, host: HostVirt) -> Self {
        match self {
            Self::Auto if host.kvm_device && host.hardware_flags && !host.nested_emulated => {
                Self::Kvm
            }
            Self::Auto => Self::Tcg,
            other => other,
        }
    }

    /// QEMU's `-accel` value.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg | Self::Auto => "tcg",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_kvm_only_on_hardware_virtualization() {
        let real = HostVirt {
            kvm_device: true,
            hardware_flags: true,
            nested_emulated: false,
        };
        let nested = HostVirt {
            kvm_device: true,
            hardware_flags: false,
            nested_emulated: true,
        };
        let none = HostVirt {
            kvm_device: false,
            hardware_flags: true,
            nested_emulated: false,
        };
        assert_eq!(Accel::Auto.resolve(real), Accel::Kvm);
        assert_eq!(Accel::Auto.resolve(nested), Accel::Tcg);
        assert_eq!(Accel::Auto.resolve(none), Accel::Tcg);
        assert_eq!(
            Accel::Kvm.resolve(nested),
            Accel::Kvm,
            "an explicit choice is kept"
        );
        assert_eq!("tcg".parse::<Accel>(), Ok(Accel::Tcg));
        assert!("xen".parse::<Accel>().is_err());
    }

    #[test]
    fn virt_flag_is_read_from_the_flags_line_only() {
        assert!(cpuinfo_has_virt_flag("flags\t\t: fpu vme vmx sse\n"));
        assert!(!cpuinfo_has_virt_flag(
            "flags\t\t: fpu vme sse\nmodel name: vmx\n"
        ));
    }

    /// On this project's machines (nested kvm_pvm), `auto` must not pick KVM.
    #[test]
    fn this_host_resolves_consistently() {
        let host = HostVirt::probe();
        if host.nested_emulated {
            assert_eq!(Accel::Auto.resolve(host), Accel::Tcg);
        }
    }
}
