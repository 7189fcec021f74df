//! The root filesystem: Debian with Python 3 and Node.js, as an ext4 image the guest mounts
//! read-only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run_tool, sha256_hex, ImageError};

const SUITE: &str = "bookworm";
/// The runtimes' interpreters (Debian's own builds) and the CA bundle their TLS clients trust.
const PACKAGES: &str = "python3,nodejs,ca-certificates";
/// Bump when the steps below change, so cached images are rebuilt.
const RECIPE_VERSION: &str = "1";
/// What the guest never needs; removed to keep the image small.
const PRUNE: &[&str] = &[
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
];

/// The Debian mirror: `IGNITION_DEBIAN_MIRROR`, else the first one apt is configured with.
fn mirror() -> String {
    if let Ok(m) = std::env::var("IGNITION_DEBIAN_MIRROR") {
        if !m.is_empty() {
            return m;
        }
    }
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    sources
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|u| u.ends_with("/debian") || u.ends_with("/debian/"))
        .map_or_else(|| "http://deb.debian.org/debian".to_owned(), str::to_owned)
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            }
            total += meta.len().max(4096);
        }
    }
    total
}

/// The cache key of the root filesystem recipe.
pub(crate) fn key() -> String {
    sha256_hex(&[
        SUITE.as_bytes(),
        PACKAGES.as_bytes(),
        RECIPE_VERSION.as_bytes(),
    ])[..16]
        .to_owned()
}

/// Makes sure the root filesystem image exists; returns its path.
pub(crate) fn ensure(cache: &Path) -> Result<PathBuf, ImageError> {
    let dir = cache.join("rootfs").join(key());
    let image = dir.join("rootfs.ext4");
    if image.exists() {
        return Ok(image);
    }
    fs::create_dir_all(&dir).map_err(ImageError::io(format!("mkdir {}", dir.display())))?;
    let tree = dir.join(format!(".tree-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tree);
    let mirror = mirror();
    tracing::info!(%mirror, "building the guest root filesystem with debootstrap (about a minute)");
    run_tool(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
            .arg(&tree)
            .arg(&mirror),
    )?;
    for p in PRUNE {
        let _ = fs::remove_dir_all(tree.join(p));
    }
    // The guest's own identity files; the agent mounts everything else it needs.
    fs::write(tree.join("etc/hostname"), "ignition\n").map_err(ImageError::io("write hostname"))?;
    for d in ["var/task", "opt/ignition"] {
        fs::create_dir_all(tree.join(d)).map_err(ImageError::io(format!("mkdir {d}")))?;
    }
    let size = dir_size(&tree) * 5 / 4 + 64 * 1024 * 1024;
    let tmp_image = dir.join(format!(".rootfs-{}.ext4", std::process::id()));
    let file = fs::File::create(&tmp_image).map_err(ImageError::io("create rootfs image"))?;
    file.set_len(size)
        .map_err(ImageError::io("size rootfs image"))?;
    drop(file);
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "ignition-root", "-d"])
            .arg(&tree)
            .arg(&tmp_image),
    )?;
    fs::remove_dir_all(&tree).map_err(ImageError::io("remove rootfs tree"))?;
    fs::rename(&tmp_image, &image).map_err(ImageError::io("install rootfs image"))?;
    Ok(image)
}
