//! Which kernel modules the agent loads, and in what order.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::ImageError;

/// The modules the guest needs, by name; their dependencies are added in front of them.
pub(crate) const WANTED: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "virtio-rng",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "overlay",
];

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn index(tree: &Path) -> Result<HashMap<String, PathBuf>, ImageError> {
    let mut found = HashMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(ImageError::io(format!("read {}", dir.display())))?;
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.strip_suffix(".ko") {
                    found.insert(canonical(stem), path);
                }
            }
        }
    }
    Ok(found)
}

/// The `depends=` entry of a module's `.modinfo` section (a NUL-separated list of `key=value`).
fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(canonical)
        .collect()
}

/// The wanted modules and their dependencies, dependencies first: `(file name, contents)`.
pub(crate) fn resolve(tree: &Path) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let idx = index(tree)?;
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    let mut visiting = Vec::new();
    for want in WANTED {
        visit(&canonical(want), &idx, &mut order, &mut visiting)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    idx: &HashMap<String, PathBuf>,
    order: &mut Vec<(String, Vec<u8>)>,
    visiting: &mut Vec<String>,
) -> Result<(), ImageError> {
    let file = format!("{name}.ko");
    if order.iter().any(|(n, _)| *n == file) || visiting.iter().any(|v| v == name) {
        return Ok(());
    }
    let path = idx.get(name).ok_or_else(|| {
        ImageError::Missing(format!(
            "kernel module {name} not found in the kernel package"
        ))
    })?;
    let bytes = fs::read(path).map_err(ImageError::io(format!("read {}", path.display())))?;
    visiting.push(name.to_owned());
    for dep in depends(&bytes) {
        visit(&dep, idx, order, visiting)?;
    }
    visiting.pop();
    order.push((file, bytes));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_reads_the_modinfo_entry() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=x\0";
        assert_eq!(depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"nothing").is_empty());
    }
}
