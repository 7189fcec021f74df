//! Ignition's domain types, each defined once and parsed once, at the edge where text comes in
//! (the API, the CLI, another node's message); every crate after that holds them typed.
//!
//! - [`Runtime`]: what runs a function's handler in the guest.
//! - [`egress`]: the destinations a function's VM may open connections to.
//! - [`FunctionId`]: whose function, by which name.
//! - [`FunctionImage`]: a function packaged as a container image.
//! - [`TenantQuotas`]: how much of a node a tenant may hold or use.

mod account;
pub mod egress;
mod function;
pub mod image;
mod quota;
mod runtime;

pub use account::{account_id, is_account_id, DEFAULT_ACCOUNT_ID};
pub use egress::{parse_rules, EgressRule, Ipv4Net, PolicyError, Protocol};
pub use function::{FunctionId, Target, DEFAULT_TENANT};
pub use image::{FunctionImage, ImageOverrides, ImageProcess, ImageRunConfig, ARCHIVE_URI_PREFIX};
pub use quota::{QuotaOverrides, TenantQuotas};
pub use runtime::{Runtime, UnknownRuntime, GUEST_NODEJS, GUEST_PYTHON, SUPPORTED_RUNTIMES};
