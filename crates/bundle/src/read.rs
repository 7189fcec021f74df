//! Reading uploads: zip, tar.gz, directories.

use std::io::{Cursor, Read};
use std::path::Path;

use crate::canonical::{clean_path, Builder};
use crate::{Bundle, BundleError, Limits};

/// Reads at most `room` bytes; more means the limit is passed.
fn read_bounded(
    mut r: impl Read,
    room: u64,
    name: &str,
    limits: Limits,
) -> Result<Vec<u8>, BundleError> {
    let mut data = Vec::new();
    r.by_ref()
        .take(room.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| BundleError::Corrupt(format!("entry {name:?}: {e}")))?;
    if data.len() as u64 > room {
        return Err(BundleError::TooLarge(format!(
            "more than {} bytes once expanded (at entry {name:?})",
            limits.max_expanded
        )));
    }
    Ok(data)
}

/// Checks and normalizes an uploaded archive (zip or tar.gz, told apart by their magic bytes).
pub fn from_archive(bytes: &[u8], limits: Limits) -> Result<Bundle, BundleError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        from_zip(bytes, limits)
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        from_tar_gz(bytes, limits)
    } else {
        Err(BundleError::UnknownFormat)
    }
}

fn from_zip(bytes: &[u8], limits: Limits) -> Result<Bundle, BundleError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| BundleError::Corrupt(e.to_string()))?;
    if zip.len() > limits.max_files.saturating_mul(2) {
        return Err(BundleError::TooLarge(format!("{} entries", zip.len())));
    }
    let mut b = Builder::new(limits);
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .map_err(|e| BundleError::Corrupt(e.to_string()))?;
        let name = entry.name().to_owned();
        let unsafe_entry = |why| BundleError::UnsafeEntry {
            entry: name.clone(),
            why,
        };
        let mode = entry.unix_mode().unwrap_or(0o644);
        if entry.is_symlink() {
            return Err(unsafe_entry("symbolic link"));
        }
        match mode & 0o170_000 {
            0o120_000 => return Err(unsafe_entry("symbolic link")),
            0o020_000 | 0o060_000 => return Err(unsafe_entry("device file")),
            0o010_000 => return Err(unsafe_entry("FIFO")),
            0o140_000 => return Err(unsafe_entry("socket")),
            _ => {}
        }
        let Some(path) = clean_path(&name)? else {
            continue;
        };
        if entry.is_dir() {
            continue;
        }
        let claimed = entry.size();
        let compressed = entry.compressed_size().max(1);
        if claimed / compressed > limits.max_ratio {
            return Err(BundleError::TooLarge(format!(
                "entry {name:?} expands {}x (limit {}x): refused as an archive bomb",
                claimed / compressed,
                limits.max_ratio
            )));
        }
        let room = b.room();
        let data = read_bounded(entry, room, &name, b.limits())?;
        if data.len() as u64 / compressed > limits.max_ratio {
            return Err(BundleError::TooLarge(format!(
                "entry {name:?}: refused as an archive bomb"
            )));
        }
        b.add(path, mode & 0o111 != 0, data)?;
    }
    b.finish()
}

fn from_tar_gz(bytes: &[u8], limits: Limits) -> Result<Bundle, BundleError> {
    let gz = flate2::read::GzDecoder::new(bytes);
    // The whole decompressed stream is bounded too: tar headers and padding count against it.
    let bounded = gz.take(
        limits
            .max_expanded
            .saturating_mul(2)
            .saturating_add(1024 * 1024),
    );
    let mut archive = tar::Archive::new(bounded);
    let mut b = Builder::new(limits);
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Corrupt(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| BundleError::Corrupt(e.to_string()))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |why| BundleError::UnsafeEntry {
            entry: name.clone(),
            why,
        };
        let kind = entry.header().entry_type();
        let path = clean_path(&name)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Directory => continue,
            tar::EntryType::Symlink => return Err(unsafe_entry("symbolic link")),
            tar::EntryType::Link => return Err(unsafe_entry("hard link")),
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry("device file"))
            }
            tar::EntryType::Fifo => return Err(unsafe_entry("FIFO")),
            // pax and GNU long-name headers are consumed by the tar reader itself.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            _ => return Err(unsafe_entry("unsupported entry type")),
        }
        let Some(path) = path else { continue };
        let mode = entry.header().mode().unwrap_or(0o644);
        let room = b.room();
        let data = read_bounded(entry, room, &name, b.limits())?;
        b.add(path, mode & 0o111 != 0, data)?;
    }
    b.finish()
}

/// Reads a directory tree (the CLI's `--code DIR`). Symlinks and special files are refused.
pub fn from_dir(root: &Path, limits: Limits) -> Result<Bundle, BundleError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| BundleError::Io { path, source }
    };
    let mut b = Builder::new(limits);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let meta = entry.path().symlink_metadata().map_err(io(&path))?;
            let rel = path
                .strip_prefix(root)
                .map_err(|_| {
                    BundleError::Corrupt(format!("{} is outside the bundle", path.display()))
                })?
                .to_string_lossy()
                .into_owned();
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let Some(clean) = clean_path(&rel)? else {
                    continue;
                };
                let file = std::fs::File::open(&path).map_err(io(&path))?;
                let data = read_bounded(file, b.room(), &rel, b.limits())?;
                b.add(clean, meta.permissions().mode() & 0o111 != 0, data)?;
            } else {
                let why = if ft.is_symlink() {
                    "symbolic link"
                } else {
                    "special file"
                };
                return Err(BundleError::UnsafeEntry { entry: rel, why });
            }
        }
    }
    b.finish()
}
