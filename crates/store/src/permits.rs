//! Concurrency permits shared by a cluster's nodes: a limit (a function's reserved concurrency)
//! is split into leases, one per node, that the nodes take, renew and give back. A lease
//! lapses at its time unless renewed, so a node that dies gives its permits back by itself;
//! the leases of a scope never add up to more than its limit, whoever asks at once (the
//! lease is decided under the scope's lock). On a single node's store the one node leases
//! the whole limit.
//!
//! A node granted fewer than it asked for says so to every node (a `NOTIFY`, see
//! [`crate::cache`]); [`Store::permits_wanted`] tells a node which scopes others were short of,
//! so that it gives back at once what it holds and does not use.

use crate::sql::vals;
use crate::store::{Store, StoreError};

impl Store {
    /// Leases `node` up to `want` of the `limit` permits of `scope` until `until_ms`, leaving
    /// the others' unexpired leases (at `now_ms`) alone; how many `node` now holds (0 gives its
    /// lease back).
    pub fn lease_permits(
        &self,
        scope: &str,
        node: &str,
        want: u32,
        limit: u32,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<u32, StoreError> {
        self.transaction(|db| {
            db.serialize(&format!("permits:{scope}"))?;
            db.execute(
                "DELETE FROM concurrency_permits WHERE scope = $1 AND expires_ms < $2",
                &vals![scope, now_ms],
            )?;
            let others = db
                .query_one(
                    "SELECT CAST(COALESCE(SUM(permits), 0) AS BIGINT) FROM concurrency_permits
                     WHERE scope = $1 AND node != $2",
                    &vals![scope, node],
                )?
                .int(0)?;
            let free = i64::from(limit).saturating_sub(others).max(0);
            let grant = u32::try_from(i64::from(want).min(free)).unwrap_or(0);
            if grant < want {
                db.notify(&format!("{}{scope}\n{node}", crate::cache::PERMITS_WANTED))?;
            }
            if grant == 0 {
                db.execute(
                    "DELETE FROM concurrency_permits WHERE scope = $1 AND node = $2",
                    &vals![scope, node],
                )?;
            } else {
                db.execute(
                    "INSERT INTO concurrency_permits (scope, node, permits, expires_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (scope, node) DO UPDATE
                     SET permits = excluded.permits, expires_ms = excluded.expires_ms",
                    &vals![scope, node, grant, until_ms],
                )?;
            }
            Ok(grant)
        })
    }

    /// The permit scopes a node other than `me` was granted fewer of than it asked for since
    /// the last call (none on a single node's store).
    pub fn permits_wanted(&self, me: &str) -> std::collections::HashSet<String> {
        self.shared_cache()
            .map(|c| c.take_wanted(me))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn leases_never_add_up_past_the_limit_and_lapse() {
        for (backend, a, b, _dir) in crate::testing::two_nodes() {
            assert_eq!(
                a.lease_permits("f:x", "a", 2, 3, 0, 1000).unwrap(),
                2,
                "{backend}"
            );
            assert_eq!(
                b.lease_permits("f:x", "b", 3, 3, 0, 1000).unwrap(),
                1,
                "what is left"
            );
            // a renews and asks for more: nothing more is free.
            assert_eq!(a.lease_permits("f:x", "a", 3, 3, 500, 1500).unwrap(), 2);
            // a gives back; b takes all.
            assert_eq!(a.lease_permits("f:x", "a", 0, 3, 600, 1600).unwrap(), 0);
            assert_eq!(b.lease_permits("f:x", "b", 3, 3, 700, 1700).unwrap(), 3);
            // b stops renewing: at its time, its lease is a's to take.
            assert_eq!(a.lease_permits("f:x", "a", 3, 3, 1701, 2700).unwrap(), 3);
            // Scopes are apart.
            assert_eq!(b.lease_permits("f:y", "b", 1, 1, 1701, 2700).unwrap(), 1);
        }
    }

    #[test]
    fn a_node_refused_permits_tells_the_others() {
        for (backend, a, b, _dir) in crate::testing::two_nodes() {
            let listening = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while a.shared_cache().is_some_and(|c| !c.synchronized()) {
                assert!(std::time::Instant::now() < listening, "never listening");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert_eq!(a.lease_permits("t:acme", "a", 2, 2, 0, 1000).unwrap(), 2);
            assert_eq!(b.lease_permits("t:beta", "b", 1, 2, 0, 1000).unwrap(), 1);
            assert!(a.permits_wanted("a").is_empty() && b.permits_wanted("b").is_empty());
            assert_eq!(b.lease_permits("t:acme", "b", 1, 2, 0, 1000).unwrap(), 0);
            if !a.is_shared() {
                assert!(
                    a.permits_wanted("a").is_empty(),
                    "{backend}: one node, nobody else"
                );
                continue;
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut heard = std::collections::HashSet::new();
            while !heard.contains("t:acme") {
                assert!(std::time::Instant::now() < deadline, "{backend}: {heard:?}");
                std::thread::sleep(std::time::Duration::from_millis(20));
                heard.extend(a.permits_wanted("a"));
            }
            assert!(!heard.contains("t:beta"), "{heard:?}");
            // b hears nothing of its own shortage.
            assert!(b.permits_wanted("b").is_empty());
        }
    }

    #[test]
    fn nodes_leasing_at_once_never_hold_more_than_the_limit() {
        for (backend, a, b, _dir) in crate::testing::two_nodes() {
            for round in 0..30i64 {
                let (ga, gb) = std::thread::scope(|sc| {
                    let ha = sc.spawn(|| {
                        a.lease_permits("f:z", "a", 1, 1, round * 10, round * 10 + 5)
                            .unwrap()
                    });
                    let hb = sc.spawn(|| {
                        b.lease_permits("f:z", "b", 1, 1, round * 10, round * 10 + 5)
                            .unwrap()
                    });
                    (ha.join().unwrap(), hb.join().unwrap())
                });
                assert!(ga + gb <= 1, "{backend}: round {round}: {ga} + {gb}");
            }
        }
    }
}
