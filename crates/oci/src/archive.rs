//! Images from archives, for hosts without a registry: an OCI image layout in a tar
//! (`skopeo copy ... oci-archive:`, `docker save` of Docker 25 and later) or the older
//! `docker save` format (`manifest.json` with layer tars).
//!
//! The archive is unpacked (regular files only, no path leaving the scratch directory, bytes
//! bounded) and then read as the registry's blobs are: every blob is checked against its
//! digest; for the older format, which names layers by file, each layer is checked against the
//! configuration's `rootfs.diff_ids`, and the image is known by its configuration's digest.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::{is_sha256_digest, run_config, sha256_hex, FetchedImage, ImageError};

/// How an index or a manifest may be nested before the archive is refused.
const MAX_NESTING: usize = 4;

/// Reads the image in the archive at `archive`, unpacking it under `scratch` (which the caller
/// removes), refusing more than `max_bytes` of content. `shown` names the archive in errors.
pub fn read(
    archive: &Path,
    scratch: &Path,
    max_bytes: u64,
    shown: &str,
) -> Result<FetchedImage, ImageError> {
    let file = std::fs::File::open(archive).map_err(ImageError::io(format!("open {shown}")))?;
    unpack(file, scratch, max_bytes, shown)?;
    if scratch.join("index.json").is_file() {
        read_layout(scratch, shown)
    } else if scratch.join("manifest.json").is_file() {
        read_docker(scratch, shown)
    } else {
        Err(ImageError::Malformed(format!(
            "{shown} is neither an OCI image layout (index.json) nor `docker save` output (manifest.json)"
        )))
    }
}

fn unpack(file: impl Read, into: &Path, max_bytes: u64, shown: &str) -> Result<(), ImageError> {
    let bad = |d: String| ImageError::Malformed(format!("{shown}: {d}"));
    let mut archive = tar::Archive::new(file);
    let mut total = 0u64;
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue; // directories are implied; links and devices have no place in a layout
        }
        let path = entry
            .path()
            .map_err(|e| bad(format!("an entry's name: {e}")))?
            .into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::CurDir => {}
                _ => {
                    return Err(bad(format!(
                        "entry {:?} leaves the archive",
                        path.display()
                    )))
                }
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(ImageError::TooLarge {
                reference: shown.to_owned(),
                limit_mib: max_bytes >> 20,
            });
        }
        let dest = into.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(ImageError::io(format!("unpack {shown}")))?;
        }
        let mut out =
            std::fs::File::create(&dest).map_err(ImageError::io(format!("unpack {shown}")))?;
        std::io::copy(&mut entry, &mut out)
            .map_err(|e| bad(format!("reading {}: {e}", rel.display())))?;
    }
    Ok(())
}

/// The blob `digest` of an OCI layout, its bytes checked against it.
fn layout_blob(root: &Path, digest: &str, shown: &str) -> Result<(PathBuf, Vec<u8>), ImageError> {
    if !is_sha256_digest(digest) {
        return Err(ImageError::Malformed(format!(
            "{shown}: {digest:?} is not a sha256 digest"
        )));
    }
    let path = root.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let bytes = std::fs::read(&path)
        .map_err(|_| ImageError::Malformed(format!("{shown}: blob {digest} is missing")))?;
    check(digest, &bytes)?;
    Ok((path, bytes))
}

fn check(digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let actual = format!("sha256:{}", sha256_hex(bytes));
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(())
}

fn read_layout(root: &Path, shown: &str) -> Result<FetchedImage, ImageError> {
    let bytes = std::fs::read(root.join("index.json"))
        .map_err(ImageError::io(format!("read {shown}'s index.json")))?;
    let mut index: ImageIndex = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Malformed(format!("{shown}'s index.json: {e}")))?;
    for _ in 0..MAX_NESTING {
        let pick = pick_manifest(&index, shown)?;
        let (digest, media) = (pick.digest().to_string(), pick.media_type().clone());
        let (_, blob) = layout_blob(root, &digest, shown)?;
        if media == MediaType::ImageIndex || media.to_string().contains("manifest.list") {
            index = serde_json::from_slice(&blob)
                .map_err(|e| ImageError::Malformed(format!("{shown}: index {digest}: {e}")))?;
            continue;
        }
        let manifest: ImageManifest = serde_json::from_slice(&blob)
            .map_err(|e| ImageError::Malformed(format!("{shown}: manifest {digest}: {e}")))?;
        let (_, config) = layout_blob(root, manifest.config().digest().as_ref(), shown)?;
        let config = run_config(shown, &config)?;
        let mut layers = Vec::new();
        for l in manifest.layers() {
            layers.push(layout_blob(root, l.digest().as_ref(), shown)?.0);
        }
        return Ok(FetchedImage {
            digest,
            config,
            layers,
        });
    }
    Err(ImageError::Malformed(format!(
        "{shown}: indexes nested too deep"
    )))
}

/// The index's `linux/amd64` entry, or its only entry when that says no platform.
fn pick_manifest<'a>(
    index: &'a ImageIndex,
    shown: &str,
) -> Result<&'a oci_spec::image::Descriptor, ImageError> {
    let m = index.manifests();
    if let Some(d) = m.iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
        })
    }) {
        return Ok(d);
    }
    match m.as_slice() {
        [only] if only.platform().is_none() => Ok(only),
        [] => Err(ImageError::Malformed(format!(
            "{shown}: the index lists no image"
        ))),
        _ => Err(ImageError::NoPlatform {
            reference: shown.to_owned(),
            detail: String::new(),
        }),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

fn read_docker(root: &Path, shown: &str) -> Result<FetchedImage, ImageError> {
    let bytes = std::fs::read(root.join("manifest.json"))
        .map_err(ImageError::io(format!("read {shown}'s manifest.json")))?;
    let manifests: Vec<DockerManifest> = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Malformed(format!("{shown}'s manifest.json: {e}")))?;
    let [m] = manifests.as_slice() else {
        return Err(ImageError::Malformed(format!(
            "{shown} holds {} images; save one image per archive",
            manifests.len()
        )));
    };
    let file = |name: &str| -> Result<PathBuf, ImageError> {
        let p = Path::new(name);
        if p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(ImageError::Malformed(format!(
                "{shown}: {name:?} leaves the archive"
            )));
        }
        Ok(root.join(p))
    };
    let config_bytes = std::fs::read(file(&m.config)?)
        .map_err(|_| ImageError::Malformed(format!("{shown}: {} is missing", m.config)))?;
    let digest = format!("sha256:{}", sha256_hex(&config_bytes));
    let config = run_config(shown, &config_bytes)?;
    let diff_ids: DiffIds = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImageError::Malformed(format!("{shown}: {}: {e}", m.config)))?;
    if diff_ids.rootfs.diff_ids.len() != m.layers.len() {
        return Err(ImageError::Malformed(format!(
            "{shown}: {} layers but the configuration lists {}",
            m.layers.len(),
            diff_ids.rootfs.diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (name, diff_id) in m.layers.iter().zip(&diff_ids.rootfs.diff_ids) {
        let path = file(name)?;
        // diff_ids name the uncompressed tar.
        let actual = uncompressed_digest(&path)
            .map_err(|e| ImageError::Malformed(format!("{shown}: {name}: {e}")))?;
        if &actual != diff_id {
            return Err(ImageError::DigestMismatch {
                expected: diff_id.clone(),
                actual,
            });
        }
        layers.push(path);
    }
    Ok(FetchedImage {
        digest,
        config,
        layers,
    })
}

/// `sha256:<hex>` of the file's bytes, decompressed first when they are gzip or zstd.
fn uncompressed_digest(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut reader = crate::layers::decompressed(file)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[derive(Deserialize)]
struct DiffIds {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}
