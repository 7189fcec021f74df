//! The fuzz target's corpus, replayed and mutated on the stable toolchain: every seed decodes
//! (or is refused) without a panic, and so does every bit flip, truncation and splice of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use ignition_proto::{read_frame, FrameDecoder, GuestMessage, MAX_GUEST_FRAME};
use proptest::prelude::*;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/guest_frame");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn decode_all(data: &[u8]) -> (usize, bool) {
    let mut dec = FrameDecoder::new(MAX_GUEST_FRAME);
    dec.feed(data);
    let mut n = 0;
    let failed = loop {
        match dec.next_message::<GuestMessage>() {
            Ok(Some(_)) => n += 1,
            Ok(None) => break dec.finish().is_err(),
            Err(_) => break true,
        }
    };
    let mut r = data;
    while let Ok(Some(_)) = read_frame::<GuestMessage>(&mut r, MAX_GUEST_FRAME) {}
    (n, failed)
}

#[test]
fn seeds_decode_as_expected() {
    let seeds = corpus();
    assert!(seeds.len() >= 10, "corpus has {} seeds", seeds.len());
    const BROKEN: [&str; 4] = ["truncated", "oversize", "bad-version", "garbage"];
    // Every valid message has a seed of its own, and the stream holds each of them once.
    let valid = seeds
        .iter()
        .filter(|(name, _)| name != "stream-of-all" && !BROKEN.contains(&name.as_str()))
        .count();
    for (name, data) in &seeds {
        let (n, failed) = decode_all(data);
        match name.as_str() {
            "stream-of-all" => assert_eq!((n, failed), (valid, false), "{name}"),
            broken if BROKEN.contains(&broken) => assert!(failed, "{name} must be refused"),
            _ => assert_eq!((n, failed), (1, false), "{name}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_seeds_never_panic(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        splice in any::<prop::sample::Index>(),
    ) {
        let seeds = corpus();
        let (_, seed) = &seeds[pick.index(seeds.len())];
        let mut data = seed.clone();
        if !data.is_empty() {
            for (at, x) in &flips {
                let i = at.index(data.len());
                data[i] ^= x;
            }
            data.truncate(cut.index(data.len() + 1));
        }
        let (_, other) = &seeds[splice.index(seeds.len())];
        data.extend_from_slice(other);
        let _ = decode_all(&data);
    }
}
