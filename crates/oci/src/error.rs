//! Why an image could not be had.

/// Why an image could not be fetched, read or flattened. Every variant is the caller's to
/// report at deploy time; none leaves anything in the cache.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("image reference {reference:?} is not valid: {detail}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The registry has no such repository, tag or digest.
    #[error("image {0} does not exist")]
    NotFound(String),
    /// The registry refused the request (authentication, authorization, or an error of its own).
    #[error("the registry refused {reference}: {detail}")]
    Refused {
        /// The image.
        reference: String,
        /// The registry's answer.
        detail: String,
    },
    /// The registry could not be reached, or did not answer in time.
    #[error("the registry for {reference} is unreachable: {detail}")]
    Unreachable {
        /// The image.
        reference: String,
        /// What failed.
        detail: String,
    },
    /// A blob's bytes do not hash to the digest that names it.
    #[error("blob {expected} does not match its digest (the bytes hash to {actual})")]
    DigestMismatch {
        /// The digest the blob was asked for by.
        expected: String,
        /// What its bytes hash to.
        actual: String,
    },
    /// No manifest for `linux/amd64`: an index without one, or an image for another platform.
    #[error("image {reference} has no linux/amd64 variant{detail}")]
    NoPlatform {
        /// The image.
        reference: String,
        /// What it has instead, when known (`: it is for linux/arm64`).
        detail: String,
    },
    /// The image, compressed or unpacked, is larger than the node accepts.
    #[error("image {reference} is larger than the node's limit of {limit_mib} MiB")]
    TooLarge {
        /// The image.
        reference: String,
        /// The limit, MiB.
        limit_mib: u64,
    },
    /// A layer holds an entry that cannot be applied safely.
    #[error("layer {layer} is refused: {detail}")]
    BadLayer {
        /// 1-based position of the layer.
        layer: usize,
        /// The entry and what is wrong with it.
        detail: String,
    },
    /// The process the image would run cannot be started: no such file, not executable.
    #[error("the image's entry point: {0}")]
    BadEntryPoint(String),
    /// A manifest, index, configuration or archive is not what the OCI or Docker formats say.
    #[error("{0}")]
    Malformed(String),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// `mkfs.ext4` failed.
    #[error("making the image's filesystem with mkfs.ext4: {0}")]
    Mkfs(String),
}

impl ImageError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Whether the caller's input is at fault (the reference, the image's content, its size),
    /// as opposed to the registry or the node.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidReference { .. }
                | Self::NotFound(_)
                | Self::DigestMismatch { .. }
                | Self::NoPlatform { .. }
                | Self::TooLarge { .. }
                | Self::BadLayer { .. }
                | Self::BadEntryPoint(_)
                | Self::Malformed(_)
        )
    }
}
