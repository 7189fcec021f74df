//! Applying layers, in order, into a directory tree: the root filesystem an image describes.
//!
//! Every path in a layer is hostile. An entry is refused when its path is absolute or has a
//! `..`, when it is a device or a FIFO, or when a hard link names something outside the tree.
//! Paths are resolved inside the tree as a chroot would resolve them: a symbolic link met on
//! the way (the image's own `/bin -> usr/bin`, or one a layer planted to point at `/etc`) is
//! followed with the tree as its root, never the host's, and the last component is never
//! followed, so nothing is ever written outside the tree. Whiteouts (`.wh.NAME`, and
//! `.wh..wh..opq` for a directory whose lower content is hidden) remove what lower layers
//! put there. Bytes written are counted against a budget as they are written, so a
//! decompression bomb stops at the limit.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::ImageError;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Symbolic links followed while resolving one path, as Linux's limit.
const MAX_LINK_HOPS: usize = 40;
/// What each entry costs in the budget beyond its bytes (an inode, a directory slot).
const ENTRY_COST: u64 = 4096;

/// A tree being built from an image's layers.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    /// Bytes (and entries, at [`ENTRY_COST`] each) the layers may write in all.
    budget: u64,
    written: u64,
    /// Directories' modes, applied at the end: a layer's read-only directory must not stop a
    /// later layer from writing into it.
    dir_modes: HashMap<PathBuf, u32>,
    chown: bool,
}

/// Why one entry failed: refused (the layer's fault) or an I/O error (the node's).
enum EntryError {
    Refused(String),
    OverBudget,
    Io(String, std::io::Error),
}

impl Tree {
    /// A tree at `root` (made if missing) that the layers may write `budget` bytes into.
    pub fn new(root: &Path, budget: u64) -> Result<Self, ImageError> {
        std::fs::create_dir_all(root)
            .map_err(ImageError::io(format!("mkdir {}", root.display())))?;
        Ok(Self {
            root: root.to_path_buf(),
            budget,
            written: 0,
            dir_modes: HashMap::new(),
            // Ownership is the image's where the builder may set it (the node runs as root).
            // SAFETY: geteuid has no preconditions and cannot fail.
            chown: unsafe { libc::geteuid() } == 0,
        })
    }

    /// Applies the layer blob at `blob` (a tar, gzip-compressed or not), the `index`th
    /// (1-based). `reference` names the image in errors.
    pub fn apply(&mut self, index: usize, blob: &Path, reference: &str) -> Result<(), ImageError> {
        let file =
            std::fs::File::open(blob).map_err(ImageError::io(format!("open layer {index}")))?;
        let reader = decompressed(std::io::BufReader::new(file))
            .map_err(ImageError::io(format!("read layer {index}")))?;
        let bad = |detail: String| ImageError::BadLayer {
            layer: index,
            detail,
        };
        let mut created = HashSet::new();
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("not a tar: {e}")))?;
            match self.entry(&mut entry, &mut created) {
                Ok(()) => {}
                Err(EntryError::Refused(detail)) => return Err(bad(detail)),
                Err(EntryError::OverBudget) => {
                    return Err(ImageError::TooLarge {
                        reference: reference.to_owned(),
                        limit_mib: self.budget >> 20,
                    })
                }
                Err(EntryError::Io(what, source)) => {
                    // A read error inside the stream is the layer's (truncated, corrupt).
                    if source.kind() == std::io::ErrorKind::InvalidData
                        || source.kind() == std::io::ErrorKind::UnexpectedEof
                        || source.kind() == std::io::ErrorKind::InvalidInput
                    {
                        return Err(bad(format!("{what}: {source}")));
                    }
                    return Err(ImageError::Io {
                        what: format!("layer {index}: {what}"),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Sets directories' modes as the layers left them, deepest first. Call once, after the
    /// last layer.
    pub fn finish(self) -> Result<(), ImageError> {
        let mut dirs: Vec<_> = self.dir_modes.into_iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode) in dirs {
            // A later layer may have put something else where the directory was.
            if !path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                continue;
            }
            match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(format!("chmod {}", path.display()))(e)),
            }
        }
        Ok(())
    }

    fn charge(&mut self, bytes: u64) -> Result<(), EntryError> {
        self.written = self
            .written
            .saturating_add(bytes)
            .saturating_add(ENTRY_COST);
        if self.written > self.budget {
            return Err(EntryError::OverBudget);
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        created: &mut HashSet<PathBuf>,
    ) -> Result<(), EntryError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let names =
            relative_names(&raw).map_err(|why| EntryError::Refused(format!("{shown:?}: {why}")))?;
        let Some((name, parents)) = names.split_last() else {
            return Ok(()); // the root itself (`./`): its mode is the image's root's, 0755
        };
        let kind = entry.header().entry_type();
        self.charge(entry.size())?;
        let parent = self.resolve_dir(parents, &shown)?;
        let logical: PathBuf = names.iter().collect();

        if name.as_bytes() == OPAQUE.as_bytes() {
            let logical_parent: PathBuf = parents.iter().collect();
            return self.clear_lower(&parent, &logical_parent, created);
        }
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT.as_bytes()) {
            let hidden = OsStr::from_bytes(hidden);
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(EntryError::Refused(format!(
                    "{shown:?}: a whiteout that escapes"
                )));
            }
            let target = parent.join(hidden);
            if !created.contains(&logical.with_file_name(hidden)) {
                remove_any(&target).map_err(|e| EntryError::Io(format!("whiteout {shown}"), e))?;
            }
            return Ok(());
        }

        let dest = parent.join(name);
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let io = |what: &str| {
            let what = format!("{what} {shown}");
            move |e| EntryError::Io(what, e)
        };
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let is_dir = dest.symlink_metadata().is_ok_and(|m| m.is_dir());
                if !is_dir {
                    remove_any(&dest).map_err(io("replace"))?;
                    std::fs::create_dir(&dest).map_err(io("mkdir"))?;
                }
                self.dir_modes.insert(dest.clone(), mode);
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                remove_any(&dest).map_err(io("replace"))?;
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                    .map_err(io("create"))?;
                // The entry's reader stops at its size, which the budget already counts.
                std::io::copy(entry, &mut out).map_err(io("write"))?;
                out.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io("chmod"))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = out.set_modified(t);
                }
            }
            T::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    EntryError::Refused(format!("{shown:?}: a symbolic link without a target"))
                })?;
                remove_any(&dest).map_err(io("replace"))?;
                // Never followed here: the guest resolves it, inside the image.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest)
                    .map_err(io("symlink"))?;
            }
            T::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    EntryError::Refused(format!("{shown:?}: a hard link without a target"))
                })?;
                let shown_target = String::from_utf8_lossy(&target).into_owned();
                let tnames = relative_names(&target).map_err(|why| {
                    EntryError::Refused(format!("{shown:?}: hard link to {shown_target:?}: {why}"))
                })?;
                let Some((tname, tparents)) = tnames.split_last() else {
                    return Err(EntryError::Refused(format!(
                        "{shown:?}: a hard link to the root"
                    )));
                };
                let source = self.resolve_dir(tparents, &shown_target)?.join(tname);
                match source.symlink_metadata() {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(EntryError::Refused(format!(
                            "{shown:?}: hard link to {shown_target:?}, which is not a file of the image"
                        )))
                    }
                }
                remove_any(&dest).map_err(io("replace"))?;
                std::fs::hard_link(&source, &dest).map_err(io("link"))?;
                created.insert(logical);
                return Ok(()); // shares the source's owner and mode
            }
            T::Char | T::Block | T::Fifo => {
                return Err(EntryError::Refused(format!(
                    "{shown:?}: device and FIFO entries are not allowed"
                )))
            }
            // PAX and GNU long-name headers are folded into the entries they describe by the
            // tar reader; anything else carries no file.
            _ => return Ok(()),
        }
        if self.chown {
            std::os::unix::fs::lchown(&dest, Some(uid as u32), Some(gid as u32))
                .map_err(io("chown"))?;
        }
        created.insert(logical);
        Ok(())
    }

    /// The host path of the directory at `names` under the root, resolved as inside a chroot
    /// at the root: symbolic links are followed relative to it, `..` stops at it, missing
    /// directories are made (a layer need not list its parents).
    fn resolve_dir(&mut self, names: &[OsString], shown: &str) -> Result<PathBuf, EntryError> {
        let mut at: Vec<OsString> = Vec::new();
        let mut todo: std::collections::VecDeque<OsString> = names.iter().cloned().collect();
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                at.pop();
                continue;
            }
            if name.is_empty() || name == "." {
                continue;
            }
            let host: PathBuf = self
                .root
                .iter()
                .chain(at.iter().map(OsString::as_os_str))
                .collect::<PathBuf>()
                .join(&name);
            match host.symlink_metadata() {
                Ok(m) if m.is_dir() => at.push(name),
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(EntryError::Refused(format!(
                            "{shown:?}: too many levels of symbolic links"
                        )));
                    }
                    let target = std::fs::read_link(&host)
                        .map_err(|e| EntryError::Io(format!("readlink {shown}"), e))?;
                    if target.is_absolute() {
                        at.clear();
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::Normal(n) => todo.push_front(n.to_owned()),
                            Component::ParentDir => todo.push_front("..".into()),
                            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                        }
                    }
                }
                Ok(_) => {
                    return Err(EntryError::Refused(format!(
                        "{shown:?}: a parent is not a directory"
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.charge(0)?;
                    std::fs::create_dir(&host)
                        .map_err(|e| EntryError::Io(format!("mkdir for {shown}"), e))?;
                    at.push(name);
                }
                Err(e) => return Err(EntryError::Io(format!("stat for {shown}"), e)),
            }
        }
        Ok(self
            .root
            .iter()
            .chain(at.iter().map(OsString::as_os_str))
            .collect())
    }

    /// Removes what lower layers put in `dir` (an opaque whiteout), keeping what this layer
    /// wrote there.
    fn clear_lower(
        &self,
        dir: &Path,
        logical: &Path,
        created: &HashSet<PathBuf>,
    ) -> Result<(), EntryError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| EntryError::Io("read an opaque directory".into(), e))?;
        for e in entries {
            let e = e.map_err(|e| EntryError::Io("read an opaque directory".into(), e))?;
            if !created.contains(&logical.join(e.file_name())) {
                remove_any(&e.path()).map_err(|e| EntryError::Io("opaque whiteout".into(), e))?;
            }
        }
        Ok(())
    }
}

/// A layer blob's tar: gunzipped or zstd-decompressed when its first bytes say it is either.
pub(crate) fn decompressed<R: std::io::BufRead + 'static>(
    mut blob: R,
) -> std::io::Result<Box<dyn Read>> {
    let head = blob.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else if head.starts_with(&ZSTD_MAGIC) {
        Box::new(ZstdFrames::new(blob))
    } else {
        Box::new(blob)
    })
}

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A zstd stream of one frame or more, decompressed (`tar+zstd` layers; the decoder reads one
/// frame, and a compressor may write several).
struct ZstdFrames<R: std::io::BufRead> {
    decoder: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
    source: Option<R>,
}

impl<R: std::io::BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        Self {
            decoder: None,
            source: Some(source),
        }
    }
}

impl<R: std::io::BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(d) = &mut self.decoder {
                let n = d.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // This frame is done: another may follow.
                self.source = self.decoder.take().map(|d| d.into_inner());
            }
            let Some(mut source) = self.source.take() else {
                return Ok(0);
            };
            if source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let decoder = ruzstd::decoding::StreamingDecoder::new(source).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("zstd: {e}"))
            })?;
            self.decoder = Some(decoder);
        }
    }
}

/// The names of a layer path, without `.` and a trailing `/`; refused when absolute or with
/// `..`.
fn relative_names(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("an absolute path");
    }
    let mut names = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => names.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err("a path with `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
        }
    }
    Ok(names)
}

/// Removes `path` whatever it is (a directory with its content); nothing there is fine. Never
/// follows a link.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer: (path, kind, body or link target).
    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Dev(&'a str),
    }

    fn layer(dir: &Path, name: &str, entries: &[E<'_>], gzip: bool) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            // Names go in raw, so that hostile ones (`../x`, `/x`) are written as they are.
            let (path, kind, body, link): (&str, _, &[u8], Option<&str>) = match e {
                E::File(p, body) => (p, tar::EntryType::Regular, body, None),
                E::Dir(p) => (p, tar::EntryType::Directory, b"", None),
                E::Sym(p, t) => (p, tar::EntryType::Symlink, b"", Some(t)),
                E::Hard(p, t) => (p, tar::EntryType::Link, b"", Some(t)),
                E::Dev(p) => (p, tar::EntryType::Char, b"", None),
            };
            h.set_entry_type(kind);
            h.set_size(body.len() as u64);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(t) = link {
                gnu.linkname = [0; 100];
                gnu.linkname[..t.len()].copy_from_slice(t.as_bytes());
            }
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let bytes = if gzip {
            use std::io::Write;
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&tar).unwrap();
            z.finish().unwrap()
        } else {
            tar
        };
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn apply(dir: &Path, layers: &[&[E<'_>]]) -> Result<PathBuf, ImageError> {
        let root = dir.join("root");
        let mut tree = Tree::new(&root, 1 << 30)?;
        for (i, entries) in layers.iter().enumerate() {
            let blob = layer(dir, &format!("l{i}"), entries, i % 2 == 1);
            tree.apply(i + 1, &blob, "test")?;
        }
        tree.finish()?;
        Ok(root)
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let root = apply(
            dir.path(),
            &[
                &[
                    E::Dir("etc/"),
                    E::File("etc/keep", b"lower"),
                    E::File("etc/gone", b"x"),
                    E::Dir("var/cache/"),
                    E::File("var/cache/a", b"a"),
                    E::File("./usr/bin/tool", b"v1"),
                    E::Sym("bin", "usr/bin"),
                ],
                &[
                    E::File("etc/.wh.gone", b""),
                    E::File("var/cache/.wh..wh..opq", b""),
                    E::File("var/cache/b", b"b"),
                    E::File("usr/bin/tool", b"v2"),
                    // Through the image's own link, resolved inside the tree.
                    E::File("bin/other", b"o"),
                    E::Hard("usr/bin/same", "usr/bin/tool"),
                ],
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read(root.join("etc/keep")).unwrap(), b"lower");
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("var/cache/a").exists());
        assert_eq!(std::fs::read(root.join("var/cache/b")).unwrap(), b"b");
        assert_eq!(std::fs::read(root.join("usr/bin/tool")).unwrap(), b"v2");
        assert_eq!(std::fs::read(root.join("usr/bin/other")).unwrap(), b"o");
        assert_eq!(std::fs::read(root.join("usr/bin/same")).unwrap(), b"v2");
        assert_eq!(
            std::fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert!(!root.join(".wh.gone").exists() && !root.join("etc/.wh.gone").exists());
    }

    fn refused(entries: &[E<'_>]) -> String {
        let dir = tempfile::tempdir().unwrap();
        match apply(dir.path(), &[entries]) {
            Err(e @ ImageError::BadLayer { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_directory_replaced_by_a_file_leaves_the_file_its_own_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let mut tree = Tree::new(&root, 1 << 30).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, "a/", &b""[..]).unwrap();
        std::fs::write(dir.path().join("l1"), b.into_inner().unwrap()).unwrap();
        tree.apply(1, &dir.path().join("l1"), "t").unwrap();
        let l2 = layer(
            dir.path(),
            "l2",
            &[E::File(".wh.a", b""), E::File("a", b"now a file")],
            false,
        );
        tree.apply(2, &l2, "t").unwrap();
        tree.finish().unwrap();
        let mode = std::fs::metadata(root.join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "the file's own mode, not the old directory's");
    }

    #[test]
    fn hostile_entries_are_refused() {
        assert!(refused(&[E::File("../escape", b"x")]).contains("`..`"));
        assert!(refused(&[E::File("a/../../escape", b"x")]).contains("`..`"));
        assert!(refused(&[E::File("/etc/passwd", b"x")]).contains("absolute"));
        assert!(refused(&[E::Dev("dev/kmsg")]).contains("device"));
        assert!(refused(&[E::Hard("a", "../../etc/shadow")]).contains("`..`"));
        assert!(refused(&[E::Hard("a", "missing")]).contains("not a file of the image"));
        assert!(refused(&[E::File(".wh...", b"")]).contains("escapes"));
    }

    #[test]
    fn a_planted_link_never_leads_outside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let abs = outside.to_str().unwrap().to_owned();
        let root = apply(
            dir.path(),
            &[
                &[E::Sym("up", "../../../../.."), E::Sym("abs", &abs)],
                &[
                    E::File("up/x", b"1"),
                    E::File("abs/y", b"2"),
                    E::Hard("z", "abs/y"),
                ],
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written outside"
        );
        // `..` stops at the root; an absolute target starts at it.
        assert_eq!(std::fs::read(root.join("x")).unwrap(), b"1");
        assert_eq!(
            std::fs::read(root.join(abs.trim_start_matches('/')).join("y")).unwrap(),
            b"2"
        );
        assert_eq!(std::fs::read(root.join("z")).unwrap(), b"2");
        // A whiteout through the link removes inside the tree, not the host's file.
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let mut tree = Tree::new(&root, 1 << 30).unwrap();
        let blob = layer(dir.path(), "w", &[E::File("abs/.wh.keep", b"")], false);
        tree.apply(3, &blob, "test").unwrap();
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn a_layer_over_the_budget_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0u8; 3 << 20];
        let blob = layer(dir.path(), "big", &[E::File("big", &big)], true);
        let mut tree = Tree::new(&dir.path().join("root"), 2 << 20).unwrap();
        let e = tree.apply(1, &blob, "img").unwrap_err();
        assert!(
            matches!(e, ImageError::TooLarge { limit_mib: 2, .. }),
            "{e}"
        );
        assert!(
            !dir.path().join("root/big").exists(),
            "the over-budget entry is not written"
        );
    }

    #[test]
    fn a_zstd_layer_of_several_frames_applies() {
        let dir = tempfile::tempdir().unwrap();
        let first = layer(dir.path(), "a", &[E::File("one", b"first frame")], false);
        let second = layer(dir.path(), "b", &[E::File("two", &[7u8; 100_000])], false);
        // Two frames, each a tar's worth; the first tar's end blocks are dropped so that the
        // stream is one archive.
        let a = std::fs::read(&first).unwrap();
        let a = &a[..a.len() - 1024];
        let level = ruzstd::encoding::CompressionLevel::Fastest;
        let mut z = ruzstd::encoding::compress_to_vec(a, level);
        z.extend(ruzstd::encoding::compress_to_vec(
            &std::fs::read(&second).unwrap()[..],
            level,
        ));
        let blob = dir.path().join("z");
        std::fs::write(&blob, z).unwrap();
        let root = dir.path().join("root");
        let mut tree = Tree::new(&root, 1 << 30).unwrap();
        tree.apply(1, &blob, "t").unwrap();
        assert_eq!(std::fs::read(root.join("one")).unwrap(), b"first frame");
        assert_eq!(std::fs::read(root.join("two")).unwrap(), vec![7u8; 100_000]);
    }

    #[test]
    fn a_corrupt_or_truncated_layer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("z");
        std::fs::write(&z, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
        let mut tree = Tree::new(&dir.path().join("root"), 1 << 30).unwrap();
        let e = tree.apply(1, &z, "t").unwrap_err();
        assert!(matches!(e, ImageError::BadLayer { layer: 1, .. }), "{e}");
        let good = layer(dir.path(), "g", &[E::File("f", &[1u8; 5000])], true);
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(&good, &bytes[..bytes.len() / 2]).unwrap();
        let e = tree.apply(2, &good, "t").unwrap_err();
        assert!(matches!(e, ImageError::BadLayer { layer: 2, .. }), "{e}");
    }
}
