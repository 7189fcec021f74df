//! What an origin node has lent to thieves: which attempt of which invocation, to whom, until
//! when. Pure bookkeeping (the caller passes the clock), so the rules are tested on their own.
//!
//! The rules that keep an invocation from being lost or run twice at once:
//! - an invocation is in exactly one place: the origin's queue, running at the origin, or here;
//! - each hand-over is a new attempt; only the current attempt may complete or renew;
//! - a lease not renewed by its deadline is reclaimed, and the invocation goes back to the
//!   queue as a new attempt. The thief stops an invocation whose lease it could not renew
//!   before the origin's deadline passes (it renews at a fraction of the lease, and gives up
//!   a margin earlier than the origin), so the old attempt has ended when the new one starts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One lent invocation.
#[derive(Debug)]
struct Lent<T> {
    item: T,
    thief: String,
    attempt: u32,
    deadline: Instant,
}

/// Invocations lent to thieves, by id.
#[derive(Debug)]
pub(crate) struct Ledger<T> {
    lent: HashMap<String, Lent<T>>,
    lease: Duration,
}

impl<T> Ledger<T> {
    /// A ledger whose leases last `lease` past the last renewal.
    pub(crate) fn new(lease: Duration) -> Self {
        Self {
            lent: HashMap::new(),
            lease,
        }
    }

    /// Records `item` (invocation `id`, attempt `attempt`) as lent to `thief` from `now`.
    pub(crate) fn lend(&mut self, id: String, attempt: u32, thief: &str, item: T, now: Instant) {
        self.lent.insert(
            id,
            Lent {
                item,
                thief: thief.to_owned(),
                attempt,
                deadline: now + self.lease,
            },
        );
    }

    /// The thief's result for `id`'s `attempt`: the item, if that attempt is still lent to it.
    pub(crate) fn complete(&mut self, id: &str, attempt: u32, thief: &str) -> Option<T> {
        match self.lent.get(id) {
            Some(l) if l.attempt == attempt && l.thief == thief => {
                self.lent.remove(id).map(|l| l.item)
            }
            _ => None,
        }
    }

    /// Extends `id`'s lease if `attempt` is still lent to `thief`; whether it is.
    pub(crate) fn renew(&mut self, id: &str, attempt: u32, thief: &str, now: Instant) -> bool {
        match self.lent.get_mut(id) {
            Some(l) if l.attempt == attempt && l.thief == thief => {
                l.deadline = now + self.lease;
                true
            }
            _ => false,
        }
    }

    /// Takes back every lease whose deadline passed: `(id, attempt, thief, item)`.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<(String, u32, String, T)> {
        let ids: Vec<String> = self
            .lent
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                self.lent
                    .remove(&id)
                    .map(|l| (id, l.attempt, l.thief, l.item))
            })
            .collect()
    }

    /// Invocations lent now.
    pub(crate) fn len(&self) -> usize {
        self.lent.len()
    }

    /// Takes back everything (the node is stopping).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.lent.drain().map(|(_, l)| l.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LEASE: Duration = Duration::from_secs(3);

    #[test]
    fn only_the_current_attempt_of_the_right_thief_completes() {
        let t0 = Instant::now();
        let mut l = Ledger::new(LEASE);
        l.lend("a".into(), 1, "n2", "job-a", t0);
        assert_eq!(l.complete("a", 1, "n3"), None, "another thief");
        assert_eq!(l.complete("a", 2, "n2"), None, "another attempt");
        assert_eq!(l.complete("a", 1, "n2"), Some("job-a"));
        assert_eq!(l.complete("a", 1, "n2"), None, "completes once");
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn renewals_push_the_deadline_and_expiry_takes_back_the_rest() {
        let t0 = Instant::now();
        let mut l = Ledger::new(LEASE);
        l.lend("a".into(), 1, "n2", 'a', t0);
        l.lend("b".into(), 1, "n2", 'b', t0);
        assert!(l.renew("a", 1, "n2", t0 + Duration::from_secs(2)));
        assert!(!l.renew("b", 2, "n2", t0 + Duration::from_secs(2)));
        assert!(l.expired(t0 + Duration::from_millis(2999)).is_empty());
        let gone = l.expired(t0 + LEASE);
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].0.as_str(), gone[0].3), ("b", 'b'));
        assert!(
            !l.renew("b", 1, "n2", t0 + LEASE),
            "a reclaimed lease stays reclaimed"
        );
        assert_eq!(
            l.expired(t0 + Duration::from_secs(5)).len(),
            1,
            "a, 5 s after its renewal"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Lend(u8, u8),
        Complete(u8, u8),
        Renew(u8, u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 0u8..3).prop_map(|(i, t)| Op::Lend(i, t)),
            (0u8..6, 0u8..3).prop_map(|(i, t)| Op::Complete(i, t)),
            (0u8..6, 0u8..3).prop_map(|(i, t)| Op::Renew(i, t)),
            (0u16..2000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Whatever happens, every lent invocation ends exactly once: completed by its current
        /// attempt or reclaimed, and a reclaimed attempt can neither complete nor renew.
        #[test]
        fn every_lent_invocation_ends_exactly_once(ops in prop::collection::vec(op(), 1..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut l = Ledger::new(LEASE);
            let mut attempts = [0u32; 6];
            let mut lent = [false; 6];
            let mut ended = 0usize;
            let mut lends = 0usize;
            for op in ops {
                match op {
                    Op::Lend(i, t) if !lent[i as usize] => {
                        attempts[i as usize] += 1;
                        lent[i as usize] = true;
                        lends += 1;
                        l.lend(i.to_string(), attempts[i as usize], &t.to_string(), i, now);
                    }
                    Op::Lend(..) => {}
                    Op::Complete(i, t) => {
                        if let Some(item) = l.complete(&i.to_string(), attempts[i as usize], &t.to_string()) {
                            prop_assert_eq!(item, i);
                            prop_assert!(lent[i as usize]);
                            lent[i as usize] = false;
                            ended += 1;
                        }
                        // An older attempt never completes.
                        prop_assert!(l.complete(&i.to_string(), attempts[i as usize].wrapping_sub(1), &t.to_string()).is_none());
                    }
                    Op::Renew(i, t) => {
                        let ok = l.renew(&i.to_string(), attempts[i as usize], &t.to_string(), now);
                        prop_assert!(!ok || lent[i as usize]);
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(u64::from(ms));
                        for (id, attempt, _, item) in l.expired(now) {
                            let i = item as usize;
                            prop_assert_eq!(id, item.to_string());
                            prop_assert_eq!(attempt, attempts[i]);
                            prop_assert!(lent[i]);
                            lent[i] = false;
                            ended += 1;
                        }
                    }
                }
                prop_assert_eq!(l.len(), lent.iter().filter(|x| **x).count());
            }
            prop_assert_eq!(ended + l.len(), lends);
        }
    }
}
