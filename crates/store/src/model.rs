//! What a function is, and what makes one valid.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use ignition_types::Runtime;

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The value is not acceptable.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// The field's name as the API spells it.
        field: &'static str,
        /// Why.
        why: String,
    },
}

fn invalid(field: &'static str, why: impl Into<String>) -> ModelError {
    ModelError::Invalid {
        field,
        why: why.into(),
    }
}

/// Lambda's bounds.
pub const MEMORY_MIB: std::ops::RangeInclusive<u32> = 128..=10240;
/// Seconds.
pub const TIMEOUT_S: std::ops::RangeInclusive<u32> = 1..=900;
const MAX_ENV_BYTES: usize = 4096;
const RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "PATH",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
];

/// Checks a function name: `[A-Za-z0-9_-]{1,64}`.
pub fn validate_name(name: &str) -> Result<(), ModelError> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(
            "name",
            format!("{name:?} must be 1 to 64 characters"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(invalid(
            "name",
            format!("{name:?} contains {c:?}; only letters, digits, '-' and '_' are allowed"),
        ));
    }
    Ok(())
}

/// A function's configuration as deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionConfig {
    /// Unique name.
    pub name: String,
    /// Runtime.
    pub runtime: Runtime,
    /// The runtime as it was named when the function was made or changed (`python3.11`,
    /// `provided.al2023`, ...): what Lambda's API answers. Empty: the canonical name.
    #[serde(default)]
    pub runtime_name: String,
    /// `FILE.FUNC` (Python) or a value passed to the bootstrap as `_HANDLER`.
    pub handler: String,
    /// VM memory.
    pub memory_mib: u32,
    /// Seconds before the VM is killed.
    pub timeout_s: u32,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Keep a VM for later invocations of this function (never of another) instead of a
    /// fresh one each time.
    #[serde(default)]
    pub reuse: bool,
    /// Egress rules (stored in their canonical text form). Empty: no egress at all.
    #[serde(default)]
    pub egress: Vec<ignition_types::EgressRule>,
    /// Free text (Lambda's `Description`), at most 256 characters.
    #[serde(default)]
    pub description: String,
    /// Layer versions whose contents the guest sees under `/opt`, in order (later ones over
    /// earlier ones), at most [`MAX_LAYERS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerRef>,
    /// The container image the function is packaged as (Lambda's `PackageType: Image`);
    /// `None` for a function whose code is a bundle (`Zip`). An image function's bundle is
    /// empty, and its runtime and handler are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ignition_types::FunctionImage>,
}

/// Layers a function may have (Lambda's limit).
pub const MAX_LAYERS: usize = 5;

/// A function's reference to one layer version: the version's ARN as the owner named it, and
/// the bundle it had when the function took it (a layer version is immutable; deleting it
/// does not change the functions that use it, as on Lambda).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// `arn:aws:lambda:REGION:ACCOUNT:layer:NAME:VERSION`.
    pub arn: String,
    /// SHA-256 of the layer's canonical tar, hex.
    pub code_sha256: String,
    /// Size of that tar in bytes.
    pub code_size: u64,
}

impl FunctionConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ModelError> {
        // Functions of a tenant other than the default are stored as `TENANT.NAME`.
        match self.name.split_once('.') {
            Some((tenant, name)) => {
                crate::credentials::validate_tenant(tenant).map_err(|e| invalid("name", e))?;
                validate_name(name)?;
            }
            None => validate_name(&self.name)?,
        }
        if let Some(image) = &self.image {
            validate_image(image)?;
            if !self.layers.is_empty() {
                return Err(invalid(
                    "layers",
                    "a function packaged as a container image has no layers",
                ));
            }
        } else if self.handler.is_empty() || self.handler.len() > 128 {
            return Err(invalid("handler", "must be 1 to 128 characters"));
        }
        if self.image.is_none() && self.runtime.handler_is_file_dot_function() {
            let (file, func) = self.handler.rsplit_once('.').ok_or_else(|| {
                invalid(
                    "handler",
                    format!("{:?} is not FILE.FUNCTION", self.handler),
                )
            })?;
            if file.is_empty()
                || func.is_empty()
                || file.starts_with('/')
                || file.contains("..")
                || self.handler_files().is_empty()
            {
                return Err(invalid(
                    "handler",
                    format!("{:?} is not FILE.FUNCTION", self.handler),
                ));
            }
        }
        if !MEMORY_MIB.contains(&self.memory_mib) {
            return Err(invalid(
                "memory",
                format!(
                    "{} MiB is not between {} and {} MiB",
                    self.memory_mib,
                    MEMORY_MIB.start(),
                    MEMORY_MIB.end()
                ),
            ));
        }
        if !TIMEOUT_S.contains(&self.timeout_s) {
            return Err(invalid(
                "timeout",
                format!(
                    "{} s is not between {} and {} seconds",
                    self.timeout_s,
                    TIMEOUT_S.start(),
                    TIMEOUT_S.end()
                ),
            ));
        }
        if self.description.chars().count() > 256 {
            return Err(invalid("description", "at most 256 characters"));
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(invalid(
                "layers",
                format!(
                    "{} layers; a function has at most {MAX_LAYERS}",
                    self.layers.len()
                ),
            ));
        }
        let mut total = 0;
        for (k, v) in &self.env {
            let ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(invalid(
                    "environment",
                    format!("{k:?} is not a valid variable name"),
                ));
            }
            if RESERVED_ENV.contains(&k.as_str()) || k.starts_with("AWS_LAMBDA_") {
                return Err(invalid("environment", format!("{k} is reserved")));
            }
            if v.contains('\0') {
                return Err(invalid(
                    "environment",
                    format!("the value of {k} contains a NUL byte"),
                ));
            }
            total += k.len() + v.len();
        }
        if total > MAX_ENV_BYTES {
            return Err(invalid(
                "environment",
                format!("{total} bytes exceed {MAX_ENV_BYTES}"),
            ));
        }
        Ok(())
    }

    /// The files the handler's module may be in, in the order its runtime looks for them:
    /// Python's `pkg.app.handler` is `pkg/app.py`; Node.js's `src/app.handler` is `src/app.js`,
    /// `src/app.mjs` or `src/app.cjs` (the module ends at the first dot after the last slash,
    /// as Lambda's Node.js runtime reads it). Empty for `provided` or a handler without a dot.
    pub fn handler_files(&self) -> Vec<String> {
        match self.runtime {
            Runtime::Python3 => self
                .handler
                .rsplit_once('.')
                .map(|(module, _)| vec![format!("{}.py", module.replace('.', "/"))])
                .unwrap_or_default(),
            Runtime::Nodejs => {
                let base = self.handler.rfind('/').map_or(0, |i| i + 1);
                match self.handler[base..].find('.') {
                    Some(dot) => {
                        let module = &self.handler[..base + dot];
                        ["js", "mjs", "cjs"]
                            .iter()
                            .map(|ext| format!("{module}.{ext}"))
                            .collect()
                    }
                    None => Vec::new(),
                }
            }
            Runtime::Provided => Vec::new(),
        }
    }
}

/// Lambda's limits on `ImageConfig`, and a sane one on `ImageUri`.
fn validate_image(image: &ignition_types::FunctionImage) -> Result<(), ModelError> {
    if image.uri.is_empty() || image.uri.len() > 1024 {
        return Err(invalid("image", "ImageUri must be 1 to 1024 characters"));
    }
    let digest_ok = image.digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if !digest_ok {
        return Err(invalid(
            "image",
            format!("{:?} is not a sha256 digest", image.digest),
        ));
    }
    let o = &image.overrides;
    for (field, list) in [("EntryPoint", &o.entry_point), ("Command", &o.command)] {
        let list = list.as_deref().unwrap_or_default();
        if list.len() > 1500 || list.iter().any(|a| a.len() > 1024 || a.contains('\0')) {
            return Err(invalid(
                "image",
                format!("ImageConfig.{field}: at most 1500 strings of at most 1024 bytes, no NUL"),
            ));
        }
    }
    if let Some(w) = &o.working_directory {
        if w.len() > 1000 || (!w.is_empty() && !w.starts_with('/')) || w.contains('\0') {
            return Err(invalid(
                "image",
                "ImageConfig.WorkingDirectory: an absolute path of at most 1000 characters",
            ));
        }
    }
    Ok(())
}

/// A stored function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// Its configuration.
    #[serde(flatten)]
    pub config: FunctionConfig,
    /// SHA-256 of the canonical code tar, hex.
    pub code_sha256: String,
    /// Size of the code tar in bytes.
    pub code_size: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FunctionConfig {
        FunctionConfig {
            name: "hello".into(),
            runtime: Runtime::Python3,
            runtime_name: String::new(),
            handler: "app.handler".into(),
            memory_mib: 128,
            timeout_s: 3,
            env: BTreeMap::new(),
            reuse: false,
            egress: Vec::new(),
            description: String::new(),
            layers: Vec::new(),
            image: None,
        }
    }

    #[test]
    fn names_follow_the_documented_alphabet() {
        assert!(validate_name("hello-World_1").is_ok());
        assert!(validate_name(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "../x", "é", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let field = |c: FunctionConfig| match c.validate() {
            Err(ModelError::Invalid { field, .. }) => field,
            Ok(()) => "ok",
        };
        assert_eq!(field(config()), "ok");
        assert_eq!(
            field(FunctionConfig {
                memory_mib: 64,
                ..config()
            }),
            "memory"
        );
        assert_eq!(
            field(FunctionConfig {
                timeout_s: 0,
                ..config()
            }),
            "timeout"
        );
        assert_eq!(
            field(FunctionConfig {
                handler: "nodot".into(),
                ..config()
            }),
            "handler"
        );
        let mut env = BTreeMap::new();
        env.insert("AWS_LAMBDA_X".into(), "1".into());
        assert_eq!(field(FunctionConfig { env, ..config() }), "environment");
        let mut env = BTreeMap::new();
        env.insert("AWS_REGION".into(), "eu-west-1".into());
        assert_eq!(field(FunctionConfig { env, ..config() }), "environment");
        let mut env = BTreeMap::new();
        env.insert("1BAD".into(), "1".into());
        assert_eq!(field(FunctionConfig { env, ..config() }), "environment");
    }

    #[test]
    fn runtimes_accept_lambda_names() {
        assert_eq!(Runtime::parse("python3.11"), Ok(Runtime::Python3));
        assert_eq!(Runtime::parse("provided.al2023"), Ok(Runtime::Provided));
        assert_eq!(Runtime::parse("nodejs18.x"), Ok(Runtime::Nodejs));
        assert!(Runtime::parse("nodejs20.x").is_err());
        assert_eq!(config().handler_files(), ["app.py"]);
        let node = |handler: &str| FunctionConfig {
            runtime: Runtime::Nodejs,
            handler: handler.into(),
            ..config()
        };
        assert_eq!(
            node("src/app.handler").handler_files(),
            ["src/app.js", "src/app.mjs", "src/app.cjs"]
        );
        assert_eq!(
            node("v1.2/index.api.get").handler_files(),
            ["v1.2/index.js", "v1.2/index.mjs", "v1.2/index.cjs"],
            "the module ends at the first dot after the last slash"
        );
        assert!(node("index").handler_files().is_empty());
        assert!(
            node("v1.2/index").validate().is_err(),
            "no dot after the last slash"
        );
        assert_eq!(
            node("../up.handler").validate().unwrap_err().to_string(),
            FunctionConfig {
                handler: "../up.handler".into(),
                ..config()
            }
            .validate()
            .unwrap_err()
            .to_string(),
            "a Node.js handler is checked as a Python one"
        );
    }
}
