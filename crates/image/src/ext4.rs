//! Read-only ext4 images made from a directory tree with `mkfs.ext4 -d` (no loop mount, no
//! privileges beyond reading the tree): functions' code drives and container images' root
//! filesystems. Sized to what the tree holds, with no journal and no reserved blocks, since
//! nothing writes to them once made.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Free room kept in each filesystem beyond what its files take, and its smallest size.
pub const SLACK_BYTES: u64 = 4 << 20;
const BLOCK: u64 = 4096;

/// Bytes the tree's files take in whole blocks, and its number of entries (files, links and
/// directories, the root included). Symbolic links are counted, never followed.
pub fn tree_usage(root: &Path) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0u64, 1u64);
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            bytes += m.len().div_ceil(BLOCK).max(1) * BLOCK;
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// A filesystem size for `bytes` of files and `inodes` entries: the data, an inode each, and
/// room for ext4's own tables.
pub fn fs_bytes(bytes: u64, inodes: u64) -> u64 {
    let raw = bytes + bytes / 16 + inodes * 256 + SLACK_BYTES;
    raw.div_ceil(1 << 20) * (1 << 20)
}

/// Makes `image` (replaced if there) holding `tree`, owned as in the tree except its root
/// (root's), labelled `label`. An estimate of ext4's own overhead can fall short for odd
/// trees, so a failed attempt is retried larger, twice.
pub fn make(tree: &Path, image: &Path, label: &str) -> Result<(), String> {
    let (bytes, inodes) = tree_usage(tree);
    let mut size = fs_bytes(bytes, inodes);
    let mut last = String::new();
    for _ in 0..3 {
        let _ = std::fs::remove_file(image);
        match mkfs(tree, image, label, size, inodes) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        size *= 2;
    }
    Err(last)
}

/// The `mkfs.ext4` binary: on `PATH`, or where Debian puts it (`/usr/sbin` is not on every
/// user's `PATH`).
fn mkfs_binary() -> PathBuf {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

fn mkfs(tree: &Path, image: &Path, label: &str, size: u64, inodes: u64) -> Result<(), String> {
    let out = Command::new(mkfs_binary())
        // No journal (never written), no reserved blocks, no room to grow: a read-only image.
        .args(["-q", "-F", "-b", "4096", "-m", "0", "-L", label])
        .args(["-O", "^has_journal,^resize_inode"])
        .args(["-E", "root_owner=0:0"])
        .args(["-N", &(inodes + 16).to_string()])
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("run {}: {e}", mkfs_binary().display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filesystem_has_room_for_what_it_holds() {
        assert!(fs_bytes(0, 1) >= SLACK_BYTES);
        let forty = 40 << 20;
        assert!(fs_bytes(forty, 3) > forty);
    }

    #[test]
    fn a_tree_becomes_an_image_and_a_dangling_link_is_counted_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a")).unwrap();
        std::fs::write(tree.join("a/f"), vec![7u8; 10_000]).unwrap();
        std::os::unix::fs::symlink("/nowhere/at/all", tree.join("link")).unwrap();
        let (bytes, inodes) = tree_usage(&tree);
        assert_eq!(inodes, 4);
        assert!(bytes >= 3 * BLOCK + 8192, "{bytes}");
        let image = dir.path().join("x.img");
        make(&tree, &image, "test").unwrap();
        assert!(std::fs::metadata(&image).unwrap().len() >= SLACK_BYTES);
    }
}
