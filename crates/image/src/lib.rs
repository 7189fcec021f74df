//! The guest image: what every microVM boots.
//!
//! Three artifacts, each cached under the shared cache directory by a key derived from its inputs,
//! so that `ignition image build` is idempotent and rebuilds only what changed:
//!
//! - **kernel**: Debian's `linux-image-cloud-amd64`, unpacked from its `.deb` (never installed on
//!   the host); keyed by the package's version.
//! - **rootfs**: an ext4 image with Debian and Python 3, made by `debootstrap` and `mkfs.ext4 -d`
//!   (no loop mount needed); the guest mounts it read-only under a tmpfs overlay, so nothing an
//!   execution writes survives its VM. Keyed by the recipe.
//! - **initramfs**: a newc cpio with the agent as `/init` and the kernel modules it loads, in
//!   dependency order. Keyed by the agent binary, the kernel and the module list.
//!
//! A lock file serializes builders: every server on a host shares one cache.

mod build;
mod cpio;
pub mod ext4;
mod kernel;
mod modules;
mod rootfs;
mod vmlinux;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use build::{build, build_unrecorded, load_current, BuildOptions};

/// Why the image could not be built or found.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An external tool (apt-get, dpkg, debootstrap, mkfs.ext4) failed.
    #[error("`{command}` failed: {detail}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status and the end of its error output.
        detail: String,
    },
    /// Something the build needs is missing.
    #[error("{0}")]
    Missing(String),
    /// The image manifest is unreadable.
    #[error("image manifest {path}: {detail}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

impl ImageError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// A built guest image: the files a driver boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImage {
    /// Content key of the whole image (changes when any part changes).
    pub id: String,
    /// The compressed kernel (`bzImage`), which QEMU boots.
    pub kernel: PathBuf,
    /// The same kernel uncompressed (ELF `vmlinux`), which Firecracker boots.
    #[serde(default)]
    pub vmlinux: PathBuf,
    /// The kernel's release string (`uname -r` in the guest).
    pub kernel_release: String,
    /// The initramfs with the agent.
    pub initramfs: PathBuf,
    /// The read-only root filesystem (ext4).
    pub rootfs: PathBuf,
}

/// The default cache directory: `$XDG_CACHE_HOME/ignition` or `~/.cache/ignition`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Path::new(&xdg).join("ignition");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache").join("ignition")
}

pub(crate) fn run_tool(
    cmd: &mut std::process::Command,
) -> Result<std::process::Output, ImageError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| ImageError::Tool {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ImageError::Tool {
            command,
            detail: format!("{}: {tail}", out.status),
        });
    }
    Ok(out)
}

pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}
