//! Writes the seed corpus of the `guest_frame` fuzz target (`crates/proto/fuzz/corpus`): one
//! valid frame of every guest message, and the classic broken ones.
//!
//! `cargo run -p ignition-proto --example write_corpus`

use std::path::Path;

use ignition_proto::{encode, ErrorBody, GuestMessage, InvokeResult, Outcome, VERSION};

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/guest_frame");
    std::fs::create_dir_all(&dir)?;
    let result = |outcome| {
        GuestMessage::Result(InvokeResult {
            request_id: "req-1".into(),
            outcome,
            logs: b"log line\n".to_vec(),
            logs_truncated: false,
            duration_ms: 12,
            network_us: 0,
        })
    };
    let err = ErrorBody {
        error_type: "ValueError".into(),
        error_message: "bad".into(),
        stack_trace: vec!["  File \"app.py\", line 1".into()],
    };
    let valid = [
        (
            "ready",
            GuestMessage::Ready {
                agent_version: "0.1.0".into(),
                kernel_release: "6.1.0".into(),
            },
        ),
        ("loaded", GuestMessage::Loaded),
        ("warmed", GuestMessage::Warmed),
        (
            "fatal",
            GuestMessage::Fatal {
                message: "boom".into(),
            },
        ),
        (
            "result-ok",
            result(Outcome::Success(b"{\"ok\":true}".to_vec())),
        ),
        ("result-error", result(Outcome::FunctionError(err.clone()))),
        ("result-init-error", result(Outcome::InitError(err))),
        (
            "result-timeout",
            result(Outcome::Timeout { after_ms: 3000 }),
        ),
    ];
    let mut all = Vec::new();
    for (name, msg) in &valid {
        let frame = encode(msg).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(name), &frame)?;
        all.extend_from_slice(&frame);
    }
    std::fs::write(dir.join("stream-of-all"), &all)?;
    std::fs::write(dir.join("truncated"), &all[..all.len() / 3])?;
    std::fs::write(
        dir.join("oversize"),
        [b'I', b'G', VERSION, 0, 0xff, 0xff, 0xff, 0xff],
    )?;
    std::fs::write(
        dir.join("bad-version"),
        [b'I', b'G', VERSION + 1, 0, 0, 0, 0, 1, 1],
    )?;
    std::fs::write(dir.join("garbage"), [0x5a; 64])?;
    Ok(())
}
