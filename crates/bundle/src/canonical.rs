//! The canonical bundle and its builder.

use std::collections::BTreeMap;

use crate::{BundleError, Limits};

/// A checked bundle in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    files: BTreeMap<String, (bool, Vec<u8>)>,
    tar: Vec<u8>,
}

impl Bundle {
    /// The canonical tar.
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    /// Consumes the bundle, returning the canonical tar.
    pub fn into_tar(self) -> Vec<u8> {
        self.tar
    }

    /// Whether a regular file with this path is in the bundle.
    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    /// Whether the file exists and is executable.
    pub fn is_executable(&self, path: &str) -> bool {
        self.files.get(path).is_some_and(|(x, _)| *x)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the bundle has no files (never true for a built bundle).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Checks a path from an archive and returns its normal form (`a/b/c`).
pub(crate) fn clean_path(raw: &str) -> Result<Option<String>, BundleError> {
    let unsafe_entry = |why| BundleError::UnsafeEntry {
        entry: raw.to_owned(),
        why,
    };
    if raw.starts_with('/') || raw.starts_with('\\') {
        return Err(unsafe_entry("absolute path"));
    }
    if raw.contains('\0') {
        return Err(unsafe_entry("NUL byte in the name"));
    }
    let mut parts = Vec::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_entry("path contains `..`")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let path = parts.join("/");
    if path.len() > 1024 {
        return Err(unsafe_entry("path longer than 1024 bytes"));
    }
    Ok(Some(path))
}

/// Collects files under the limits, then writes the canonical tar.
#[derive(Debug)]
pub(crate) struct Builder {
    limits: Limits,
    total: u64,
    files: BTreeMap<String, (bool, Vec<u8>)>,
}

impl Builder {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            total: 0,
            files: BTreeMap::new(),
        }
    }

    /// Bytes that may still be expanded.
    pub(crate) fn room(&self) -> u64 {
        self.limits.max_expanded.saturating_sub(self.total)
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn add(
        &mut self,
        path: String,
        executable: bool,
        data: Vec<u8>,
    ) -> Result<(), BundleError> {
        self.total += data.len() as u64;
        if self.total > self.limits.max_expanded {
            return Err(BundleError::TooLarge(format!(
                "more than {} bytes once expanded (at entry {path:?})",
                self.limits.max_expanded
            )));
        }
        if self.files.len() >= self.limits.max_files {
            return Err(BundleError::TooLarge(format!(
                "more than {} files",
                self.limits.max_files
            )));
        }
        if self
            .files
            .insert(path.clone(), (executable, data))
            .is_some()
        {
            return Err(BundleError::UnsafeEntry {
                entry: path,
                why: "duplicate entry",
            });
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Bundle, BundleError> {
        if self.files.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut tar = tar::Builder::new(Vec::new());
        for (path, (exec, data)) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(if *exec { 0o755 } else { 0o644 });
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, path, &data[..])
                .map_err(|e| BundleError::Corrupt(format!("writing {path}: {e}")))?;
        }
        let tar = tar
            .into_inner()
            .map_err(|e| BundleError::Corrupt(format!("finishing tar: {e}")))?;
        Ok(Bundle {
            files: self.files,
            tar,
        })
    }
}
