//! Finding the guest agent binary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

const AGENT: &str = "ignition-agent";
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The agent: the explicit path, else where `cargo build --target x86_64-unknown-linux-gnu` puts
/// it in this binary's target directory, else next to this executable.
pub(crate) fn agent(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let Some(dir) = exe.parent() else {
        bail!("cannot tell where {} lives", exe.display());
    };
    let mut candidates = Vec::new();
    // target/{debug,release}/ignition or target/{debug,release}/deps/test-binary.
    for up in [dir.parent(), dir.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
    {
        for profile in ["release", "debug"] {
            candidates.push(up.join(STATIC_TARGET).join(profile).join(AGENT));
        }
    }
    // Last: an installed layout with the agent beside the binary. (In a cargo target directory
    // the file beside it is the dynamically linked build, which the image builder refuses.)
    candidates.push(dir.join(AGENT));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "guest agent not found (looked at {}); build it with \
         RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p ignition-agent \
         --target {STATIC_TARGET}, or pass --agent",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
