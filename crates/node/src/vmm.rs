//! The choice of hypervisor, and its driver.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ignition_vmm::doctor::KvmKind;
use ignition_vmm::firecracker::{FirecrackerConfig, FirecrackerDriver};
use ignition_vmm::qemu::{QemuConfig, QemuDriver};
use ignition_vmm::{Accel, VmmDriver, VmmKind};

use crate::{JailerChoice, NodeError, VmmChoice, VmmConfig};

/// Which hypervisor and accelerator a node runs, from what was asked and (for `auto`) a
/// measurement of the host's KVM, taken at most once and only when an `auto` needs it.
pub fn resolve_vmm(config: &VmmConfig) -> (VmmKind, Accel) {
    let needs_probe = config.choice == VmmChoice::Auto || config.accel == Accel::Auto;
    let kvm = needs_probe.then(|| ignition_vmm::doctor::probe_kvm(Duration::from_secs(5)).kind);
    choose(config, kvm)
}

fn choose(config: &VmmConfig, kvm: Option<KvmKind>) -> (VmmKind, Accel) {
    let kind = match (config.choice, kvm) {
        (VmmChoice::Qemu, _) | (VmmChoice::Auto, None) => VmmKind::Qemu,
        (VmmChoice::Firecracker, _) => VmmKind::Firecracker,
        (VmmChoice::Auto, Some(kvm)) => ignition_vmm::doctor::auto_vmm(&config.firecracker, kvm),
    };
    let accel = match (config.accel, kvm) {
        (Accel::Auto, Some(kvm)) => ignition_vmm::doctor::auto_accel(kvm),
        (accel, _) => accel,
    };
    (kind, accel)
}

/// The driver `config` asks for, checked to be able to run here.
pub(crate) fn driver(config: &VmmConfig, run_dir: &Path) -> Result<Arc<dyn VmmDriver>, NodeError> {
    if let Some(d) = &config.driver {
        return Ok(Arc::clone(d));
    }
    let (kind, accel) = resolve_vmm(config);
    let users = Arc::new(ignition_vmm::jail::VmmUsers::new(
        config.jail.uid_base,
        config.jail.uids,
        config.jail.gid,
    ));
    Ok(match kind {
        VmmKind::Firecracker => {
            check_firecracker(&config.firecracker)?;
            let jailer = match &config.jailer {
                JailerChoice::None => None,
                JailerChoice::Auto => ignition_vmm::firecracker::jailer::find(&config.firecracker),
                JailerChoice::Path(p) => Some(p.clone()),
            };
            tracing::info!(jailer = ?jailer, "Firecracker");
            Arc::new(FirecrackerDriver::new(FirecrackerConfig {
                binary: config.firecracker.clone(),
                run_dir: run_dir.to_path_buf(),
                jail: config.jail.enabled,
                users,
                jailer,
            }))
        }
        VmmKind::Qemu => {
            let d = QemuDriver::new(QemuConfig {
                binary: config.qemu.clone(),
                accel,
                run_dir: run_dir.to_path_buf(),
                jail: config.jail.enabled,
                users,
            });
            tracing::info!(accel = d.accel().qemu_name(), "QEMU");
            Arc::new(d)
        }
    })
}

fn check_firecracker(binary: &Path) -> Result<(), NodeError> {
    let found = std::process::Command::new(binary)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return Err(NodeError::Vmm(format!(
            "--vmm firecracker: cannot run {} (install Firecracker or pass --firecracker PATH)",
            binary.display()
        )));
    }
    if !Path::new("/dev/kvm").exists() {
        return Err(NodeError::Vmm(
            "--vmm firecracker needs KVM, and this host has no /dev/kvm".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_choices_need_no_probe_and_auto_follows_the_measurement() {
        let mut c = VmmConfig {
            choice: VmmChoice::Qemu,
            accel: Accel::Tcg,
            ..VmmConfig::default()
        };
        assert_eq!(choose(&c, None), (VmmKind::Qemu, Accel::Tcg));
        c.choice = VmmChoice::Firecracker;
        assert_eq!(choose(&c, None).0, VmmKind::Firecracker);
        // Without hardware KVM, auto never picks Firecracker, installed or not.
        c.choice = VmmChoice::Auto;
        c.firecracker = "/bin/true".into();
        assert_eq!(choose(&c, Some(KvmKind::NestedEmulated)).0, VmmKind::Qemu);
        assert_eq!(choose(&c, Some(KvmKind::Hardware)).0, VmmKind::Firecracker);
        c.firecracker = "/nonexistent/firecracker".into();
        assert_eq!(choose(&c, Some(KvmKind::Hardware)).0, VmmKind::Qemu);
        c.accel = Accel::Auto;
        assert_eq!(choose(&c, Some(KvmKind::Absent)).1, Accel::Tcg);
    }
}
