//! Code bundles: what a user uploads, checked and turned into one canonical form.
//!
//! Uploads arrive as a zip, a gzip-compressed tar, or (from the CLI) a directory. Each is read
//! entry by entry under [`Limits`] that are enforced on the bytes actually expanded, never on sizes
//! an archive claims, so an archive bomb stops at the limit without being expanded. Entries that
//! could escape the function's directory or smuggle in something other than data are refused with
//! the entry's name: `..` components, absolute paths, symlinks, hard links, devices and FIFOs.
//!
//! The canonical form is an uncompressed tar of regular files in path order, with mode 0644 or
//! 0755, owner 0 and time 0: the same code always gives the same bytes, hence the same hash.

mod canonical;
mod read;

pub use canonical::Bundle;
pub use read::{from_archive, from_dir};

/// How much a bundle may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of all files once expanded.
    pub max_expanded: u64,
    /// Number of files.
    pub max_files: usize,
    /// Largest expanded/compressed ratio of a zip entry (compressed bombs expand by 1000x).
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Lambda's, for a function's code and its layers together.
            max_expanded: 262_144_000,
            max_files: 10_000,
            max_ratio: 200,
        }
    }
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bytes are neither a zip nor a gzip-compressed tar.
    #[error("the code is not a zip or tar.gz archive")]
    UnknownFormat,
    /// The archive is damaged.
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    /// An entry's path is unsafe.
    #[error("entry {entry:?} is refused: {why}")]
    UnsafeEntry {
        /// The entry's name as in the archive.
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The bundle expands past a limit.
    #[error("bundle too large: {0}")]
    TooLarge(String),
    /// The bundle has no files.
    #[error("the bundle is empty")]
    Empty,
    /// Reading a directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}
