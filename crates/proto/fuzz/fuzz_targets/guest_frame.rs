//! Coverage-guided fuzzing of the host's decoder for what a guest sends.
//! `cargo +nightly fuzz run guest_frame` from `crates/proto` (needs a nightly toolchain and
//! cargo-fuzz); the same corpus is replayed and mutated by `tests/fuzz_corpus.rs` on stable.

#![no_main]

use ignition_proto::{read_frame, FrameDecoder, GuestMessage, MAX_GUEST_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Streaming, fed in two pieces at an arbitrary cut.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut dec = FrameDecoder::new(MAX_GUEST_FRAME);
    dec.feed(&data[..cut]);
    while let Ok(Some(_)) = dec.next_message::<GuestMessage>() {}
    dec.feed(&data[cut..]);
    while let Ok(Some(_)) = dec.next_message::<GuestMessage>() {}
    // Blocking reader.
    let mut r = data;
    while let Ok(Some(_)) = read_frame::<GuestMessage>(&mut r, MAX_GUEST_FRAME) {}
});
