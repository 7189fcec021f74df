//! The store: everything a node keeps beyond its caches (functions and their code, versions,
//! aliases, keys, sessions, policies, tags, layers, URLs, schedules, quotas, asynchronous
//! events, invocation logs, concurrency permits). Two backends behind one [`Store`]: SQLite in
//! the node's data directory (a single node), and PostgreSQL, shared by a cluster's nodes
//! ([`pg`], through a small pool of connections, with each node's cache of it kept current by
//! notifications).
//!
//! Each part is written once against one SQL surface (`sql.rs`) and tested on both backends.
//! Bundles are stored once per content hash (SHA-256 of the canonical tar), so redeploying the
//! same code costs nothing and a function's record names exactly the code it runs. A bundle no
//! function refers to any more is removed in the same transaction that dropped the last reference.

mod bundles;
mod cache;
mod credentials;
mod event_configs;
mod events;
mod functions;
mod images;
mod layers;
mod logs;
mod model;
mod permits;
pub mod pg;
mod policies;
mod pool;
mod provisioned;
mod quotas;
mod reservations;
mod schedules;
mod sessions;
mod sql;
mod sqlite;
mod store;
mod tags;
#[cfg(test)]
mod testing;
mod urls;
mod versions;

pub use credentials::{validate_tenant, AccessKey, OPERATOR};
pub use event_configs::EventInvokeConfig;
pub use events::{Attempt, Enqueued, Event, NewEvent, KEEP_FAILED};
pub use layers::{validate_layer_name, LayerMeta, LayerVersion};
pub use logs::{LogEntry, KEEP_LOGS, MAX_LOG_BYTES};
pub use model::{
    validate_name, FunctionConfig, FunctionRecord, LayerRef, ModelError, Runtime, MAX_LAYERS,
    MEMORY_MIB, TIMEOUT_S,
};
pub use policies::{Added, MAX_POLICY_BYTES};
pub use provisioned::Provisioned;
pub use quotas::{Quota, TenantUsage};
pub use schedules::{Fired, Firing, ScheduleRecord};
pub use sessions::{NewSession, Session};
pub use store::{sha256_hex, Store, StoreError};
pub use tags::MAX_TAGS;
pub use urls::{is_url_id, Cors, FunctionUrl, UrlAuth};
pub use versions::{validate_alias, Alias, Routing};
