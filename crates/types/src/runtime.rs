//! [`Runtime`]: the runtime interface that runs a function's handler inside the guest.

use serde::{Deserialize, Serialize};

/// The runtimes Ignition runs. The variant order is part of the guest protocol's wire format
/// (postcard encodes the index): append only, with a protocol version bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Python 3: Ignition's bootstrap imports `FILE.FUNC` and calls `handler(event, context)`.
    Python3,
    /// The bundle's own `bootstrap` executable speaks the Lambda Runtime API.
    Provided,
    /// Node.js: Ignition's runtime client loads `FILE.EXPORT` (CommonJS or an ES module) and
    /// calls it as Lambda's Node.js runtime does.
    Nodejs,
}

/// Lambda's name for the guest image's Python (Debian 12's).
pub const GUEST_PYTHON: &str = "python3.11";

/// Lambda's name for the guest image's Node.js (Debian 12's, major version 18).
pub const GUEST_NODEJS: &str = "nodejs18.x";

/// The runtime names accepted, as Lambda names them (and `python3` and `nodejs`, the CLI's short
/// forms).
pub const SUPPORTED_RUNTIMES: [&str; 7] = [
    GUEST_PYTHON,
    "python3",
    GUEST_NODEJS,
    "nodejs",
    "provided.al2023",
    "provided.al2",
    "provided",
];

/// A runtime name Ignition does not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid runtime: {0:?} is not supported; the guest image runs python3.11 (python3 for short), nodejs18.x (nodejs for short), provided.al2023, provided.al2 and provided"
)]
pub struct UnknownRuntime(pub String);

impl Runtime {
    /// Parses a runtime name: one of [`SUPPORTED_RUNTIMES`], the runtimes the guest image has.
    pub fn parse(s: &str) -> Result<Self, UnknownRuntime> {
        match s {
            "python3" | GUEST_PYTHON => Ok(Self::Python3),
            "nodejs" | GUEST_NODEJS => Ok(Self::Nodejs),
            "provided" | "provided.al2" | "provided.al2023" => Ok(Self::Provided),
            other => Err(UnknownRuntime(other.to_owned())),
        }
    }

    /// The canonical name (`python3`, `nodejs`, `provided`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python3 => "python3",
            Self::Provided => "provided",
            Self::Nodejs => "nodejs",
        }
    }

    /// Lambda's name for this runtime as the guest image has it (`python3.11`, `nodejs18.x`).
    pub fn lambda_name(self) -> &'static str {
        match self {
            Self::Python3 => GUEST_PYTHON,
            Self::Provided => "provided",
            Self::Nodejs => GUEST_NODEJS,
        }
    }

    /// Whether the handler names a file of the bundle and an export of it (`FILE.FUNCTION`), as
    /// the runtimes Ignition ships read it; a `provided` bootstrap reads it as it likes.
    pub fn handler_is_file_dot_function(self) -> bool {
        matches!(self, Self::Python3 | Self::Nodejs)
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_lambda_names_and_round_trips_the_canonical_ones() {
        assert_eq!(Runtime::parse("python3.11"), Ok(Runtime::Python3));
        assert_eq!(Runtime::parse("provided.al2023"), Ok(Runtime::Provided));
        assert!(
            Runtime::parse("python3.12").is_err(),
            "not the guest's Python"
        );
        assert_eq!(Runtime::parse("nodejs18.x"), Ok(Runtime::Nodejs));
        assert!(
            Runtime::parse("nodejs20.x").is_err(),
            "not the guest's Node.js"
        );
        for s in SUPPORTED_RUNTIMES {
            assert!(Runtime::parse(s).is_ok(), "{s}");
        }
        let e = Runtime::parse("java21").unwrap_err().to_string();
        assert!(
            e.contains("python3.11") && e.contains("nodejs18.x") && e.contains("provided.al2023"),
            "{e}"
        );
        assert!(Runtime::parse("").is_err());
        for r in [Runtime::Python3, Runtime::Provided, Runtime::Nodejs] {
            assert_eq!(Runtime::parse(r.as_str()), Ok(r));
            assert_eq!(Runtime::parse(r.lambda_name()), Ok(r));
        }
    }
}
