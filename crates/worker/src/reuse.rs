//! Idle VMs kept for a function's later invocations (`--reuse`): each serves only the function
//! (and the snapshot key, so the code and configuration) it ran, for at most the keep-alive,
//! and the node keeps at most `cap` of them, the longest idle going first when another comes.
//!
//! An idle VM holds no admission permit, so without the cap every function that reuses would
//! keep up to its peak concurrency of VMs, and many functions could hold many times
//! `--max-vms` idle VMs and their memory. The bookkeeping is generic over the VM so that it is
//! tested without one.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

struct Idle<G> {
    key: String,
    vm: G,
    since: Instant,
}

/// The idle VMs of every function that reuses, by function name.
pub(crate) struct ReusedVms<G> {
    by_function: HashMap<String, Vec<Idle<G>>>,
    cap: usize,
}

impl<G> ReusedVms<G> {
    /// At most `cap` (at least 1) idle VMs on the node.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            by_function: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// Keeps `vm`, idle since `now`, for `function`'s later invocations with snapshot key `key`.
    /// Returns what must go to stay within the cap: the longest idle VMs, this one's function's
    /// included.
    pub(crate) fn keep(&mut self, function: &str, key: String, vm: G, now: Instant) -> Vec<G> {
        self.by_function
            .entry(function.to_owned())
            .or_default()
            .push(Idle {
                key,
                vm,
                since: now,
            });
        let mut evicted = Vec::new();
        while self.len() > self.cap {
            match self.remove_longest_idle() {
                Some(vm) => evicted.push(vm),
                None => break,
            }
        }
        evicted
    }

    /// The most recently kept VM of `function` with snapshot key `key`, if any: the others,
    /// idle longer, are the first to expire when fewer are needed.
    pub(crate) fn take(&mut self, function: &str, key: &str) -> Option<G> {
        let list = self.by_function.get_mut(function)?;
        let at = list.iter().rposition(|x| x.key == key)?;
        let idle = list.remove(at);
        if list.is_empty() {
            self.by_function.remove(function);
        }
        Some(idle.vm)
    }

    /// Removes the VMs idle for longer than `keep_alive` at `now`.
    pub(crate) fn expire(&mut self, now: Instant, keep_alive: Duration) -> Vec<G> {
        let mut out = Vec::new();
        for list in self.by_function.values_mut() {
            let (old, keep): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|x| now.saturating_duration_since(x.since) > keep_alive);
            *list = keep;
            out.extend(old.into_iter().map(|x| x.vm));
        }
        self.by_function.retain(|_, v| !v.is_empty());
        out
    }

    /// Removes every idle VM of `function` (its code or configuration changed, or it is gone).
    pub(crate) fn remove_function(&mut self, function: &str) -> Vec<G> {
        let list = self.by_function.remove(function).unwrap_or_default();
        list.into_iter().map(|x| x.vm).collect()
    }

    /// Removes the idle VMs of every function `matches` names.
    pub(crate) fn remove_matching(&mut self, matches: &dyn Fn(&str) -> bool) -> Vec<G> {
        let names: Vec<String> = self
            .by_function
            .keys()
            .filter(|k| matches(k))
            .cloned()
            .collect();
        names.iter().flat_map(|n| self.remove_function(n)).collect()
    }

    /// Removes every idle VM.
    pub(crate) fn drain(&mut self) -> Vec<G> {
        self.by_function
            .drain()
            .flat_map(|(_, v)| v)
            .map(|x| x.vm)
            .collect()
    }

    /// Idle VMs on the node (at most the cap, a handful: counted rather than tracked).
    fn len(&self) -> usize {
        self.by_function.values().map(Vec::len).sum()
    }

    fn remove_longest_idle(&mut self) -> Option<G> {
        let (function, at) = self
            .by_function
            .iter()
            .flat_map(|(f, list)| list.iter().enumerate().map(move |(i, x)| (x.since, f, i)))
            .min_by_key(|(since, _, _)| *since)
            .map(|(_, f, i)| (f.clone(), i))?;
        let list = self.by_function.get_mut(&function)?;
        let idle = list.remove(at);
        if list.is_empty() {
            self.by_function.remove(&function);
        }
        Some(idle.vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, s: u64) -> Instant {
        base + Duration::from_secs(s)
    }

    #[test]
    fn bookkeeping_without_vms_serves_only_the_same_function_and_key() {
        let t = Instant::now();
        let mut r = ReusedVms::new(8);
        assert!(r.keep("a", "k1".into(), "a-vm", t).is_empty());
        assert_eq!(r.take("b", "k1"), None, "never across functions");
        assert_eq!(
            r.take("a", "k2"),
            None,
            "never across code or configuration"
        );
        assert_eq!(r.take("a", "k1"), Some("a-vm"));
        assert_eq!(
            r.take("a", "k1"),
            None,
            "a VM serves one invocation at a time"
        );
    }

    #[test]
    fn bookkeeping_without_vms_hands_out_the_most_recently_kept_first() {
        let t = Instant::now();
        let mut r = ReusedVms::new(8);
        r.keep("a", "k".into(), 1, at(t, 0));
        r.keep("a", "k".into(), 2, at(t, 1));
        assert_eq!(r.take("a", "k"), Some(2));
        assert_eq!(r.take("a", "k"), Some(1));
    }

    #[test]
    fn bookkeeping_without_vms_evicts_the_longest_idle_past_the_cap() {
        let t = Instant::now();
        let mut r = ReusedVms::new(3);
        assert!(r.keep("a", "k".into(), "a1", at(t, 0)).is_empty());
        assert!(r.keep("b", "k".into(), "b1", at(t, 1)).is_empty());
        assert!(r.keep("a", "k".into(), "a2", at(t, 2)).is_empty());
        // Many functions, each within its own concurrency, still share the node's cap.
        assert_eq!(r.keep("c", "k".into(), "c1", at(t, 3)), vec!["a1"]);
        assert_eq!(r.keep("d", "k".into(), "d1", at(t, 4)), vec!["b1"]);
        let mut left = r.drain();
        left.sort_unstable();
        assert_eq!(left, vec!["a2", "c1", "d1"]);
        assert_eq!(r.take("a", "k"), None);
    }

    #[test]
    fn bookkeeping_without_vms_expires_after_the_keep_alive_and_by_function() {
        let t = Instant::now();
        let mut r = ReusedVms::new(8);
        r.keep("a", "k".into(), "a-old", at(t, 0));
        r.keep("a", "k".into(), "a-new", at(t, 50));
        r.keep("b", "k".into(), "b", at(t, 10));
        assert_eq!(r.expire(at(t, 65), Duration::from_secs(60)), vec!["a-old"]);
        assert_eq!(r.remove_function("b"), vec!["b"]);
        assert_eq!(r.len(), 1, "only what is left counts against the cap");
        assert_eq!(r.take("a", "k"), Some("a-new"));
    }
}
