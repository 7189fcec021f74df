//! Putting the parts together under a lock, and the manifest that names the current image.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::cpio::CpioWriter;
use crate::{kernel, modules, rootfs, sha256_hex, GuestImage, ImageError};

/// Bump when the initramfs layout changes.
const INITRAMFS_VERSION: &str = "1";
const MANIFEST: &str = "current.json";

/// What a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The shared cache directory.
    pub cache_dir: PathBuf,
    /// The statically linked guest agent.
    pub agent: PathBuf,
}

/// Holds the cache's build lock until dropped.
fn lock_cache(cache: &Path) -> Result<Flock<fs::File>, ImageError> {
    let path = cache.join("build.lock");
    let file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(ImageError::io(format!("open {}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ImageError::Io {
        what: format!("lock {}", path.display()),
        source: errno.into(),
    })
}

/// Refuses an agent that needs a dynamic loader: the initramfs has no libc.
fn check_static(agent: &[u8], path: &Path) -> Result<(), ImageError> {
    let bad = |why: &str| ImageError::Missing(format!("agent {}: {why}", path.display()));
    if agent.len() < 64 || &agent[..4] != b"\x7fELF" || agent[4] != 2 {
        return Err(bad("not a 64-bit ELF executable"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([agent[o], agent[o + 1]]) as usize;
    let mut off_bytes = [0u8; 8];
    off_bytes.copy_from_slice(&agent[0x20..0x28]);
    let phoff =
        usize::try_from(u64::from_le_bytes(off_bytes)).map_err(|_| bad("bad ELF header"))?;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(p_type) = agent.get(at..at + 4) else {
            return Err(bad("truncated program headers"));
        };
        if p_type == [3, 0, 0, 0] {
            return Err(bad(
                "dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu",
            ));
        }
    }
    Ok(())
}

fn initramfs(cache: &Path, agent: &[u8], kernel: &kernel::Kernel) -> Result<PathBuf, ImageError> {
    let mods = modules::resolve(&kernel.modules)?;
    let names: Vec<&str> = mods.iter().map(|(n, _)| n.as_str()).collect();
    let order = names.join("\n") + "\n";
    let key = sha256_hex(&[
        INITRAMFS_VERSION.as_bytes(),
        agent,
        kernel.key.as_bytes(),
        order.as_bytes(),
    ])[..16]
        .to_owned();
    let dir = cache.join("initramfs");
    let path = dir.join(format!("{key}.cpio"));
    if path.exists() {
        return Ok(path);
    }
    fs::create_dir_all(&dir).map_err(ImageError::io(format!("mkdir {}", dir.display())))?;
    let mut w = CpioWriter::default();
    for d in [
        "dev",
        "proc",
        "sys",
        "lower",
        "upper",
        "newroot",
        "lib",
        "lib/modules",
    ] {
        w.dir(d);
    }
    w.char_device("dev/console", 0o600, 5, 1);
    w.char_device("dev/null", 0o666, 1, 3);
    w.file("init", 0o755, agent);
    w.file("lib/modules/order", 0o644, order.as_bytes());
    for (name, bytes) in &mods {
        w.file(&format!("lib/modules/{name}"), 0o644, bytes);
    }
    let tmp = dir.join(format!(".{key}.{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(ImageError::io("create initramfs"))?;
    w.finish(&mut f)
        .map_err(ImageError::io("write initramfs"))?;
    f.flush().map_err(ImageError::io("write initramfs"))?;
    fs::rename(&tmp, &path).map_err(ImageError::io("install initramfs"))?;
    Ok(path)
}

/// Builds whatever part of the image is missing or stale and records it as current.
///
/// Cheap when nothing changed: it hashes the agent and checks that the cached parts exist.
pub fn build(opts: &BuildOptions) -> Result<GuestImage, ImageError> {
    let image = build_unrecorded(opts)?;
    let cache = &opts.cache_dir;
    let _lock = lock_cache(cache)?;
    let manifest = serde_json::to_vec_pretty(&image).map_err(|e| ImageError::Manifest {
        path: cache.join(MANIFEST),
        detail: e.to_string(),
    })?;
    let tmp = cache.join(format!(".{MANIFEST}.{}", std::process::id()));
    fs::write(&tmp, manifest).map_err(ImageError::io("write image manifest"))?;
    fs::rename(&tmp, cache.join(MANIFEST)).map_err(ImageError::io("install image manifest"))?;
    Ok(image)
}

/// Builds an image like [`build`] without recording it as the cache's current image: for
/// another agent binary (a test fixture) next to the real one.
pub fn build_unrecorded(opts: &BuildOptions) -> Result<GuestImage, ImageError> {
    let cache = &opts.cache_dir;
    fs::create_dir_all(cache).map_err(ImageError::io(format!("mkdir {}", cache.display())))?;
    let _lock = lock_cache(cache)?;
    let agent = fs::read(&opts.agent).map_err(ImageError::io(format!(
        "read the guest agent {}",
        opts.agent.display()
    )))?;
    check_static(&agent, &opts.agent)?;
    let kernel = kernel::ensure(cache)?;
    let rootfs = rootfs::ensure(cache)?;
    let initramfs = initramfs(cache, &agent, &kernel)?;
    let id = sha256_hex(&[
        kernel.key.as_bytes(),
        rootfs.to_string_lossy().as_bytes(),
        initramfs.to_string_lossy().as_bytes(),
    ])[..16]
        .to_owned();
    let vmlinux = crate::vmlinux::ensure(&kernel.vmlinuz)?;
    let image = GuestImage {
        id,
        vmlinux,
        kernel: kernel.vmlinuz,
        kernel_release: kernel.release,
        initramfs,
        rootfs,
    };
    Ok(image)
}

/// The image last built into `cache_dir`, if it is complete.
pub fn load_current(cache_dir: &Path) -> Result<GuestImage, ImageError> {
    let path = cache_dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(|e| ImageError::Manifest {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let image: GuestImage = serde_json::from_slice(&bytes).map_err(|e| ImageError::Manifest {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    for part in [&image.kernel, &image.initramfs, &image.rootfs] {
        if !part.exists() {
            return Err(ImageError::Manifest {
                path,
                detail: format!("{} is missing", part.display()),
            });
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_agent_is_refused() {
        // A minimal ELF64 header with one PT_INTERP program header.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64] = 3;
        let err = check_static(&elf, Path::new("agent")).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        elf[64] = 1;
        check_static(&elf, Path::new("agent")).unwrap();
        assert!(check_static(b"#!/bin/sh", Path::new("agent")).is_err());
    }
}
