//! Functions' code as read-only filesystem images: one per code hash and list of layers,
//! built once from the function's tar (under `task/`) and its layers' tars (unpacked in order
//! under `opt/`, later over earlier) with `mkfs.ext4 -d`, and handed to every VM of every
//! function with that code as its code drive; the guest binds `task/` at `/var/task` and
//! `opt/` at `/opt`. The host's page cache holds what the guests read of it, once, however
//! many VMs share it; inside a guest it is page cache too, which the kernel drops under memory
//! pressure, so a bundle of any accepted size runs at any memory size.
//!
//! Every image is extended (sparsely) to [`DRIVE_BYTES`], the placeholder too: the base
//! snapshot's kernel learned the drive's size when it probed it, and a restore with another file
//! must not change it. The filesystem inside is only as large as the code needs.
//!
//! Images live in the snapshot directory's `.code/` and count against its disk budget (the
//! snapshot store evicts least recently used images too); one evicted under a snapshot that
//! needs it is built again from the tar before the restore.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ignition_proto::{Code, FunctionSpec};
use tokio::sync::Mutex as AsyncMutex;

/// The size of every code drive as the guest sees it (sparse: an image takes on disk only what
/// its filesystem wrote).
pub const DRIVE_BYTES: u64 = 4 << 30;
/// The placeholder's file name; no code hash can take it (hashes are hex).
const PLACEHOLDER: &str = "placeholder.img";

/// Why a code image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CodeImageError {
    /// A file operation failed.
    #[error("code image {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// `mkfs.ext4` could not be run or failed.
    #[error("building the code image with mkfs.ext4: {0}")]
    Mkfs(String),
    /// The code's hash is not a SHA-256 in hex (it names a file).
    #[error("code hash {0:?} is not a hex SHA-256")]
    BadHash(String),
    /// The image is gone and the host holds no tar to build it from.
    #[error("the code image for {0} is missing and no code is at hand to build it")]
    NoCode(String),
    /// The node's code source failed, or sent other bytes than the hash names.
    #[error("reading code bundle {0}: {1}")]
    Source(String, String),
    /// The container image's filesystem could not be had.
    #[error("container image sha256:{0}: {1}")]
    Image(String, String),
}

/// One layer of a function's code, as a job carries it: its bundle's hash, and the bundle
/// itself where the node's store may not have it (an invocation stolen from another node).
#[derive(Clone)]
pub struct LayerCode {
    /// SHA-256 of the layer's canonical tar, hex.
    pub sha256: String,
    /// The tar, when the job brings it.
    pub tar: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for LayerCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerCode")
            .field("sha256", &self.sha256)
            .field("tar_bytes", &self.tar.as_ref().map(|t| t.len()))
            .finish()
    }
}

/// The name of the image of `code` with `layers`: a digest of all their hashes, in order.
fn image_name(code: &str, layers: &[LayerCode]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"ignition code drive: task/ and opt/\n");
    h.update(code.to_ascii_lowercase().as_bytes());
    for l in layers {
        h.update(b"\n");
        h.update(l.sha256.to_ascii_lowercase().as_bytes());
    }
    format!("{}.img", hex::encode(h.finalize()))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where the node keeps code bundles (its store): read when an image must be built for a job
/// whose spec carries no tar, which is every local invocation's (the invoke path reads no code).
/// And where it keeps container images' filesystems, which it makes itself.
pub trait CodeSource: Send + Sync + std::fmt::Debug {
    /// The canonical tar of the bundle `sha256`, if the node has it. Called on a blocking
    /// thread.
    fn bundle(&self, sha256: &str) -> Result<Option<Vec<u8>>, String>;

    /// The filesystem image (a file of [`DRIVE_BYTES`]) of the container image whose manifest
    /// digest is `sha256:<digest_hex>`, fetched again if the node's cache let it go; `None`
    /// when the node knows no such image. Called on a blocking thread inside the runtime.
    fn image_drive(&self, digest_hex: &str) -> Result<Option<PathBuf>, String> {
        let _ = digest_hex;
        Ok(None)
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CodeImageError {
    let what = what.into();
    move |source| CodeImageError::Io { what, source }
}

/// The code images of one node.
#[derive(Debug)]
pub(crate) struct CodeImages {
    dir: PathBuf,
    source: Option<Arc<dyn CodeSource>>,
    built: std::sync::atomic::AtomicU64,
    /// One build per code hash at a time.
    building: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl CodeImages {
    pub(crate) fn new(dir: PathBuf, source: Option<Arc<dyn CodeSource>>) -> Self {
        // Images of the layout before layers (the code at the drive's root), which no guest
        // of this version mounts.
        if let Some(old) = dir.parent().map(|p| p.join(".code")) {
            if old != dir {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        // Scratch an earlier process left when it died mid-build.
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        Self {
            dir,
            source,
            built: Default::default(),
            building: Mutex::new(HashMap::new()),
        }
    }

    /// The directory the images are kept in.
    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Images built since start.
    pub(crate) fn built(&self) -> u64 {
        self.built.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The image for a VM that has no function yet: zeros, of the drive's size.
    pub(crate) fn placeholder(&self) -> Result<PathBuf, CodeImageError> {
        let path = self.dir.join(PLACEHOLDER);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == DRIVE_BYTES) {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir).map_err(io(format!("mkdir {}", self.dir.display())))?;
        // Two VMs' first starts may make it at once: each writes its own, one rename wins.
        let tmp = self
            .dir
            .join(format!(".{PLACEHOLDER}-{}", uuid::Uuid::new_v4().simple()));
        let f = std::fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        f.set_len(DRIVE_BYTES)
            .map_err(io(format!("size {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("install {}", path.display())))?;
        Ok(path)
    }

    /// The image of `function`'s code (its tar hashes to `sha256`) with `layers`, built if it
    /// is not on disk (then `true` comes with it). Marks it used (its modification time orders
    /// eviction).
    pub(crate) async fn ensure(
        &self,
        sha256: &str,
        layers: &[LayerCode],
        function: &Arc<FunctionSpec>,
    ) -> Result<(PathBuf, bool), CodeImageError> {
        if let Some(bad) = std::iter::once(sha256)
            .chain(layers.iter().map(|l| l.sha256.as_str()))
            .find(|h| !is_sha256(h))
        {
            return Err(CodeImageError::BadHash(bad.to_owned()));
        }
        if function.image.is_some() {
            return self.image_drive(sha256).await.map(|p| (p, false));
        }
        let name = image_name(sha256, layers);
        let path = self.dir.join(&name);
        if mark_used(&path) {
            return Ok((path, false));
        }
        let lock = {
            let mut b = self.building.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(b.entry(name).or_default())
        };
        let _held = lock.lock().await;
        if mark_used(&path) {
            return Ok((path, false));
        }
        let (dir, target, spec) = (self.dir.clone(), path.clone(), Arc::clone(function));
        let (hash, layers, source) = (sha256.to_owned(), layers.to_vec(), self.source.clone());
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            let fetch = |hash: &str| -> Result<Vec<u8>, CodeImageError> {
                let source = source
                    .as_ref()
                    .ok_or_else(|| CodeImageError::NoCode(hash.to_owned()))?;
                let tar = source
                    .bundle(hash)
                    .map_err(|e| CodeImageError::Source(hash.to_owned(), e))?
                    .ok_or_else(|| CodeImageError::NoCode(hash.to_owned()))?;
                if sha256_hex(&tar) != hash.to_ascii_lowercase() {
                    return Err(CodeImageError::Source(
                        hash.to_owned(),
                        "the bytes do not hash to it".to_owned(),
                    ));
                }
                Ok(tar)
            };
            let code = match &spec.code {
                Code::Tar(tar) => std::borrow::Cow::Borrowed(&tar[..]),
                Code::Drive => std::borrow::Cow::Owned(fetch(&hash)?),
            };
            let mut layer_tars = Vec::with_capacity(layers.len());
            for l in &layers {
                layer_tars.push(match &l.tar {
                    Some(tar) if sha256_hex(tar) == l.sha256.to_ascii_lowercase() => {
                        std::borrow::Cow::Borrowed(&tar[..])
                    }
                    Some(_) => {
                        return Err(CodeImageError::Source(
                            l.sha256.clone(),
                            "the bytes do not hash to it".to_owned(),
                        ))
                    }
                    None => std::borrow::Cow::Owned(fetch(&l.sha256)?),
                });
            }
            build(&dir, &target, &code, &layer_tars)
        })
        .await
        .map_err(|e| CodeImageError::Mkfs(format!("build task: {e}")))??;
        self.built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(code = %sha256, ms = started.elapsed().as_millis() as u64, "code image built");
        Ok((path, true))
    }
}

impl CodeImages {
    /// The filesystem of the container image `digest_hex` (the node's image cache counts it
    /// against its own budget, not the snapshots').
    async fn image_drive(&self, digest_hex: &str) -> Result<PathBuf, CodeImageError> {
        let source = self
            .source
            .clone()
            .ok_or_else(|| CodeImageError::NoCode(digest_hex.to_owned()))?;
        let digest = digest_hex.to_owned();
        tokio::task::spawn_blocking(move || source.image_drive(&digest))
            .await
            .map_err(|e| CodeImageError::Image(digest_hex.to_owned(), e.to_string()))?
            .map_err(|e| CodeImageError::Image(digest_hex.to_owned(), e))?
            .ok_or_else(|| CodeImageError::NoCode(digest_hex.to_owned()))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Touches `path` if it exists; whether it does.
fn mark_used(path: &Path) -> bool {
    match std::fs::File::open(path) {
        Ok(f) => {
            if let Err(e) = f.set_modified(std::time::SystemTime::now()) {
                tracing::debug!(image = %path.display(), error = %e, "marking a code image used");
            }
            true
        }
        Err(_) => false,
    }
}

/// Unpacks `tar` under `task/` and each of `layers` in turn under `opt/` of a scratch tree,
/// and makes `target` from it.
fn build(
    dir: &Path,
    target: &Path,
    tar: &[u8],
    layers: &[std::borrow::Cow<'_, [u8]>],
) -> Result<(), CodeImageError> {
    std::fs::create_dir_all(dir).map_err(io(format!("mkdir {}", dir.display())))?;
    let scratch = tempfile_dir(dir)?;
    let result = (|| {
        let tree = scratch.join("tree");
        for d in ["task", "opt"] {
            std::fs::create_dir_all(tree.join(d)).map_err(io(format!("mkdir {d}")))?;
        }
        unpack(tar, &tree.join("task")).map_err(io("unpack the function's code"))?;
        for (i, layer) in layers.iter().enumerate() {
            unpack(layer, &tree.join("opt")).map_err(io(format!("unpack layer {}", i + 1)))?;
        }
        let image = scratch.join("image");
        ignition_image::ext4::make(&tree, &image, "code").map_err(CodeImageError::Mkfs)?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .map_err(io("open the image"))?;
        f.set_len(DRIVE_BYTES).map_err(io("size the image"))?;
        f.sync_all().map_err(io("sync the image"))?;
        std::fs::rename(&image, target).map_err(io(format!("install {}", target.display())))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Unpacks a canonical tar (regular files and directories only) into `into`, over what is
/// there.
fn unpack(tar: &[u8], into: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.unpack(into)
}

/// A fresh scratch directory in `dir`.
fn tempfile_dir(dir: &Path) -> Result<PathBuf, CodeImageError> {
    let p = dir.join(format!(".build-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&p).map_err(io(format!("mkdir {}", p.display())))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn hash(tar: &[u8]) -> String {
        sha256_hex(tar)
    }

    /// A store holding one bundle, counting its reads.
    #[derive(Debug)]
    struct OneBundle(Vec<u8>, std::sync::atomic::AtomicUsize);

    impl CodeSource for OneBundle {
        fn bundle(&self, sha256: &str) -> Result<Option<Vec<u8>>, String> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok((sha256 == hash(&self.0)).then(|| self.0.clone()))
        }
    }

    fn spec(code: Code) -> Arc<FunctionSpec> {
        Arc::new(FunctionSpec {
            name: "t.f".into(),
            runtime: ignition_proto::Runtime::Python3,
            handler: "app.handler".into(),
            memory_mib: 128,
            env: Vec::new(),
            code,
            display_name: "f".into(),
            version: "$LATEST".into(),
            account_id: ignition_types::DEFAULT_ACCOUNT_ID.into(),
            image: None,
        })
    }

    /// The content of `path` inside the ext4 image, read with e2fsprogs' own `debugfs`.
    fn read_in_image(image: &Path, path: &str) -> Vec<u8> {
        let debugfs = ["/usr/sbin/debugfs", "/sbin/debugfs"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("debugfs");
        let out = std::process::Command::new(debugfs)
            .args(["-R", &format!("cat {path}")])
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    #[tokio::test]
    async fn an_image_is_built_once_per_hash_at_the_drive_size_and_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let images = CodeImages::new(dir.path().join(".code"), None);
        let body = b"def handler(e, c):\n    return 1\n";
        let tar = tar_of(&[("app.py", body), ("lib/data.bin", &[7u8; 100_000])]);
        let sha = hash(&tar);
        let (path, built) = images
            .ensure(&sha, &[], &spec(Code::Tar(tar.clone())))
            .await
            .unwrap();
        assert!(built);
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(
            m.len(),
            DRIVE_BYTES,
            "every drive has the size the guest saw at boot"
        );
        assert!(
            m.blocks() * 512 < 16 << 20,
            "sparse: {} bytes",
            m.blocks() * 512
        );
        assert_eq!(read_in_image(&path, "/task/app.py"), body);
        assert_eq!(
            read_in_image(&path, "/task/lib/data.bin"),
            vec![7u8; 100_000]
        );
        // Present: found without the tar, and not built again.
        let (again, built) = images.ensure(&sha, &[], &spec(Code::Drive)).await.unwrap();
        assert!(!built);
        assert_eq!(std::fs::metadata(again).unwrap().ino(), m.ino());
        // Missing and no tar: a clear error; a hash that is not one never names a file.
        assert!(matches!(
            images
                .ensure(&"a".repeat(64), &[], &spec(Code::Drive))
                .await,
            Err(CodeImageError::NoCode(_))
        ));
        assert!(matches!(
            images
                .ensure("../../etc/passwd", &[], &spec(Code::Tar(tar)))
                .await,
            Err(CodeImageError::BadHash(_))
        ));
        let p = images.placeholder().unwrap();
        assert_eq!(std::fs::metadata(p).unwrap().len(), DRIVE_BYTES);
        let left: Vec<_> = std::fs::read_dir(images.dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty(), "no scratch left: {left:?}");
    }

    #[tokio::test]
    async fn a_spec_without_its_tar_gets_the_code_from_the_source_once() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[("app.py", b"x = 1\n")]);
        let source = Arc::new(OneBundle(tar.clone(), Default::default()));
        let images = CodeImages::new(dir.path().join(".code"), Some(source.clone()));
        let sha = hash(&tar);
        for _ in 0..3 {
            let (path, _) = images.ensure(&sha, &[], &spec(Code::Drive)).await.unwrap();
            assert_eq!(read_in_image(&path, "/task/app.py"), b"x = 1\n");
        }
        assert_eq!(source.1.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A hash the source does not have is missing code, not a panic or an empty image.
        assert!(matches!(
            images
                .ensure(&"b".repeat(64), &[], &spec(Code::Drive))
                .await,
            Err(CodeImageError::NoCode(_))
        ));
    }

    #[tokio::test]
    async fn layers_go_under_opt_in_order_and_name_their_own_image() {
        let dir = tempfile::tempdir().unwrap();
        let code = tar_of(&[("app.py", b"import dep\n")]);
        let first = tar_of(&[
            ("python/dep.py", b"v = 1\n"),
            ("python/only_first.py", b"x\n"),
        ]);
        let second = tar_of(&[("python/dep.py", b"v = 2\n")]);
        // The store has the first layer; the job brings the second (a stolen invocation's).
        let source = Arc::new(OneBundle(first.clone(), Default::default()));
        let images = CodeImages::new(dir.path().join(".drives"), Some(source));
        let layers = [
            LayerCode {
                sha256: hash(&first),
                tar: None,
            },
            LayerCode {
                sha256: hash(&second),
                tar: Some(Arc::new(second.clone())),
            },
        ];
        let sha = hash(&code);
        let (path, built) = images
            .ensure(&sha, &layers, &spec(Code::Tar(code.clone())))
            .await
            .unwrap();
        assert!(built);
        assert_eq!(read_in_image(&path, "/task/app.py"), b"import dep\n");
        assert_eq!(
            read_in_image(&path, "/opt/python/dep.py"),
            b"v = 2\n",
            "a later layer's file is over an earlier one's"
        );
        assert_eq!(read_in_image(&path, "/opt/python/only_first.py"), b"x\n");
        // The same code without layers, or with them in the other order, is another image.
        let (bare, _) = images
            .ensure(&sha, &[], &spec(Code::Tar(code.clone())))
            .await
            .unwrap();
        assert_ne!(bare, path);
        let reversed = [layers[1].clone(), layers[0].clone()];
        let (other, _) = images
            .ensure(&sha, &reversed, &spec(Code::Tar(code.clone())))
            .await
            .unwrap();
        assert_ne!(other, path);
        assert_eq!(read_in_image(&other, "/opt/python/dep.py"), b"v = 1\n");
        // A carried tar that is not what its hash says is refused, not built.
        let forged = [LayerCode {
            sha256: hash(&first),
            tar: Some(Arc::new(second)),
        }];
        let none = CodeImages::new(dir.path().join(".other"), None);
        assert!(matches!(
            none.ensure(&sha, &forged, &spec(Code::Tar(code))).await,
            Err(CodeImageError::Source(..))
        ));
    }
}
