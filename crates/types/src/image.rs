//! A function packaged as a container image: which image (pinned to its manifest's digest at
//! deploy time, so a tag that moves later changes nothing until the code is updated), how the
//! image says to run it, and what the function's `ImageConfig` overrides.

use serde::{Deserialize, Serialize};

/// The image configuration's process settings, as the image states them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRunConfig {
    /// `ENTRYPOINT`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `CMD`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `ENV`, as `NAME=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WORKDIR` (empty: `/`).
    #[serde(default)]
    pub working_dir: String,
    /// `USER`: a name or a uid, either with `:group` (empty: root).
    #[serde(default)]
    pub user: String,
}

/// Lambda's `ImageConfig`: what a function overrides of its image's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOverrides {
    /// Replaces `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    /// Replaces `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
}

impl ImageOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.entry_point.is_none() && self.command.is_none() && self.working_directory.is_none()
    }
}

/// A function's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionImage {
    /// The image as the owner named it (`ImageUri`): a registry reference, or
    /// `ignition-archive:sha256:...` for an image uploaded as an archive.
    pub uri: String,
    /// The reference pinned to the manifest it resolved to (`REPOSITORY@sha256:...`); empty for
    /// an archive's image, which has no registry to pull it from again.
    #[serde(default)]
    pub resolved_uri: String,
    /// `sha256:<hex>` of the manifest (of the configuration, for older `docker save` output).
    pub digest: String,
    /// The image's own settings.
    #[serde(default)]
    pub run: ImageRunConfig,
    /// The function's overrides.
    #[serde(default, skip_serializing_if = "ImageOverrides::is_empty")]
    pub overrides: ImageOverrides,
}

/// The process a VM starts for an image function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageProcess {
    /// The program and its arguments (`ENTRYPOINT` then `CMD`, as overridden).
    pub argv: Vec<String>,
    /// The image's environment, `NAME=value`.
    pub env: Vec<String>,
    /// The working directory (absolute).
    pub working_dir: String,
    /// `USER` as the image states it.
    pub user: String,
}

/// The prefix of the `ImageUri` of an image uploaded as an archive.
pub const ARCHIVE_URI_PREFIX: &str = "ignition-archive:";

impl FunctionImage {
    /// What to run: the overrides applied to the image's settings as a container runtime
    /// does (an overridden entry point drops the image's `CMD` unless a command is given too).
    pub fn process(&self) -> ImageProcess {
        let o = &self.overrides;
        let entrypoint = o
            .entry_point
            .clone()
            .unwrap_or_else(|| self.run.entrypoint.clone());
        let cmd = match (&o.command, &o.entry_point) {
            (Some(c), _) => c.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => self.run.cmd.clone(),
        };
        let working_dir = o
            .working_directory
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| self.run.working_dir.clone());
        ImageProcess {
            argv: entrypoint.into_iter().chain(cmd).collect(),
            env: self.run.env.clone(),
            working_dir: if working_dir.is_empty() {
                "/".to_owned()
            } else {
                working_dir
            },
            user: self.run.user.clone(),
        }
    }

    /// The manifest digest's hex, which names the image's filesystem and snapshots.
    pub fn digest_hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(overrides: ImageOverrides) -> FunctionImage {
        FunctionImage {
            uri: "r/x:1".into(),
            resolved_uri: String::new(),
            digest: format!("sha256:{}", "a".repeat(64)),
            run: ImageRunConfig {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["app.handler".into()],
                env: vec!["A=b".into()],
                working_dir: String::new(),
                user: "1000".into(),
            },
            overrides,
        }
    }

    #[test]
    fn overrides_apply_as_a_container_runtime_applies_them() {
        let p = image(ImageOverrides::default()).process();
        assert_eq!(p.argv, ["/entry", "app.handler"]);
        assert_eq!(p.working_dir, "/");
        let p = image(ImageOverrides {
            command: Some(vec!["other.h".into()]),
            ..Default::default()
        })
        .process();
        assert_eq!(p.argv, ["/entry", "other.h"]);
        let p = image(ImageOverrides {
            entry_point: Some(vec!["/bin/sh".into(), "-c".into()]),
            working_directory: Some("/work".into()),
            ..Default::default()
        })
        .process();
        assert_eq!(p.argv, ["/bin/sh", "-c"]);
        assert_eq!(p.working_dir, "/work");
    }
}
