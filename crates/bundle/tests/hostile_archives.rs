//! Archives that try to escape, smuggle special files, or expand without bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use ignition_bundle::{from_archive, from_dir, BundleError, Limits};
use proptest::prelude::*;

fn zip_with(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, mode, data) in entries {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn tar_gz_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

fn raw_tar_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_gnu();
    // set_path refuses `..`; write the raw name as a hostile archive would.
    let bytes = name.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn refused_entry(err: BundleError) -> String {
    match err {
        BundleError::UnsafeEntry { entry, .. } => entry,
        other => panic!("expected an unsafe-entry error, got {other}"),
    }
}

#[test]
fn canonical_bundle_is_deterministic_and_keeps_exec_bits() {
    let a = zip_with(&[
        ("b.py", 0o644, b"b"),
        ("bootstrap", 0o755, b"#!/bin/sh"),
        ("d/a.py", 0o600, b"a"),
    ]);
    let b = zip_with(&[
        ("d/a.py", 0o644, b"a"),
        ("bootstrap", 0o755, b"#!/bin/sh"),
        ("./b.py", 0o644, b"b"),
    ]);
    let (ba, bb) = (
        from_archive(&a, Limits::default()).unwrap(),
        from_archive(&b, Limits::default()).unwrap(),
    );
    assert_eq!(
        ba.tar(),
        bb.tar(),
        "same files, same bytes, whatever the order"
    );
    assert!(ba.is_executable("bootstrap"));
    assert!(!ba.is_executable("b.py"));
    assert!(ba.contains("d/a.py"));
    assert_eq!(ba.len(), 3);
}

#[test]
fn zip_traversal_and_absolute_paths_are_refused_by_name() {
    for name in ["../evil.py", "a/../../evil.py", "/etc/passwd"] {
        let z = zip_with(&[("ok.py", 0o644, b"x"), (name, 0o644, b"x")]);
        let err = from_archive(&z, Limits::default()).unwrap_err();
        assert_eq!(refused_entry(err), name);
    }
}

#[test]
fn zip_symlinks_are_refused() {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_symlink(
        "link",
        "/etc/passwd",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    let z = w.finish().unwrap().into_inner();
    assert_eq!(
        refused_entry(from_archive(&z, Limits::default()).unwrap_err()),
        "link"
    );
}

#[test]
fn tar_links_devices_and_traversal_are_refused() {
    let cases: Vec<(&str, tar::EntryType, Option<&str>)> = vec![
        ("sym", tar::EntryType::Symlink, Some("/etc/shadow")),
        ("hard", tar::EntryType::Link, Some("/etc/shadow")),
        ("dev", tar::EntryType::Char, None),
        ("blk", tar::EntryType::Block, None),
        ("fifo", tar::EntryType::Fifo, None),
        ("../up.py", tar::EntryType::Regular, None),
        ("/abs.py", tar::EntryType::Regular, None),
    ];
    for (name, kind, link) in cases {
        let tgz = tar_gz_with(|b| raw_tar_entry(b, name, kind, b"", link));
        let err = from_archive(&tgz, Limits::default()).unwrap_err();
        assert_eq!(refused_entry(err), name);
    }
}

#[test]
fn zip_bomb_is_stopped_by_ratio_before_expansion() {
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let z = zip_with(&[("bomb.bin", 0o644, &zeros)]);
    assert!(
        z.len() < 64 * 1024,
        "the archive itself is small: {}",
        z.len()
    );
    let err = from_archive(&z, Limits::default()).unwrap_err();
    assert!(
        matches!(err, BundleError::TooLarge(ref m) if m.contains("bomb")),
        "{err}"
    );
}

#[test]
fn expanded_size_and_file_count_are_bounded() {
    let limits = Limits {
        max_expanded: 1000,
        max_files: 3,
        max_ratio: 1_000_000,
    };
    let big = zip_with(&[("a", 0o644, &[7u8; 600]), ("b", 0o644, &[7u8; 600])]);
    assert!(matches!(
        from_archive(&big, limits),
        Err(BundleError::TooLarge(_))
    ));
    let many = zip_with(&[
        ("a", 0o644, b"1"),
        ("b", 0o644, b"1"),
        ("c", 0o644, b"1"),
        ("d", 0o644, b"1"),
    ]);
    assert!(matches!(
        from_archive(&many, limits),
        Err(BundleError::TooLarge(_))
    ));
    // A gzip bomb in a tar: stopped at the limit while streaming.
    let tgz = tar_gz_with(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(10 * 1024 * 1024);
        h.set_mode(0o644);
        b.append_data(
            &mut h,
            "zeros",
            std::io::repeat(0).take_bytes(10 * 1024 * 1024),
        )
        .unwrap();
    });
    assert!(matches!(
        from_archive(&tgz, limits),
        Err(BundleError::TooLarge(_))
    ));
}

trait TakeBytes {
    fn take_bytes(self, n: u64) -> std::io::Take<std::io::Repeat>;
}
impl TakeBytes for std::io::Repeat {
    fn take_bytes(self, n: u64) -> std::io::Take<std::io::Repeat> {
        std::io::Read::take(self, n)
    }
}

#[test]
fn corrupt_and_unknown_input_is_refused() {
    assert!(matches!(
        from_archive(b"hello", Limits::default()),
        Err(BundleError::UnknownFormat)
    ));
    let mut z = zip_with(&[("a.py", 0o644, b"print(1)")]);
    z.truncate(z.len() - 10);
    assert!(matches!(
        from_archive(&z, Limits::default()),
        Err(BundleError::Corrupt(_))
    ));
    assert!(matches!(
        from_archive(&[0x1f, 0x8b, 0, 1, 2], Limits::default()),
        Err(BundleError::Corrupt(_))
    ));
    let empty = zip_with(&[]);
    assert!(matches!(
        from_archive(&empty, Limits::default()),
        Err(BundleError::Empty)
    ));
}

#[test]
fn directories_with_symlinks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), "x").unwrap();
    let ok = from_dir(dir.path(), Limits::default()).unwrap();
    assert!(ok.contains("app.py"));
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).unwrap();
    assert_eq!(
        refused_entry(from_dir(dir.path(), Limits::default()).unwrap_err()),
        "leak"
    );
}

proptest! {
    /// Whatever bytes arrive, reading them never panics.
    #[test]
    fn arbitrary_uploads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), zip_magic in any::<bool>()) {
        let mut input = if zip_magic { b"PK\x03\x04".to_vec() } else { vec![0x1f, 0x8b] };
        input.extend_from_slice(&bytes);
        let _ = from_archive(&input, Limits::default());
    }

    /// Accepted paths never escape: no `..`, never absolute.
    #[test]
    fn accepted_paths_stay_inside(parts in proptest::collection::vec("[a-z.]{1,3}", 1..4)) {
        let name = parts.join("/");
        let z = zip_with(&[(&name, 0o644, b"x")]);
        if let Ok(b) = from_archive(&z, Limits::default()) {
            let tar = b.into_tar();
            let mut archive = tar::Archive::new(&tar[..]);
            for e in archive.entries().unwrap() {
                let p = e.unwrap().path().unwrap().into_owned();
                prop_assert!(!p.is_absolute());
                prop_assert!(p.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            }
        }
    }
}
