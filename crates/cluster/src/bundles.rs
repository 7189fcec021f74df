//! Code bundles of stolen invocations: the local store's when it has them, else fetched by
//! hash from the invocation's origin, checked, and kept in a bounded cache so that a thief pays
//! the transfer once per bundle, not once per invocation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// A byte-bounded cache of bundles by SHA-256; the oldest go first.
#[derive(Debug)]
pub(crate) struct BundleCache {
    inner: Mutex<Inner>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Inner {
    by_hash: HashMap<String, Arc<Vec<u8>>>,
    order: VecDeque<String>,
    bytes: usize,
}

impl BundleCache {
    /// A cache holding at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limit,
        }
    }

    /// The bundle with this hash, if cached.
    pub(crate) fn get(&self, sha256: &str) -> Option<Arc<Vec<u8>>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_hash.get(sha256).cloned()
    }

    /// Keeps `tar` under `sha256` if it matches that hash; whether it did.
    pub(crate) fn put_checked(&self, sha256: &str, tar: Vec<u8>) -> Option<Arc<Vec<u8>>> {
        if ignition_store::sha256_hex(&tar) != sha256 || tar.len() > self.limit {
            return None;
        }
        let tar = Arc::new(tar);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.by_hash.contains_key(sha256) {
            return Some(tar);
        }
        while inner.bytes + tar.len() > self.limit {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.by_hash.remove(&old) {
                inner.bytes -= b.len();
            }
        }
        inner.bytes += tar.len();
        inner.order.push_back(sha256.to_owned());
        inner.by_hash.insert(sha256.to_owned(), Arc::clone(&tar));
        Some(tar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_bundles_that_match_their_hash_within_the_limit() {
        let c = BundleCache::new(10);
        let (a, b) = (b"aaaaaa".to_vec(), b"bbbbbb".to_vec());
        let (ha, hb) = (
            ignition_store::sha256_hex(&a),
            ignition_store::sha256_hex(&b),
        );
        assert!(c.put_checked(&hb, a.clone()).is_none(), "wrong hash");
        assert!(c.put_checked(&ha, a.clone()).is_some());
        assert_eq!(c.get(&ha).as_deref(), Some(&a));
        assert!(c.put_checked(&hb, b.clone()).is_some());
        assert!(c.get(&ha).is_none(), "the oldest made room");
        assert_eq!(c.get(&hb).as_deref(), Some(&b));
        assert!(c
            .put_checked(&ignition_store::sha256_hex(&[0; 11]), vec![0; 11])
            .is_none());
    }
}
