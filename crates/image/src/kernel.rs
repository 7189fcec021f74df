//! The guest kernel: Debian's cloud kernel, unpacked from its package into the cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run_tool, ImageError};

/// The meta-package that always depends on the current cloud kernel.
const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    /// `PACKAGE_VERSION`, the cache key.
    pub(crate) key: String,
    pub(crate) release: String,
    pub(crate) vmlinuz: PathBuf,
    /// `lib/modules/<release>/kernel`.
    pub(crate) modules: PathBuf,
}

fn apt_field(package: &str, field: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{field}: ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_owned())
}

/// The concrete kernel package and its version that the meta-package points at, from the local
/// package lists (no network).
fn resolve() -> Option<(String, String)> {
    let depends = apt_field(META_PACKAGE, "Depends")?;
    let package = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|p| p.starts_with("linux-image-"))?
        .to_owned();
    let version = apt_field(&package, "Version")?;
    Some((package, version))
}

fn load(dir: &Path, key: &str) -> Result<Kernel, ImageError> {
    let boot = dir.join("root/boot");
    let entries =
        fs::read_dir(&boot).map_err(ImageError::io(format!("read {}", boot.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            let modules = dir.join("root/lib/modules").join(release).join("kernel");
            return Ok(Kernel {
                key: key.to_owned(),
                release: release.to_owned(),
                vmlinuz: e.path(),
                modules,
            });
        }
    }
    Err(ImageError::Missing(format!(
        "no vmlinuz in {}",
        boot.display()
    )))
}

/// The newest kernel already unpacked in the cache, if any.
fn newest_cached(root: &Path) -> Option<(PathBuf, String)> {
    let mut best: Option<(std::time::SystemTime, PathBuf, String)> = None;
    for e in fs::read_dir(root).ok()?.flatten() {
        if !e.path().join("ready").exists() {
            continue;
        }
        let t = e.metadata().and_then(|m| m.modified()).ok()?;
        if best.as_ref().is_none_or(|(bt, _, _)| t > *bt) {
            best = Some((t, e.path(), e.file_name().to_string_lossy().into_owned()));
        }
    }
    best.map(|(_, p, k)| (p, k))
}

/// Makes sure the current cloud kernel is unpacked in `cache/kernel`.
pub(crate) fn ensure(cache: &Path) -> Result<Kernel, ImageError> {
    let root = cache.join("kernel");
    fs::create_dir_all(&root).map_err(ImageError::io(format!("mkdir {}", root.display())))?;
    let Some((package, version)) = resolve() else {
        // Without package lists, a kernel unpacked earlier is still the right one to use.
        if let Some((dir, key)) = newest_cached(&root) {
            return load(&dir, &key);
        }
        return Err(ImageError::Missing(format!(
            "cannot resolve {META_PACKAGE}: run `apt-get update` so the package lists know it"
        )));
    };
    let key = format!("{package}_{version}");
    let dir = root.join(&key);
    if dir.join("ready").exists() {
        return load(&dir, &key);
    }
    tracing::info!(%package, %version, "fetching the guest kernel");
    let tmp = root.join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(ImageError::io(format!("mkdir {}", tmp.display())))?;
    run_tool(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&tmp),
    )?;
    let deb = fs::read_dir(&tmp)
        .map_err(ImageError::io("list downloaded kernel"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| ImageError::Missing(format!("apt-get download {package} left no .deb")))?;
    run_tool(
        Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(tmp.join("root")),
    )?;
    fs::remove_file(&deb).map_err(ImageError::io("remove kernel .deb"))?;
    fs::write(tmp.join("ready"), &key).map_err(ImageError::io("mark kernel ready"))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(ImageError::io(format!("rename to {}", dir.display())))?;
    load(&dir, &key)
}
