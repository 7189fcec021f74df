//! Firecracker's HTTP API as Ignition uses it: the request bodies, typed after the published
//! OpenAPI specification (`src/firecracker/swagger/firecracker.yaml`, v1.x), and the sequence of
//! requests that configures, starts, snapshots and restores a VM. Pure: no I/O, so the bodies
//! are checked against the specification's required fields and enums in unit tests.

use std::path::Path;

use ignition_proto::CODE_DRIVE_SERIAL;
use serde::Serialize;

/// `PUT /boot-source`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct BootSource {
    pub(crate) kernel_image_path: String,
    pub(crate) boot_args: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) initrd_path: Option<String>,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct MachineConfiguration {
    pub(crate) vcpu_count: u8,
    pub(crate) mem_size_mib: u32,
    pub(crate) smt: bool,
    pub(crate) track_dirty_pages: bool,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Drive {
    pub(crate) drive_id: String,
    pub(crate) path_on_host: String,
    pub(crate) is_root_device: bool,
    pub(crate) is_read_only: bool,
}

/// `PATCH /drives/{drive_id}`: a drive's backing file changed after boot.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct PartialDrive {
    pub(crate) drive_id: String,
    pub(crate) path_on_host: String,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct NetworkInterface {
    pub(crate) iface_id: String,
    pub(crate) host_dev_name: String,
    pub(crate) guest_mac: String,
}

/// `PUT /vsock`: the host side is a Unix socket; a guest connecting to the host's port P
/// reaches the Unix socket `{uds_path}_P`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Vsock {
    pub(crate) guest_cid: u32,
    pub(crate) uds_path: String,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Logger {
    pub(crate) log_path: String,
    pub(crate) level: &'static str,
    pub(crate) show_level: bool,
    pub(crate) show_log_origin: bool,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Metrics {
    pub(crate) metrics_path: String,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct InstanceActionInfo {
    pub(crate) action_type: &'static str,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct VmState {
    pub(crate) state: &'static str,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct SnapshotCreateParams {
    pub(crate) snapshot_type: &'static str,
    pub(crate) snapshot_path: String,
    pub(crate) mem_file_path: String,
}

/// `mem_backend` of a snapshot load.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct MemoryBackend {
    pub(crate) backend_type: &'static str,
    pub(crate) backend_path: String,
}

/// One entry of `network_overrides`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct NetworkOverride {
    pub(crate) iface_id: String,
    pub(crate) host_dev_name: String,
}

/// `vsock_override` of a snapshot load.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct VsockOverride {
    pub(crate) uds_path: String,
}

/// `PUT /snapshot/load`. The memory file is mapped privately by Firecracker (`File` backend),
/// so VMs restored from one snapshot share its clean pages.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct SnapshotLoadParams {
    pub(crate) snapshot_path: String,
    pub(crate) mem_backend: MemoryBackend,
    pub(crate) resume_vm: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) network_overrides: Vec<NetworkOverride>,
    pub(crate) vsock_override: VsockOverride,
}

/// One API call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub(crate) method: &'static str,
    pub(crate) path: String,
    pub(crate) body: serde_json::Value,
}

fn call(method: &'static str, path: impl Into<String>, body: &impl Serialize) -> Call {
    Call {
        method,
        path: path.into(),
        // Serializing these plain structs cannot fail.
        body: serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The guest's vsock context id (every VM has its own device, so one value serves all).
pub(crate) const GUEST_CID: u32 = 3;
/// The guest-facing tap and interface id.
pub(crate) const IFACE_ID: &str = "eth0";

/// What a VM is made of, in Firecracker's terms.
#[derive(Debug, Clone)]
pub(crate) struct Machine<'a> {
    pub(crate) kernel: &'a Path,
    pub(crate) initrd: &'a Path,
    pub(crate) boot_args: String,
    pub(crate) rootfs: &'a Path,
    pub(crate) code_drive: &'a Path,
    pub(crate) vcpus: u8,
    pub(crate) memory_mib: u32,
    pub(crate) tap: Option<&'a str>,
    pub(crate) vsock_uds: &'a Path,
    pub(crate) log: &'a Path,
    pub(crate) metrics: &'a Path,
}

/// Logger and metrics go first: Firecracker accepts them only before the VM is configured.
fn observability(m: &Machine<'_>) -> Vec<Call> {
    vec![
        call(
            "PUT",
            "/logger",
            &Logger {
                log_path: s(m.log),
                level: "Warning",
                show_level: true,
                show_log_origin: false,
            },
        ),
        call(
            "PUT",
            "/metrics",
            &Metrics {
                metrics_path: s(m.metrics),
            },
        ),
    ]
}

/// Configures a fresh VM and starts it.
pub(crate) fn boot(m: &Machine<'_>) -> Vec<Call> {
    let mut calls = observability(m);
    calls.push(call(
        "PUT",
        "/boot-source",
        &BootSource {
            kernel_image_path: s(m.kernel),
            boot_args: m.boot_args.clone(),
            initrd_path: Some(s(m.initrd)),
        },
    ));
    calls.push(call(
        "PUT",
        "/machine-config",
        &MachineConfiguration {
            vcpu_count: m.vcpus,
            mem_size_mib: m.memory_mib,
            smt: false,
            track_dirty_pages: false,
        },
    ));
    // The root filesystem is attached read-only and mounted by the agent under an overlay;
    // the kernel boots from the initramfs, so the drive is not the root device.
    calls.push(call(
        "PUT",
        "/drives/root",
        &Drive {
            drive_id: "root".into(),
            path_on_host: s(m.rootfs),
            is_root_device: false,
            is_read_only: true,
        },
    ));
    calls.push(call(
        "PUT",
        format!("/drives/{CODE_DRIVE_SERIAL}"),
        &Drive {
            drive_id: CODE_DRIVE_SERIAL.into(),
            path_on_host: s(m.code_drive),
            is_root_device: false,
            is_read_only: true,
        },
    ));
    if let Some(tap) = m.tap {
        calls.push(call(
            "PUT",
            format!("/network-interfaces/{IFACE_ID}"),
            &NetworkInterface {
                iface_id: IFACE_ID.into(),
                host_dev_name: tap.into(),
                guest_mac: crate::GUEST_MAC.into(),
            },
        ));
    }
    calls.push(call(
        "PUT",
        "/vsock",
        &Vsock {
            guest_cid: GUEST_CID,
            uds_path: s(m.vsock_uds),
        },
    ));
    calls.push(call(
        "PUT",
        "/actions",
        &InstanceActionInfo {
            action_type: "InstanceStart",
        },
    ));
    calls
}

/// Loads a snapshot into a fresh Firecracker process and resumes it (the agent reconnects its
/// vsock channel, which a snapshot resets, before the driver pauses the VM again).
/// `new_code_drive`: the snapshot was taken with another code drive than `m`'s (a base
/// snapshot's placeholder), which is swapped in; the guest has not touched the drive since
/// its boot then, as Firecracker requires of a drive changed under a running guest.
pub(crate) fn restore(
    m: &Machine<'_>,
    state: &Path,
    memory: &Path,
    new_code_drive: bool,
) -> Vec<Call> {
    let mut calls = observability(m);
    calls.push(call(
        "PUT",
        "/snapshot/load",
        &SnapshotLoadParams {
            snapshot_path: s(state),
            mem_backend: MemoryBackend {
                backend_type: "File",
                backend_path: s(memory),
            },
            resume_vm: true,
            network_overrides: m
                .tap
                .map(|tap| NetworkOverride {
                    iface_id: IFACE_ID.into(),
                    host_dev_name: tap.into(),
                })
                .into_iter()
                .collect(),
            vsock_override: VsockOverride {
                uds_path: s(m.vsock_uds),
            },
        },
    ));
    // The snapshot reopens the code drive's file it was taken with; this points the drive at
    // the function's image, which the guest mounts when it is told to load the function.
    if !new_code_drive {
        return calls;
    }
    calls.push(call(
        "PATCH",
        format!("/drives/{CODE_DRIVE_SERIAL}"),
        &PartialDrive {
            drive_id: CODE_DRIVE_SERIAL.into(),
            path_on_host: s(m.code_drive),
        },
    ));
    calls
}

/// Pauses or resumes.
pub(crate) fn set_state(paused: bool) -> Call {
    call(
        "PATCH",
        "/vm",
        &VmState {
            state: if paused { "Paused" } else { "Resumed" },
        },
    )
}

/// Writes a full snapshot: device state to `state`, guest memory to `memory`. The VM must be
/// paused.
pub(crate) fn snapshot(state: &Path, memory: &Path) -> Call {
    call(
        "PUT",
        "/snapshot/create",
        &SnapshotCreateParams {
            snapshot_type: "Full",
            snapshot_path: s(state),
            mem_file_path: s(memory),
        },
    )
}
