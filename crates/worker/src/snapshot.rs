//! Per-function snapshots: a VM booted once to "agent ready, code installed, runtime
//! initialized", paused, its device state saved; guest memory is the file it ran on.
//!
//! A snapshot directory is named `<function>-<key>`, where the key hashes everything the
//! snapshot depends on (guest image, protocol version, the function's code and configuration),
//! so a changed function or image simply misses and builds a new one; the stale ones are removed
//! when the new one is made or the function is deleted.
//!
//! A snapshot is never restored unverified: `meta.json` records the key, the format version and
//! SHA-256 digests of both files. The state file is checked at every restore (it is small); the
//! memory file fully once per process, then by size and modification time.
//!
//! Disk. With a budget (`--snapshot-disk-mib`), committing a snapshot evicts the least recently
//! used others (a restore marks its snapshot used by touching its directory, so the order
//! survives a restart) until the blocks they take fit; the snapshot just made is never evicted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ignition_vmm::SnapshotFiles;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex as AsyncMutex;

/// Bump when the snapshot layout or what it contains changes.
const FORMAT: u32 = 2;
const META: &str = "meta.json";
const MEMORY: &str = "memory";
const STATE: &str = "state";
/// The directory, inside the snapshot root, of the functions' code images
/// ([`crate::code_image`]); they share the snapshots' disk budget.
pub(crate) const CODE_DIR: &str = ".drives";

/// Why a snapshot could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File operations failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The snapshot does not match its metadata.
    #[error("snapshot {0} is corrupt or stale: {1}")]
    Invalid(String, String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    format: u32,
    key: String,
    memory_len: u64,
    memory_sha256: String,
    state_sha256: String,
    kernel_release: String,
}

fn sha256_file(path: &Path) -> Result<String, SnapshotError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(hex::encode(h.finalize()))
}

/// A snapshot that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) key: String,
    pub(crate) files: SnapshotFiles,
    /// The guest kernel the snapshotted VM booted.
    pub(crate) kernel_release: String,
}

/// Where snapshots live, and which have been verified by this process.
#[derive(Debug)]
pub(crate) struct SnapshotStore {
    root: PathBuf,
    /// Bytes of disk the snapshots may take, if bounded.
    budget: Option<u64>,
    /// Snapshots evicted to keep to the budget.
    evicted: std::sync::atomic::AtomicU64,
    /// Memory files verified in full: path -> (len, mtime).
    verified: Mutex<HashMap<PathBuf, (u64, std::time::SystemTime)>>,
    /// One builder per key at a time.
    building: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// The key of a function's snapshot.
pub(crate) fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.to_le_bytes());
    h.update([ignition_proto::VERSION]);
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())[..20].to_owned()
}

impl SnapshotStore {
    #[cfg(test)]
    pub(crate) fn new(root: PathBuf) -> Self {
        Self::bounded(root, None)
    }

    /// A store whose snapshots take at most `budget` bytes of disk (but the newest, always).
    pub(crate) fn bounded(root: PathBuf, budget: Option<u64>) -> Self {
        Self {
            root,
            budget,
            evicted: std::sync::atomic::AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            building: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, function: &str, key: &str) -> PathBuf {
        self.root.join(format!("{function}-{key}"))
    }

    /// [`Self::load`] on a blocking thread: verifying reads and hashes the whole memory file,
    /// seconds for a large guest, which must not stall the runtime's threads.
    pub(crate) async fn load_off_thread(
        self: &Arc<Self>,
        function: &str,
        key: &str,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        let (me, f, k) = (Arc::clone(self), function.to_owned(), key.to_owned());
        tokio::task::spawn_blocking(move || me.load(&f, &k))
            .await
            .unwrap_or_else(|e| Err(SnapshotError::Invalid(key.to_owned(), e.to_string())))
    }

    /// [`Self::commit`] on a blocking thread (it hashes the memory file).
    pub(crate) async fn commit_off_thread(
        self: &Arc<Self>,
        function: &str,
        key: &str,
        staging: &Path,
        kernel_release: &str,
    ) -> Result<Snapshot, SnapshotError> {
        let me = Arc::clone(self);
        let (f, k, s, r) = (
            function.to_owned(),
            key.to_owned(),
            staging.to_owned(),
            kernel_release.to_owned(),
        );
        tokio::task::spawn_blocking(move || me.commit(&f, &k, &s, &r))
            .await
            .unwrap_or_else(|e| Err(SnapshotError::Invalid(key.to_owned(), e.to_string())))
    }

    /// A lock held while the snapshot for `key` is looked up or built.
    pub(crate) fn build_lock(&self, key: &str) -> Arc<AsyncMutex<()>> {
        let mut b = self.building.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(b.entry(key.to_owned()).or_default())
    }

    /// Paths for building a new snapshot: a fresh temporary directory.
    pub(crate) fn staging(
        &self,
        function: &str,
        key: &str,
    ) -> Result<(PathBuf, SnapshotFiles), SnapshotError> {
        let dir = self
            .root
            .join(format!(".staging-{function}-{key}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let files = SnapshotFiles {
            memory: dir.join(MEMORY),
            state: dir.join(STATE),
        };
        Ok((dir, files))
    }

    /// Seals a staged snapshot: records its digests and moves it into place. Older snapshots of
    /// the same function are removed.
    pub(crate) fn commit(
        &self,
        function: &str,
        key: &str,
        staging: &Path,
        kernel_release: &str,
    ) -> Result<Snapshot, SnapshotError> {
        let memory = staging.join(MEMORY);
        let state = staging.join(STATE);
        let memory_len = std::fs::metadata(&memory).map_err(io(&memory))?.len();
        let meta = Meta {
            format: FORMAT,
            key: key.to_owned(),
            memory_len,
            memory_sha256: sha256_file(&memory)?,
            state_sha256: sha256_file(&state)?,
            kernel_release: kernel_release.to_owned(),
        };
        let meta_path = staging.join(META);
        let text = serde_json::to_vec_pretty(&meta)
            .map_err(|e| SnapshotError::Invalid(key.into(), e.to_string()))?;
        std::fs::write(&meta_path, text).map_err(io(&meta_path))?;
        self.remove_function(function);
        let dir = self.dir(function, key);
        std::fs::rename(staging, &dir).map_err(io(&dir))?;
        self.mark_verified(&dir.join(MEMORY));
        self.keep_to_budget(&dir);
        Ok(Snapshot {
            key: key.to_owned(),
            files: SnapshotFiles {
                memory: dir.join(MEMORY),
                state: dir.join(STATE),
            },
            kernel_release: kernel_release.to_owned(),
        })
    }

    fn mark_verified(&self, memory: &Path) {
        if let Ok(m) = std::fs::metadata(memory) {
            if let Ok(t) = m.modified() {
                let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                v.insert(memory.to_path_buf(), (m.len(), t));
            }
        }
    }

    /// The snapshot for `key` if one exists and verifies; `Ok(None)` if there is none. A snapshot
    /// that fails verification is removed and reported as an error, so the caller rebuilds it.
    pub(crate) fn load(
        &self,
        function: &str,
        key: &str,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        let dir = self.dir(function, key);
        if !dir.exists() {
            return Ok(None);
        }
        match self.verify(&dir, key) {
            Ok(s) => {
                mark_used(&dir);
                Ok(Some(s))
            }
            Err(e) => {
                tracing::warn!(snapshot = %dir.display(), error = %e, "removing an invalid snapshot");
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn verify(&self, dir: &Path, key: &str) -> Result<Snapshot, SnapshotError> {
        let bad = |why: String| SnapshotError::Invalid(dir.display().to_string(), why);
        let meta_path = dir.join(META);
        let text = std::fs::read(&meta_path).map_err(io(&meta_path))?;
        let meta: Meta =
            serde_json::from_slice(&text).map_err(|e| bad(format!("metadata: {e}")))?;
        if meta.format != FORMAT || meta.key != key {
            return Err(bad(format!(
                "format {} key {} (want {FORMAT} {key})",
                meta.format, meta.key
            )));
        }
        let state = dir.join(STATE);
        if sha256_file(&state)? != meta.state_sha256 {
            return Err(bad("device state checksum mismatch".into()));
        }
        let memory = dir.join(MEMORY);
        let m = std::fs::metadata(&memory).map_err(io(&memory))?;
        if m.len() != meta.memory_len {
            return Err(bad(format!(
                "memory is {} bytes, expected {}",
                m.len(),
                meta.memory_len
            )));
        }
        let mtime = m.modified().map_err(io(&memory))?;
        let known = {
            let v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            v.get(&memory) == Some(&(m.len(), mtime))
        };
        if !known {
            if sha256_file(&memory)? != meta.memory_sha256 {
                return Err(bad("guest memory checksum mismatch".into()));
            }
            self.mark_verified(&memory);
        }
        Ok(Snapshot {
            key: key.to_owned(),
            files: SnapshotFiles { memory, state },
            kernel_release: meta.kernel_release,
        })
    }

    /// Snapshots evicted to keep to the disk budget, since start.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Evicts the least recently used snapshots and code images but `keep` until the rest fit
    /// the budget. Code images in use by running VMs stay open for them; one a snapshot needs
    /// later is built again before its restore.
    pub(crate) fn keep_to_budget(&self, keep: &Path) {
        let Some(budget) = self.budget else { return };
        let mut entries = self.budgeted();
        let mut total: u64 = entries.iter().map(|(_, b, _)| b).sum();
        entries.sort();
        for (_, bytes, path) in entries {
            if total <= budget {
                break;
            }
            if path == keep {
                continue;
            }
            tracing::info!(path = %path.display(), bytes, budget, "evicting the least recently used snapshot or code image");
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if removed.is_ok() {
                total = total.saturating_sub(bytes);
                self.evicted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// What the budget counts, with when each was last used and the disk it takes: snapshot
    /// directories, and code images (not the placeholder every base snapshot needs).
    fn budgeted(&self) -> Vec<(std::time::SystemTime, u64, PathBuf)> {
        let used = |p: &Path| std::fs::metadata(p).ok()?.modified().ok();
        let mut out: Vec<_> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            // Dot names: staging directories and the code directory.
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((used(&e.path())?, disk_bytes(&e.path()), e.path())))
            .collect();
        out.extend(
            std::fs::read_dir(self.root.join(CODE_DIR))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".img") && n.len() == 64 + 4
                })
                .filter_map(|e| Some((used(&e.path())?, disk_bytes(&e.path()), e.path()))),
        );
        out
    }

    /// Removes every snapshot of each function `matches` names.
    pub(crate) fn remove_matching(&self, matches: &dyn Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `<function>-<20 hex>`.
            let Some((function, key)) = name.rsplit_once('-') else {
                continue;
            };
            if key.len() == 20 && key.chars().all(|c| c.is_ascii_hexdigit()) && matches(function) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Removes every snapshot of `function`.
    pub(crate) fn remove_function(&self, function: &str) {
        let prefix = format!("{function}-");
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Names are `<function>-<20 hex>`; function names may contain '-', so match exactly.
            if let Some(rest) = name.strip_prefix(&prefix) {
                if rest.len() == 20 && rest.chars().all(|c| c.is_ascii_hexdigit()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Marks a snapshot used now (its directory's modification time orders eviction).
fn mark_used(dir: &Path) {
    let now = std::time::SystemTime::now();
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.set_modified(now)) {
        tracing::debug!(snapshot = %dir.display(), error = %e, "marking a snapshot used");
    }
}

/// Bytes of disk a file, or the files in a directory, take (allocated blocks: a sparse memory
/// file or code image counts only what it holds).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.is_file() {
            return m.blocks() * 512;
        }
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(store: &SnapshotStore, f: &str, key: &str, mem: &[u8]) -> Snapshot {
        let (dir, files) = store.staging(f, key).unwrap();
        std::fs::write(&files.memory, mem).unwrap();
        std::fs::write(&files.state, b"device state").unwrap();
        store.commit(f, key, &dir, "6.1-test").unwrap()
    }

    #[test]
    fn committed_snapshot_loads_and_replaces_older_ones() {
        let root = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(root.path().to_path_buf());
        let k1 = key(&[b"v1"]);
        let k2 = key(&[b"v2"]);
        let s1 = stage(&store, "fn-a", &k1, b"memory one");
        assert_eq!(store.load("fn-a", &k1).unwrap(), Some(s1));
        stage(&store, "fn-a", &k2, b"memory two");
        assert_eq!(
            store.load("fn-a", &k1).unwrap(),
            None,
            "the old snapshot is gone"
        );
        assert!(store.load("fn-a", &k2).unwrap().is_some());
        // Another function whose name extends this one is untouched.
        stage(&store, "fn-a-b", &k1, b"x");
        store.remove_function("fn-a");
        assert!(store.load("fn-a-b", &k1).unwrap().is_some());
        assert!(store.load("fn-a", &k2).unwrap().is_none());
    }

    #[test]
    fn corrupt_state_or_memory_is_detected_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(root.path().to_path_buf());
        let k = key(&[b"v"]);
        let s = stage(&store, "f", &k, b"memory");
        std::fs::write(&s.files.state, b"tampered").unwrap();
        assert!(matches!(
            store.load("f", &k),
            Err(SnapshotError::Invalid(..))
        ));
        assert_eq!(store.load("f", &k).unwrap(), None, "removed after failing");

        let s = stage(&store, "f", &k, b"memory");
        // Same length, different bytes, and a fresh process (nothing verified yet).
        std::fs::write(&s.files.memory, b"MEMORY").unwrap();
        let fresh = SnapshotStore::new(root.path().to_path_buf());
        assert!(matches!(
            fresh.load("f", &k),
            Err(SnapshotError::Invalid(..))
        ));
    }

    #[test]
    fn a_disk_budget_evicts_the_least_recently_used_snapshots() {
        let root = tempfile::tempdir().unwrap();
        let mem = vec![1u8; 64 * 1024];
        // Room for two snapshots of this size (and their small files), not three.
        let store =
            SnapshotStore::bounded(root.path().to_path_buf(), Some(2 * 64 * 1024 + 64 * 1024));
        let (ka, kb, kc) = (key(&[b"a"]), key(&[b"b"]), key(&[b"c"]));
        stage(&store, "a", &ka, &mem);
        std::thread::sleep(std::time::Duration::from_millis(20));
        stage(&store, "b", &kb, &mem);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // `a` restored since: `b` is now the least recently used.
        assert!(store.load("a", &ka).unwrap().is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        stage(&store, "c", &kc, &mem);
        assert!(store.load("b", &kb).unwrap().is_none(), "evicted");
        assert!(store.load("a", &ka).unwrap().is_some());
        assert!(
            store.load("c", &kc).unwrap().is_some(),
            "the newest is kept"
        );
        assert_eq!(store.evicted(), 1);
        let unbounded = SnapshotStore::new(root.path().to_path_buf());
        stage(&unbounded, "d", &key(&[b"d"]), &mem);
        assert!(
            unbounded.load("a", &ka).unwrap().is_some(),
            "no budget, no eviction"
        );
    }
}
