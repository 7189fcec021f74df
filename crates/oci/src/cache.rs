//! The node's image cache: read-only ext4 images of flattened container images, one per
//! manifest digest, shared by every function that uses the image, within a byte budget.
//!
//! Each image is `<hex>.img` with its [`ImageRunConfig`] beside it in `<hex>.json`; an image is
//! installed by rename, configuration first, so a reader sees either nothing or both. Use
//! refreshes the image's modification time, and the least recently used go first when the
//! cache is over its budget. A VM still running from an evicted image keeps its open file; the
//! next one to need it has it made again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{is_sha256_digest, layers::Tree, FetchedImage, ImageError, ImageRunConfig};

/// An image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    /// Its filesystem image.
    pub path: PathBuf,
    /// How to run it.
    pub config: ImageRunConfig,
    /// Bytes the filesystem image takes on disk.
    pub bytes: u64,
}

/// The node's image cache.
#[derive(Debug)]
pub struct ImageCache {
    dir: PathBuf,
    budget: u64,
    /// The size every image file is extended to (sparsely): a VM's drive keeps the size its
    /// kernel probed at boot, whatever file a restore puts behind it.
    drive_bytes: u64,
}

impl ImageCache {
    /// The cache in `dir`, holding up to `budget` bytes of images, each file extended to
    /// `drive_bytes` (sparse; 0: as made). Scratch left by a process that died mid-build is
    /// removed.
    pub fn new(dir: &Path, budget: u64, drive_bytes: u64) -> Result<Self, ImageError> {
        std::fs::create_dir_all(dir).map_err(ImageError::io(format!("mkdir {}", dir.display())))?;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            budget,
            drive_bytes,
        })
    }

    /// A fresh scratch directory inside the cache (same filesystem, so images install by
    /// rename); the caller removes it.
    pub fn scratch(&self) -> Result<PathBuf, ImageError> {
        let p = self
            .dir
            .join(format!(".scratch-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&p).map_err(ImageError::io(format!("mkdir {}", p.display())))?;
        Ok(p)
    }

    fn paths(&self, digest: &str) -> Option<(PathBuf, PathBuf)> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|_| is_sha256_digest(digest))?;
        Some((
            self.dir.join(format!("{hex}.img")),
            self.dir.join(format!("{hex}.json")),
        ))
    }

    /// The image with manifest `digest`, if cached; marks it used.
    pub fn get(&self, digest: &str) -> Option<CachedImage> {
        let (img, json) = self.paths(digest)?;
        let config: ImageRunConfig = serde_json::from_slice(&std::fs::read(&json).ok()?).ok()?;
        let file = std::fs::File::open(&img).ok()?;
        let bytes = file.metadata().ok()?.blocks() * 512;
        if let Err(e) = file.set_modified(std::time::SystemTime::now()) {
            tracing::debug!(image = %img.display(), error = %e, "marking an image used");
        }
        Some(CachedImage {
            digest: digest.to_owned(),
            path: img,
            config,
            bytes,
        })
    }

    /// Flattens `image` (its layer blobs in `scratch`, a directory from [`Self::scratch`])
    /// into the cache, refusing a root filesystem over `max_bytes`, then evicts what the
    /// budget no longer holds. `reference` names the image in errors.
    pub fn insert(
        &self,
        image: &FetchedImage,
        scratch: &Path,
        max_bytes: u64,
        reference: &str,
    ) -> Result<CachedImage, ImageError> {
        let (img, json) = self.paths(&image.digest).ok_or_else(|| {
            ImageError::Malformed(format!("{:?} is not a sha256 digest", image.digest))
        })?;
        let tree_dir = scratch.join("rootfs");
        // Layers may write more than the result keeps (what a later layer deletes), up to
        // twice the limit; the result itself is held to the limit.
        let mut tree = Tree::new(&tree_dir, max_bytes.saturating_mul(2))?;
        for (i, layer) in image.layers.iter().enumerate() {
            tree.apply(i + 1, layer, reference)?;
        }
        tree.finish()?;
        let (used, _) = ignition_image::ext4::tree_usage(&tree_dir);
        if used > max_bytes {
            return Err(ImageError::TooLarge {
                reference: reference.to_owned(),
                limit_mib: max_bytes >> 20,
            });
        }
        let made = scratch.join("image.img");
        ignition_image::ext4::make(&tree_dir, &made, "image").map_err(ImageError::Mkfs)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&made)
            .map_err(ImageError::io("open the image"))?;
        let len = file
            .metadata()
            .map_err(ImageError::io("stat the image"))?
            .len();
        if len > self.drive_bytes && self.drive_bytes > 0 {
            return Err(ImageError::TooLarge {
                reference: reference.to_owned(),
                limit_mib: self.drive_bytes >> 20,
            });
        }
        file.set_len(len.max(self.drive_bytes))
            .map_err(ImageError::io("size the image"))?;
        file.sync_all().map_err(ImageError::io("sync the image"))?;
        drop(file);
        let config_tmp = scratch.join("config.json");
        let config = serde_json::to_vec(&image.config)
            .map_err(|e| ImageError::Malformed(format!("image configuration: {e}")))?;
        std::fs::write(&config_tmp, config)
            .map_err(ImageError::io("write the image's configuration"))?;
        std::fs::rename(&config_tmp, &json)
            .map_err(ImageError::io("install the image's configuration"))?;
        std::fs::rename(&made, &img).map_err(ImageError::io("install the image"))?;
        let _ = std::fs::remove_dir_all(&tree_dir);
        self.evict(&img);
        self.get(&image.digest).ok_or_else(|| {
            ImageError::Malformed(format!("image {} vanished from the cache", image.digest))
        })
    }

    /// Removes the least recently used images, never `keep`, until the rest fit the budget.
    fn evict(&self, keep: &Path) {
        let mut images: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "img"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.blocks() * 512, e.path()))
            })
            .collect();
        let mut total: u64 = images.iter().map(|(_, len, _)| len).sum();
        images.sort();
        for (_, len, path) in images {
            if total <= self.budget {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(path.with_extension("json"));
                tracing::info!(image = %path.display(), bytes = len, "image evicted from the cache");
                total -= len;
            }
        }
    }

    /// Bytes the cached images take on disk.
    pub fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "img"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image of one layer holding `size` bytes of `fill`, named by `n`.
    fn fetched(dir: &Path, n: u8, size: usize) -> FetchedImage {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_cksum();
        // Varied bytes, so that no filesystem could share or skip them.
        let body: Vec<u8> = (0..size)
            .map(|i| (i as u8).wrapping_mul(n).wrapping_add(n))
            .collect();
        b.append_data(&mut h, "data", &body[..]).unwrap();
        let layer = dir.join(format!("layer-{n}"));
        std::fs::write(&layer, b.into_inner().unwrap()).unwrap();
        FetchedImage {
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            config: ImageRunConfig::default(),
            layers: vec![layer],
        }
    }

    #[test]
    fn the_least_recently_used_image_goes_when_the_budget_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let probe = ImageCache::new(&dir.path().join("probe"), u64::MAX, 0).unwrap();
            let s = probe.scratch().unwrap();
            probe
                .insert(&fetched(dir.path(), 9, 1 << 20), &s, 64 << 20, "probe")
                .unwrap()
                .bytes
        };
        // Room for two images, not three.
        let cache = ImageCache::new(&dir.path().join("cache"), one * 2 + one / 2, 0).unwrap();
        let insert = |n: u8| {
            let s = cache.scratch().unwrap();
            let got = cache
                .insert(&fetched(dir.path(), n, 1 << 20), &s, 64 << 20, "t")
                .unwrap();
            std::fs::remove_dir_all(&s).unwrap();
            got
        };
        let a = insert(1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = insert(2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // `a` is used again: `b` is now the least recently used.
        assert!(cache.get(&a.digest).is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let c = insert(3);
        assert!(
            cache.get(&b.digest).is_none(),
            "the least recently used went"
        );
        assert!(!b.path.exists() && !b.path.with_extension("json").exists());
        assert!(cache.get(&a.digest).is_some() && cache.get(&c.digest).is_some());
        assert!(cache.bytes() <= one * 2 + one / 2);
        // An image larger than the whole budget is still kept while it is the newest.
        let tiny = ImageCache::new(&dir.path().join("tiny"), 1, 0).unwrap();
        let s = tiny.scratch().unwrap();
        let kept = tiny
            .insert(&fetched(dir.path(), 4, 1 << 20), &s, 64 << 20, "t")
            .unwrap();
        assert!(kept.path.exists());
    }

    #[test]
    fn an_image_is_padded_to_the_drive_and_refused_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(&dir.path().join("c"), u64::MAX, 64 << 20).unwrap();
        let s = cache.scratch().unwrap();
        let got = cache
            .insert(&fetched(dir.path(), 5, 1 << 20), &s, 64 << 20, "t")
            .unwrap();
        assert_eq!(std::fs::metadata(&got.path).unwrap().len(), 64 << 20);
        assert!(got.bytes < 64 << 20, "sparse: {}", got.bytes);
        let small = ImageCache::new(&dir.path().join("s"), u64::MAX, 1 << 20).unwrap();
        let s = small.scratch().unwrap();
        let e = small
            .insert(&fetched(dir.path(), 6, 1 << 20), &s, 64 << 20, "t")
            .unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    }
}
