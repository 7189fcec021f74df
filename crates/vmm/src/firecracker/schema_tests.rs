//! The request bodies checked against Firecracker's published API specification
//! (`firecracker.yaml`): for every call the driver makes, the path and method exist, the body
//! has the definition's required fields, no field the definition lacks, the right JSON types,
//! and values from the enums. The table below is transcribed from the specification.

use std::path::Path;

use serde_json::Value;

use super::api::{self, Call, Machine};

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    Int(i64, i64),
    Enum(&'static [&'static str]),
    Obj(&'static str),
    ArrayOf(&'static str),
}

struct Def {
    name: &'static str,
    required: &'static [&'static str],
    props: &'static [(&'static str, Ty)],
}

const DEFS: &[Def] = &[
    Def {
        name: "BootSource",
        required: &["kernel_image_path"],
        props: &[
            ("boot_args", Ty::Str),
            ("initrd_path", Ty::Str),
            ("kernel_image_path", Ty::Str),
        ],
    },
    Def {
        name: "MachineConfiguration",
        required: &["mem_size_mib", "vcpu_count"],
        props: &[
            (
                "cpu_template",
                Ty::Enum(&["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"]),
            ),
            ("smt", Ty::Bool),
            ("mem_size_mib", Ty::Int(1, i64::MAX)),
            ("track_dirty_pages", Ty::Bool),
            ("vcpu_count", Ty::Int(1, 32)),
            ("huge_pages", Ty::Enum(&["None", "Transparent", "2M"])),
        ],
    },
    Def {
        name: "Drive",
        required: &["drive_id", "is_root_device"],
        props: &[
            ("drive_id", Ty::Str),
            ("partuuid", Ty::Str),
            ("is_root_device", Ty::Bool),
            ("cache_type", Ty::Enum(&["Unsafe", "Writeback"])),
            ("is_read_only", Ty::Bool),
            ("path_on_host", Ty::Str),
            ("io_engine", Ty::Enum(&["Sync", "Async"])),
            ("socket", Ty::Str),
        ],
    },
    Def {
        name: "PartialDrive",
        required: &["drive_id"],
        props: &[("drive_id", Ty::Str), ("path_on_host", Ty::Str)],
    },
    Def {
        name: "NetworkInterface",
        required: &["host_dev_name", "iface_id"],
        props: &[
            ("guest_mac", Ty::Str),
            ("host_dev_name", Ty::Str),
            ("iface_id", Ty::Str),
            ("mtu", Ty::Int(68, 65535)),
        ],
    },
    Def {
        name: "Vsock",
        required: &["guest_cid", "uds_path"],
        props: &[
            ("guest_cid", Ty::Int(3, u32::MAX as i64)),
            ("uds_path", Ty::Str),
            ("vsock_id", Ty::Str),
        ],
    },
    Def {
        name: "Logger",
        required: &[],
        props: &[
            (
                "level",
                Ty::Enum(&["Error", "Warning", "Info", "Debug", "Trace", "Off"]),
            ),
            ("log_path", Ty::Str),
            ("show_level", Ty::Bool),
            ("show_log_origin", Ty::Bool),
            ("module", Ty::Str),
        ],
    },
    Def {
        name: "Metrics",
        required: &["metrics_path"],
        props: &[("metrics_path", Ty::Str)],
    },
    Def {
        name: "InstanceActionInfo",
        required: &["action_type"],
        props: &[(
            "action_type",
            Ty::Enum(&["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]),
        )],
    },
    Def {
        name: "Vm",
        required: &["state"],
        props: &[("state", Ty::Enum(&["Paused", "Resumed"]))],
    },
    Def {
        name: "SnapshotCreateParams",
        required: &["mem_file_path", "snapshot_path"],
        props: &[
            ("mem_file_path", Ty::Str),
            ("snapshot_path", Ty::Str),
            ("snapshot_type", Ty::Enum(&["Full", "Diff"])),
        ],
    },
    Def {
        name: "SnapshotLoadParams",
        required: &["snapshot_path"],
        props: &[
            ("enable_diff_snapshots", Ty::Bool),
            ("track_dirty_pages", Ty::Bool),
            ("mem_file_path", Ty::Str),
            ("mem_backend", Ty::Obj("MemoryBackend")),
            ("snapshot_path", Ty::Str),
            ("resume_vm", Ty::Bool),
            ("network_overrides", Ty::ArrayOf("NetworkOverride")),
            ("vsock_override", Ty::Obj("VsockOverride")),
            ("clock_realtime", Ty::Bool),
        ],
    },
    Def {
        name: "MemoryBackend",
        required: &["backend_type", "backend_path"],
        props: &[
            ("backend_type", Ty::Enum(&["File", "Uffd"])),
            ("backend_path", Ty::Str),
        ],
    },
    Def {
        name: "NetworkOverride",
        required: &["iface_id", "host_dev_name"],
        props: &[("iface_id", Ty::Str), ("host_dev_name", Ty::Str)],
    },
    Def {
        name: "VsockOverride",
        required: &["uds_path"],
        props: &[("uds_path", Ty::Str)],
    },
];

/// (method, path pattern, body definition); `{}` matches one path segment.
const PATHS: &[(&str, &str, &str)] = &[
    ("PUT", "/boot-source", "BootSource"),
    ("PUT", "/machine-config", "MachineConfiguration"),
    ("PUT", "/drives/{}", "Drive"),
    ("PATCH", "/drives/{}", "PartialDrive"),
    ("PUT", "/network-interfaces/{}", "NetworkInterface"),
    ("PUT", "/vsock", "Vsock"),
    ("PUT", "/logger", "Logger"),
    ("PUT", "/metrics", "Metrics"),
    ("PUT", "/actions", "InstanceActionInfo"),
    ("PATCH", "/vm", "Vm"),
    ("PUT", "/snapshot/create", "SnapshotCreateParams"),
    ("PUT", "/snapshot/load", "SnapshotLoadParams"),
];

fn def(name: &str) -> &'static Def {
    DEFS.iter().find(|d| d.name == name).unwrap()
}

fn check(def: &Def, v: &Value, at: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{at}: not an object"));
    for r in def.required {
        assert!(obj.contains_key(*r), "{at}: {} needs {r}", def.name);
    }
    for (k, val) in obj {
        let ty = def
            .props
            .iter()
            .find(|(p, _)| p == k)
            .unwrap_or_else(|| panic!("{at}: {} has no field {k}", def.name))
            .1;
        let at = format!("{at}.{k}");
        match ty {
            Ty::Str => assert!(val.is_string(), "{at}: not a string"),
            Ty::Bool => assert!(val.is_boolean(), "{at}: not a boolean"),
            Ty::Int(lo, hi) => {
                let n = val
                    .as_i64()
                    .unwrap_or_else(|| panic!("{at}: not an integer"));
                assert!((lo..=hi).contains(&n), "{at}: {n} outside {lo}..={hi}");
            }
            Ty::Enum(values) => assert!(
                val.as_str().is_some_and(|s| values.contains(&s)),
                "{at}: {val} not one of {values:?}"
            ),
            Ty::Obj(name) => check(self::def(name), val, &at),
            Ty::ArrayOf(name) => {
                for (i, item) in val.as_array().unwrap().iter().enumerate() {
                    check(self::def(name), item, &format!("{at}[{i}]"));
                }
            }
        }
    }
}

fn matches(pattern: &str, path: &str) -> bool {
    let (p, q): (Vec<_>, Vec<_>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == q.len()
        && p.iter()
            .zip(&q)
            .all(|(a, b)| (*a == "{}" && !b.is_empty()) || a == b)
}

fn validate(c: &Call) {
    let (_, pattern, name) = PATHS
        .iter()
        .find(|(m, p, _)| *m == c.method && matches(p, &c.path))
        .unwrap_or_else(|| panic!("{} {} is not in the API", c.method, c.path));
    check(def(name), &c.body, &format!("{} {}", c.method, c.path));
    // The id in the path must be the body's.
    if pattern.ends_with("{}") {
        let id = c.path.rsplit('/').next().unwrap();
        let field = if name.ends_with("Drive") {
            "drive_id"
        } else {
            "iface_id"
        };
        assert_eq!(c.body[field], id, "{}: path id and body id differ", c.path);
    }
    if *name == "SnapshotLoadParams" {
        let both =
            c.body.get("mem_backend").is_some() as u8 + c.body.get("mem_file_path").is_some() as u8;
        assert_eq!(both, 1, "exactly one of mem_backend and mem_file_path");
    }
}

fn machine<'a>(tap: Option<&'a str>) -> Machine<'a> {
    Machine {
        kernel: Path::new("/img/vmlinux"),
        initrd: Path::new("/img/initrd"),
        boot_args: "console=ttyS0 reboot=k panic=-1".into(),
        rootfs: Path::new("/img/rootfs.ext4"),
        code_drive: Path::new("/code/abc.img"),
        vcpus: 1,
        memory_mib: 128,
        tap,
        vsock_uds: Path::new("/run/vm/vsock.sock"),
        log: Path::new("/run/vm/fc.log"),
        metrics: Path::new("/run/vm/fc.metrics"),
    }
}

#[test]
fn every_request_the_driver_makes_follows_the_api_specification() {
    for tap in [None, Some("tap0")] {
        let m = machine(tap);
        let mut calls = api::boot(&m);
        calls.extend(api::restore(
            &m,
            Path::new("/s/state"),
            Path::new("/s/mem"),
            true,
        ));
        calls.push(api::snapshot(Path::new("/s/state"), Path::new("/s/mem")));
        calls.push(api::set_state(true));
        calls.push(api::set_state(false));
        for c in &calls {
            validate(c);
        }
    }
}

#[test]
fn boot_configures_before_it_starts_and_restore_maps_the_memory_file() {
    let boot = api::boot(&machine(Some("tap0")));
    let paths: Vec<&str> = boot.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths[..2],
        ["/logger", "/metrics"],
        "observability must come first"
    );
    assert_eq!(paths.last(), Some(&"/actions"), "the start comes last");
    assert!(paths.contains(&"/network-interfaces/eth0"));
    let drive = boot.iter().find(|c| c.path == "/drives/root").unwrap();
    assert_eq!(drive.body["is_read_only"], true);
    assert!(!api::boot(&machine(None))
        .iter()
        .any(|c| c.path.starts_with("/network-interfaces")));

    let restore = api::restore(
        &machine(Some("tap0")),
        Path::new("/s/state"),
        Path::new("/s/mem"),
        true,
    );
    let same = api::restore(
        &machine(None),
        Path::new("/s/state"),
        Path::new("/s/mem"),
        false,
    );
    assert!(
        !same.iter().any(|c| c.method == "PATCH"),
        "a function's snapshot keeps the drive it was taken with, mounted"
    );
    let code = boot
        .iter()
        .find(|c| c.path == "/drives/ignition_code")
        .unwrap();
    assert_eq!(code.body["is_read_only"], true);
    assert_eq!(code.body["path_on_host"], "/code/abc.img");
    // The code drive is pointed at the function's image after the load, before the agent is
    // asked to mount it.
    let patch = restore.last().unwrap();
    assert_eq!(
        (patch.method, patch.path.as_str()),
        ("PATCH", "/drives/ignition_code")
    );
    assert_eq!(patch.body["path_on_host"], "/code/abc.img");
    let load = restore.iter().find(|c| c.path == "/snapshot/load").unwrap();
    assert_eq!(load.body["mem_backend"]["backend_type"], "File");
    assert_eq!(load.body["mem_backend"]["backend_path"], "/s/mem");
    assert_eq!(load.body["network_overrides"][0]["host_dev_name"], "tap0");
    assert_eq!(
        load.body["vsock_override"]["uds_path"],
        "/run/vm/vsock.sock"
    );
}

#[test]
fn the_checker_itself_rejects_what_the_specification_forbids() {
    let bad = [
        Call {
            method: "PUT",
            path: "/machine-config".into(),
            body: serde_json::json!({ "vcpu_count": 64, "mem_size_mib": 128 }),
        },
        Call {
            method: "PUT",
            path: "/drives/root".into(),
            body: serde_json::json!({ "drive_id": "other", "is_root_device": false }),
        },
        Call {
            method: "PUT",
            path: "/vsock".into(),
            body: serde_json::json!({ "guest_cid": 2, "uds_path": "/x" }),
        },
        Call {
            method: "PUT",
            path: "/snapshot/load".into(),
            body: serde_json::json!({ "snapshot_path": "/s" }),
        },
        Call {
            method: "POST",
            path: "/actions".into(),
            body: serde_json::json!({ "action_type": "InstanceStart" }),
        },
    ];
    for c in bad {
        let r = std::panic::catch_unwind(|| validate(&c));
        assert!(r.is_err(), "{} {} {} passed", c.method, c.path, c.body);
    }
}
