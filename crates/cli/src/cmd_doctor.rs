//! `ignition doctor`: what this host offers, and what Ignition will use on it, and why.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub(crate) struct DoctorArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The QEMU binary to look at.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
}

pub(crate) fn run(args: DoctorArgs) -> Result<ExitCode> {
    let r = ignition_vmm::doctor::inspect(&args.qemu);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or_else(|| "not installed".to_owned(), |p| p.display().to_string())
    };
    let kvm = serde_json::to_value(r.kvm)?;
    let rows = [
        (
            "kvm",
            format!(
                "{} ({})",
                kvm.as_str().unwrap_or_default(),
                r.kvm_probe.detail
            ),
        ),
        ("accel", format!("{} (what --accel auto uses)", r.accel)),
        ("vmm", r.vmm.to_owned()),
        (
            "qemu",
            r.qemu.clone().unwrap_or_else(|| "not installed".into()),
        ),
        ("firecracker", path(&r.firecracker)),
        ("jailer", path(&r.jailer)),
        ("tun", yes(r.tun).to_owned()),
        ("nftables", yes(r.nftables).to_owned()),
        ("iptables", yes(r.iptables).to_owned()),
        ("cgroup", r.cgroup.to_owned()),
        ("vhost-vsock", yes(r.vhost_vsock).to_owned()),
        ("cpus", r.cpus.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:<12} {v}");
    }
    Ok(ExitCode::SUCCESS)
}
