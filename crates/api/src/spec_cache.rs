//! Functions as the worker takes them (`FunctionSpec`, the code bundle included), kept in
//! memory and shared: an invocation of a function whose spec is cached reads no bundle from the
//! store and copies none; every invocation of it, queued or running, holds the same one. Keyed
//! by what a spec is made of (the worker's name for the function or version, the code's hash,
//! a digest of the configuration), so a change is a new entry and the old one ages out. Bounded
//! by the bytes of code it holds; the least recently used go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ignition_proto::FunctionSpec;
use sha2::{Digest, Sha256};

/// The cache.
#[derive(Debug)]
pub struct SpecCache {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, (Arc<FunctionSpec>, u64)>,
    bytes: u64,
    tick: u64,
    hits: u64,
    misses: u64,
}

/// What the cache holds and how it did, for `/v1/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpecCacheStats {
    /// Specs held.
    pub entries: u64,
    /// Bytes of code they hold.
    pub bytes: u64,
    /// The most it holds.
    pub budget: u64,
    /// Invocations that found their spec.
    pub hits: u64,
    /// Invocations that loaded it from the store.
    pub misses: u64,
}

/// The cache key of a spec: its worker name, its code, and a digest of its configuration.
pub(crate) fn key(spec_name: &str, code_sha256: &str, config: &impl serde::Serialize) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(config).unwrap_or_default());
    format!("{spec_name}\n{code_sha256}\n{}", hex::encode(h.finalize()))
}

impl SpecCache {
    /// Holds at most `budget` bytes of code.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spec under `key`, if held.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<FunctionSpec>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        match inner.entries.get_mut(key) {
            Some((spec, used)) => {
                *used = tick;
                let spec = Arc::clone(spec);
                inner.hits += 1;
                Some(spec)
            }
            None => {
                inner.misses += 1;
                None
            }
        }
    }

    /// Keeps `spec` under `key`, evicting the least recently used until it fits; one larger
    /// than the whole budget is not kept.
    pub(crate) fn insert(&self, key: String, spec: Arc<FunctionSpec>) {
        let size = spec.code.held_bytes() as u64;
        if size > self.budget {
            return;
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((old, _)) = inner.entries.insert(key, (spec, tick)) {
            inner.bytes -= old.code.held_bytes() as u64;
        }
        inner.bytes += size;
        while inner.bytes > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((gone, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.code.held_bytes() as u64;
            }
        }
    }

    /// What it holds and how it did.
    pub fn stats(&self) -> SpecCacheStats {
        let inner = self.lock();
        SpecCacheStats {
            entries: inner.entries.len() as u64,
            bytes: inner.bytes,
            budget: self.budget,
            hits: inner.hits,
            misses: inner.misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, bytes: usize) -> Arc<FunctionSpec> {
        Arc::new(FunctionSpec {
            name: name.into(),
            runtime: ignition_proto::Runtime::Python3,
            handler: "a.b".into(),
            memory_mib: 128,
            env: Vec::new(),
            code: ignition_proto::Code::Tar(vec![0; bytes]),
            display_name: name.into(),
            version: "$LATEST".into(),
        })
    }

    #[test]
    fn the_least_recently_used_go_past_the_budget() {
        let c = SpecCache::new(100);
        c.insert("a".into(), spec("a", 40));
        c.insert("b".into(), spec("b", 40));
        assert!(c.get("a").is_some(), "a is now the most recent");
        c.insert("c".into(), spec("c", 40));
        assert!(c.get("b").is_none(), "b went");
        assert!(c.get("a").is_some() && c.get("c").is_some());
        c.insert("huge".into(), spec("huge", 101));
        assert!(c.get("huge").is_none(), "larger than the budget: not kept");
        let s = c.stats();
        assert_eq!((s.entries, s.bytes), (2, 80));
        assert_eq!((s.hits, s.misses), (3, 2));
        let shared_a = c.get("a").unwrap();
        assert!(
            Arc::ptr_eq(&shared_a, &c.get("a").unwrap()),
            "one copy, shared"
        );
    }

    #[test]
    fn a_changed_configuration_is_another_key() {
        assert_ne!(
            key("f", "h", &("memory", 128)),
            key("f", "h", &("memory", 256))
        );
        assert_ne!(key("f", "h1", &1), key("f", "h2", &1));
        assert_eq!(key("f", "h", &1), key("f", "h", &1));
    }
}
