//! Container images as functions' root filesystems.
//!
//! An image comes from a registry (the OCI distribution API; [`Registry`]) or from an archive
//! (an OCI image layout or `docker save` output; [`archive`]). Either way every blob is checked
//! against its digest, the `linux/amd64` manifest is picked from an index, and the layers are
//! applied in order, whiteouts included, into a tree that never reaches outside itself
//! ([`layers`]). The tree becomes a read-only ext4 image in the node's [`ImageCache`], named by
//! the manifest's digest and shared by every function that uses it; the cache keeps a byte
//! budget by evicting the least recently used.
//!
//! Nothing here runs an image: what a VM needs to run one (entry point, command, environment,
//! working directory, user) is its [`ImageRunConfig`].

pub mod archive;
mod cache;
pub mod entry_point;
mod error;
mod images;
pub mod layers;
pub mod layout;
mod registry;
mod run_config;
#[cfg(feature = "test-registry")]
pub mod test_registry;

pub use cache::{CachedImage, ImageCache};
pub use error::ImageError;
pub use ignition_types::ImageRunConfig;
pub use images::{Images, ImagesOptions, Obtained};
pub use registry::{Credentials, Registry, RegistryOptions};
pub use run_config::run_config;

/// An image as fetched, before it is flattened: its manifest's digest, how to run it, and its
/// layers' blobs (compressed or not) in order, in files of a scratch directory.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    /// `sha256:<hex>` of the manifest (for `docker save` output without one, of the image's
    /// configuration: its image id).
    pub digest: String,
    /// How to run it.
    pub config: ImageRunConfig,
    /// The layer blobs, bottom first.
    pub layers: Vec<std::path::PathBuf>,
}

/// Whether `s` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
