//! The node's images: a reference or an archive in, a cached filesystem image out.

use std::path::Path;

use crate::{archive, CachedImage, ImageCache, ImageError, Registry, RegistryOptions};

/// What the node accepts.
#[derive(Debug, Clone)]
pub struct ImagesOptions {
    /// Registries' settings.
    pub registry: RegistryOptions,
    /// The largest image accepted: its blobs, and its unpacked root filesystem.
    pub max_image_bytes: u64,
    /// The cache's budget.
    pub cache_bytes: u64,
    /// The size of the VM drive the images are handed to (0: no padding).
    pub drive_bytes: u64,
}

/// The node's images.
#[derive(Debug)]
pub struct Images {
    cache: std::sync::Arc<ImageCache>,
    registry: Registry,
    max_image_bytes: u64,
}

/// An image the node has, and the reference it was asked for by, pinned to its digest.
#[derive(Debug, Clone)]
pub struct Obtained {
    /// The cached image.
    pub image: CachedImage,
    /// `REPOSITORY@sha256:...` for a registry image; `None` for an archive's.
    pub pinned: Option<String>,
}

impl Images {
    /// The images kept in `dir`.
    pub fn new(dir: &Path, options: ImagesOptions) -> Result<Self, ImageError> {
        Ok(Self {
            cache: std::sync::Arc::new(ImageCache::new(
                dir,
                options.cache_bytes,
                options.drive_bytes,
            )?),
            registry: Registry::new(options.registry),
            max_image_bytes: options.max_image_bytes,
        })
    }

    /// The cache.
    pub fn cache(&self) -> &ImageCache {
        &self.cache
    }

    /// The largest image accepted, bytes.
    pub fn max_image_bytes(&self) -> u64 {
        self.max_image_bytes
    }

    /// The image `reference` names now: its manifest is resolved at the registry (so a moved
    /// tag is seen), its blobs fetched and flattened unless the cache has that digest.
    pub async fn pull(&self, reference: &str) -> Result<Obtained, ImageError> {
        let parsed = Registry::parse(reference)?;
        let resolved = self.registry.resolve(&parsed).await?;
        let pinned = Some(resolved.pinned.whole());
        if let Some(image) = self.cache.get(&resolved.digest) {
            return Ok(Obtained { image, pinned });
        }
        let scratch = Scratch(self.cache.scratch()?);
        let scratch = &scratch.0;
        let result = async {
            let fetched = self
                .registry
                .fetch(&resolved, scratch, self.max_image_bytes)
                .await?;
            let (cache, scratch2, max) = (
                std::sync::Arc::clone(&self.cache),
                scratch.clone(),
                self.max_image_bytes,
            );
            let shown = reference.to_owned();
            // Flattening and mkfs are blocking file work.
            tokio::task::spawn_blocking(move || cache.insert(&fetched, &scratch2, max, &shown))
                .await
                .map_err(|e| ImageError::Mkfs(format!("the flattening task: {e}")))?
        }
        .await;
        Ok(Obtained {
            image: result?,
            pinned,
        })
    }

    /// The image in the archive at `path`. `shown` names it in errors.
    pub fn from_archive(&self, path: &Path, shown: &str) -> Result<Obtained, ImageError> {
        let scratch = self.cache.scratch()?;
        let result = (|| {
            let fetched =
                archive::read(path, &scratch.join("archive"), self.max_image_bytes, shown)?;
            if let Some(image) = self.cache.get(&fetched.digest) {
                return Ok(image);
            }
            self.cache
                .insert(&fetched, &scratch, self.max_image_bytes, shown)
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(Obtained {
            image: result?,
            pinned: None,
        })
    }
}

/// A scratch directory, removed when dropped (also when a pull is cancelled midway).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
