//! Concurrency limits, as Lambda has them: the node runs at most `--max-concurrency`
//! invocations at once (running or waiting for a VM); a tenant runs at most its concurrency
//! quota; a function with reserved concurrency runs at most that many and its reservation is
//! held back from the others. Over a limit the invocation is refused with 429
//! `TooManyRequestsException` (AWS SDKs retry it by themselves).
//!
//! On a cluster's shared store a reservation and a tenant's quota hold across the cluster: a
//! node runs within the permits it leases from the store for each (see [`crate::permits`]),
//! counted here per scope ([`scope_of_function`], [`scope_of_tenant`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;

use crate::ApiError;

#[derive(Debug, Default)]
struct Counts {
    /// In flight per function.
    running: HashMap<String, u32>,
    /// In flight of functions without a reservation.
    unreserved: u32,
    /// Reservations.
    reserved: HashMap<String, u32>,
    /// In flight per tenant.
    tenants: HashMap<String, u64>,
    /// On a shared store, the permits this node leased.
    shares: Option<Shares>,
}

/// The permit scope of a reserved function (a stored name) in the shared store.
pub(crate) fn scope_of_function(function: &str) -> String {
    format!("f:{function}")
}

/// The permit scope of a tenant's concurrency quota in the shared store.
pub(crate) fn scope_of_tenant(tenant: &str) -> String {
    format!("t:{tenant}")
}

/// A node's leases of permits, per scope.
#[derive(Debug, Default)]
struct Shares {
    held: HashMap<String, Held>,
    /// Invocations waiting for the node to lease a permit of a scope.
    waiting: HashMap<String, u32>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    permits: u32,
    /// Until when they may be used: a little before the lease ends, so that a node never uses
    /// a permit the store may already have given to another.
    until: Instant,
    /// The scope's limit when last seen (a reservation or a tenant's quota).
    limit: u32,
    /// When the node last took one of them for an invocation.
    used: Instant,
}

impl Shares {
    fn usable(&self, scope: &str) -> u32 {
        self.held
            .get(scope)
            .filter(|h| Instant::now() < h.until)
            .map_or(0, |h| h.permits)
    }

    fn used(&mut self, scope: &str) {
        if let Some(h) = self.held.get_mut(scope) {
            h.used = Instant::now();
        }
    }
}

/// When a node renews its leases: see [`Concurrency::lease_wants`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Renewal {
    /// Leases usable until before this are renewed.
    pub(crate) renew_before: Instant,
    /// Permits none of which was taken for this long are given back.
    pub(crate) idle: std::time::Duration,
}

/// What a node asks the store for: `want` of the `limit` permits of `scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want {
    /// The scope ([`scope_of_function`], [`scope_of_tenant`]).
    pub(crate) scope: String,
    /// How many permits the node needs now.
    pub(crate) want: u32,
    /// The scope's limit.
    pub(crate) limit: u32,
}

/// The node's concurrency accounting.
#[derive(Debug)]
pub struct Concurrency {
    limit: u32,
    /// What reservations must leave to functions without one (Lambda keeps 100 per account).
    min_unreserved: u32,
    counts: Mutex<Counts>,
    /// Held while the node leases permits and records what it got, so that what it holds
    /// is what the store last granted it.
    pub(crate) leasing: tokio::sync::Mutex<()>,
}

/// One invocation's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Permit {
    owner: Arc<Concurrency>,
    function: String,
    tenant: String,
    reserved: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.owner.lock();
        if let Some(n) = c.running.get_mut(&self.function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.running.remove(&self.function);
            }
        }
        if !self.reserved {
            c.unreserved = c.unreserved.saturating_sub(1);
        }
        if let Some(n) = c.tenants.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.tenants.remove(&self.tenant);
            }
        }
    }
}

fn throttled(reason: &'static str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequestsException",
        message,
    )
    .with_reason(reason)
}

fn tenant_throttled(limit: u64, held: Option<u32>) -> ApiError {
    let on_node = held.map_or_else(String::new, |h| {
        format!(" across the cluster; this node holds {h} of them now")
    });
    throttled(
        "ConcurrentInvocationLimitExceeded",
        format!("Rate Exceeded: the account runs at most {limit} invocations at once{on_node} (--quota-concurrency)"),
    )
}

impl Concurrency {
    /// At most `limit` invocations at once on the node, of which reservations may take all but
    /// `min_unreserved`; reservations from the store.
    pub fn new(limit: u32, min_unreserved: u32, reserved: HashMap<String, u32>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            min_unreserved: min_unreserved.min(limit),
            counts: Mutex::new(Counts {
                reserved,
                ..Counts::default()
            }),
            leasing: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Invocations of `function` (a stored name) this node's API is running now.
    pub fn running(&self, function: &str) -> u32 {
        self.lock().running.get(function).copied().unwrap_or(0)
    }

    /// The scopes whose leased permits are too few for one more invocation of `function`
    /// (a stored name) of a tenant allowed `tenant_limit` at once, with what to lease for
    /// each; none off a shared store. Each scope counts the invocation as waiting until
    /// [`Concurrency::done_waiting`].
    pub(crate) fn shortfall(&self, function: &str, tenant_limit: u64) -> Vec<Want> {
        let tenant = ignition_types::FunctionId::from_stored(function).tenant;
        let mut c = self.lock();
        let Counts {
            running,
            reserved,
            tenants,
            shares,
            ..
        } = &mut *c;
        let Some(shares) = shares else {
            return Vec::new();
        };
        let mut scopes = vec![(
            scope_of_tenant(&tenant),
            u32::try_from(tenants.get(&tenant).copied().unwrap_or(0)).unwrap_or(u32::MAX),
            u32::try_from(tenant_limit).unwrap_or(u32::MAX),
        )];
        if let Some(&r) = reserved.get(function) {
            let busy = running.get(function).copied().unwrap_or(0);
            scopes.push((scope_of_function(function), busy, r));
        }
        scopes.retain(|(scope, busy, limit)| *busy < *limit && shares.usable(scope) <= *busy);
        scopes
            .into_iter()
            .map(|(scope, busy, limit)| {
                let waiting = shares.waiting.entry(scope.clone()).or_default();
                *waiting += 1;
                let want = busy.saturating_add(*waiting).min(limit);
                Want { scope, want, limit }
            })
            .collect()
    }

    /// Ends the wait [`Concurrency::shortfall`] counted for `scopes`.
    pub(crate) fn done_waiting(&self, scopes: &[Want]) {
        if let Some(shares) = &mut self.lock().shares {
            for w in scopes {
                if let Some(n) = shares.waiting.get_mut(&w.scope) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        shares.waiting.remove(&w.scope);
                    }
                }
            }
        }
    }

    /// What `wants` should ask now: each scope's need counted again (invocations may have
    /// ended or others started waiting while this one waited to lease), and a quarter more.
    pub(crate) fn recount(&self, wants: &[Want]) -> Vec<Want> {
        let c = self.lock();
        let Some(shares) = &c.shares else {
            return Vec::new();
        };
        wants
            .iter()
            .filter_map(|w| {
                let busy = in_scope(&c.running, &c.tenants, &w.scope);
                let waiting = shares.waiting.get(&w.scope).copied().unwrap_or(0);
                let need = busy.saturating_add(waiting);
                // A quarter more, so that a load rising step by step asks the store every few
                // steps rather than at each; what goes unused is given back when another
                // node is short or it sits idle.
                let want = need.saturating_add(need / 4).min(w.limit);
                (shares.usable(&w.scope) < need.min(w.limit)).then(|| Want {
                    scope: w.scope.clone(),
                    want,
                    limit: w.limit,
                })
            })
            .collect()
    }

    /// A place for one invocation of `function` (a stored name), whose tenant may run
    /// `tenant_limit` at once, or 429.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        function: &str,
        tenant_limit: u64,
    ) -> Result<Permit, ApiError> {
        let tenant = ignition_types::FunctionId::from_stored(function).tenant;
        let mut c = self.lock();
        let in_flight = c.tenants.get(&tenant).copied().unwrap_or(0);
        if in_flight >= tenant_limit {
            return Err(tenant_throttled(tenant_limit, None));
        }
        if let Some(shares) = &c.shares {
            let held = shares.usable(&scope_of_tenant(&tenant));
            if in_flight >= u64::from(held) {
                return Err(tenant_throttled(tenant_limit, Some(held)));
            }
        }
        let running = c.running.get(function).copied().unwrap_or(0);
        let reserved = c.reserved.get(function).copied();
        match reserved {
            Some(r) if running >= r => {
                return Err(throttled(
                    "ReservedFunctionConcurrentInvocationLimitExceeded",
                    format!("Rate Exceeded: {function} is at its reserved concurrency ({r})"),
                ))
            }
            Some(r) => {
                if let Some(shares) = &c.shares {
                    let held = shares.usable(&scope_of_function(function));
                    if running >= held {
                        return Err(throttled(
                            "ReservedFunctionConcurrentInvocationLimitExceeded",
                            format!("Rate Exceeded: {function} is at its reserved concurrency ({r} across the cluster; this node holds {held} of them now)"),
                        ));
                    }
                }
            }
            None => {
                let held_back: u32 = c.reserved.values().sum();
                let pool = self.limit.saturating_sub(held_back);
                if c.unreserved >= pool {
                    return Err(throttled(
                        "ConcurrentInvocationLimitExceeded",
                        format!("Rate Exceeded: the node runs at most {pool} unreserved invocations at once"),
                    ));
                }
                c.unreserved += 1;
            }
        }
        *c.running.entry(function.to_owned()).or_default() += 1;
        *c.tenants.entry(tenant.clone()).or_default() += 1;
        if let Some(shares) = &mut c.shares {
            shares.used(&scope_of_tenant(&tenant));
            shares.used(&scope_of_function(function));
        }
        Ok(Permit {
            owner: Arc::clone(self),
            function: function.to_owned(),
            tenant,
            reserved: reserved.is_some(),
        })
    }

    /// Makes reservations and tenants' quotas hold across a cluster: from now on an
    /// invocation runs only within the permits [`Concurrency::set_held`] gives.
    pub fn share_limits(&self) {
        self.lock().shares.get_or_insert_with(Shares::default);
    }

    /// What to lease again: for each scope the node holds permits of, more where invocations
    /// wait for one; the same again where the lease is due for renewal; fewer (at once, before
    /// the store hears of it) where permits sit unused while another node was short of them
    /// (`wanted_elsewhere`) or none was taken for `renewal.idle`. Nothing for a scope where
    /// the node holds what it needs and the lease is not due.
    pub(crate) fn lease_wants(
        &self,
        wanted_elsewhere: &HashSet<String>,
        renewal: Renewal,
    ) -> Vec<Want> {
        let now = Instant::now();
        let mut c = self.lock();
        let Counts {
            running,
            reserved,
            tenants,
            shares,
            ..
        } = &mut *c;
        let Some(shares) = shares else {
            return Vec::new();
        };
        let Shares { held, waiting } = shares;
        let mut wants = Vec::new();
        for (scope, h) in held.iter_mut() {
            let limit = scope
                .strip_prefix("f:")
                .map_or(h.limit, |f| reserved.get(f).copied().unwrap_or(0));
            let need = in_scope(running, tenants, scope)
                .saturating_add(waiting.get(scope).copied().unwrap_or(0))
                .min(limit);
            let due = h.until < renewal.renew_before;
            let unused = wanted_elsewhere.contains(scope)
                || now.saturating_duration_since(h.used) >= renewal.idle
                || h.permits > limit;
            let want = if need > h.permits || (need < h.permits && unused) {
                need
            } else if due {
                h.permits
            } else {
                continue;
            };
            // Fewer from now on: no invocation takes a permit being given back.
            h.permits = h.permits.min(want);
            wants.push(Want {
                scope: scope.clone(),
                want,
                limit,
            });
        }
        wants
    }

    /// Records that this node now holds `permits` of `want`'s scope, usable until `until`.
    pub(crate) fn set_held(&self, want: &Want, permits: u32, until: Instant) {
        if let Some(shares) = &mut self.lock().shares {
            if permits == 0 {
                shares.held.remove(&want.scope);
            } else {
                let used = shares.held.get(&want.scope).map_or(until, |h| h.used);
                shares.held.insert(
                    want.scope.clone(),
                    Held {
                        permits,
                        until,
                        limit: want.limit,
                        used: used.min(Instant::now()),
                    },
                );
            }
        }
    }

    /// Replaces every reservation with what the store holds (another node of a cluster may
    /// have changed them).
    pub fn refresh(&self, reserved: HashMap<String, u32>) {
        self.lock().reserved = reserved;
    }

    /// `function`'s reservation, if it has one.
    pub(crate) fn reserved(&self, function: &str) -> Option<u32> {
        self.lock().reserved.get(function).copied()
    }

    /// Every function's reservation.
    pub(crate) fn reservations(&self) -> Vec<(String, u32)> {
        self.lock()
            .reserved
            .iter()
            .map(|(f, r)| (f.clone(), *r))
            .collect()
    }

    pub(crate) fn set(&self, function: &str, reserved: Option<u32>) -> Result<(), ApiError> {
        let mut c = self.lock();
        if let Some(r) = reserved {
            let others: u32 = c
                .reserved
                .iter()
                .filter(|(f, _)| f.as_str() != function)
                .map(|(_, v)| v)
                .sum();
            if others.saturating_add(r) > self.limit.saturating_sub(self.min_unreserved) {
                return Err(ApiError::invalid(format!(
                    "Specified ReservedConcurrentExecutions for function decreases account's \
                     UnreservedConcurrentExecution below its minimum value of [{}].",
                    self.min_unreserved
                )));
            }
            c.reserved.insert(function.to_owned(), r);
        } else {
            c.reserved.remove(function);
        }
        Ok(())
    }
}

/// Invocations running on this node within `scope`.
fn in_scope(running: &HashMap<String, u32>, tenants: &HashMap<String, u64>, scope: &str) -> u32 {
    if let Some(f) = scope.strip_prefix("f:") {
        running.get(f).copied().unwrap_or(0)
    } else if let Some(t) = scope.strip_prefix("t:") {
        u32::try_from(tenants.get(t).copied().unwrap_or(0)).unwrap_or(u32::MAX)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_cap_their_function_and_are_held_back_from_the_rest() {
        let c = Concurrency::new(3, 0, HashMap::from([("r".to_owned(), 1)]));
        let r1 = c.acquire("r", u64::MAX).unwrap();
        let e = c.acquire("r", u64::MAX).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.error_type),
            (429, "TooManyRequestsException")
        );
        let a = c.acquire("a", u64::MAX).unwrap();
        let _b = c.acquire("b", u64::MAX).unwrap();
        assert!(c.acquire("a", u64::MAX).is_err(), "2 of 3 are unreserved");
        drop(a);
        let _a2 = c.acquire("a", u64::MAX).unwrap();
        drop(r1);
        let _r2 = c.acquire("r", u64::MAX).unwrap();
        assert!(
            c.set("x", Some(3)).is_err(),
            "cannot reserve beyond the node"
        );
        c.set("r", None).unwrap();
        let zero = Concurrency::new(5, 1, HashMap::from([("off".to_owned(), 0)]));
        assert!(
            zero.acquire("off", u64::MAX).is_err(),
            "reserved 0 throttles every invocation"
        );
    }

    #[test]
    fn reservations_leave_the_unreserved_floor_to_everyone_else() {
        let c = Concurrency::new(10, 1, HashMap::new());
        let e = c.set("greedy", Some(10)).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.error_type),
            (400, "InvalidParameterValueException")
        );
        assert!(
            e.message.contains("below its minimum value of [1]"),
            "{}",
            e.message
        );
        // With the greedy reservation refused, others are still served.
        let _other = c.acquire("other", u64::MAX).unwrap();
        c.set("greedy", Some(9)).unwrap();
        assert!(
            c.set("second", Some(1)).is_err(),
            "the floor counts every reservation"
        );
    }

    #[test]
    fn on_a_shared_store_a_node_runs_only_within_the_permits_it_holds() {
        let c = Concurrency::new(10, 1, HashMap::from([("acme.r".to_owned(), 2)]));
        c.share_limits();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        // Nothing held: refused, and the shortfall says what to lease.
        let e = c.acquire("acme.a", 5).unwrap_err();
        assert!(e.message.contains("this node holds 0"), "{}", e.message);
        let short = c.shortfall("acme.a", 5);
        assert_eq!(
            short,
            vec![Want {
                scope: "t:acme".into(),
                want: 1,
                limit: 5
            }]
        );
        // A second waiting at once is counted in what to lease.
        let both = c.shortfall("acme.a", 5);
        assert_eq!(c.recount(&short)[0].want, 2);
        c.set_held(&c.recount(&short)[0], 2, later);
        c.done_waiting(&short);
        c.done_waiting(&both);
        let a1 = c.acquire("acme.a", 5).unwrap();
        let a2 = c.acquire("acme.a", 5).unwrap();
        assert!(c.acquire("acme.a", 5).is_err(), "two held, two run");
        assert!(c.shortfall("acme.a", 5)[0].want == 3);
        c.done_waiting(&[Want {
            scope: "t:acme".into(),
            want: 3,
            limit: 5,
        }]);
        // A reserved function needs its own scope's permit as well as its tenant's.
        drop(a2);
        let short = c.shortfall("acme.r", 5);
        assert_eq!(
            short.iter().map(|w| w.scope.as_str()).collect::<Vec<_>>(),
            ["f:acme.r"]
        );
        assert!(c.acquire("acme.r", 5).is_err());
        c.set_held(&short[0], 1, later);
        c.done_waiting(&short);
        let r1 = c.acquire("acme.r", 5).unwrap();
        // Nothing is due within the lease while every permit is used...
        let fresh = Renewal {
            renew_before: Instant::now(),
            idle: std::time::Duration::from_secs(60),
        };
        let nobody = HashSet::new();
        assert_eq!(c.lease_wants(&nobody, fresh), []);
        // ...a lease near its end is renewed as it is...
        let due = Renewal {
            renew_before: later + std::time::Duration::from_secs(1),
            ..fresh
        };
        let mut wants = c.lease_wants(&nobody, due);
        wants.sort_by(|x, y| x.scope.cmp(&y.scope));
        assert_eq!(
            wants
                .iter()
                .map(|w| (w.scope.as_str(), w.want, w.limit))
                .collect::<Vec<_>>(),
            [("f:acme.r", 1, 2), ("t:acme", 2, 5)]
        );
        // ...and a permit sitting unused while another node wants one is given back at once:
        // the node no longer takes it.
        drop(a1);
        let elsewhere = HashSet::from(["t:acme".to_owned()]);
        assert_eq!(
            c.lease_wants(&elsewhere, fresh),
            [Want {
                scope: "t:acme".into(),
                want: 1,
                limit: 5
            }]
        );
        assert!(c.acquire("acme.a", 5).is_err(), "one held, one runs");
        drop(r1);
        let idle = Renewal {
            idle: std::time::Duration::ZERO,
            ..fresh
        };
        assert!(c.lease_wants(&nobody, idle).iter().all(|w| w.want == 0));
        // A lease past its time is not used.
        let t = Want {
            scope: "t:acme".into(),
            want: 1,
            limit: 5,
        };
        c.set_held(&t, 1, Instant::now());
        assert!(c.acquire("acme.a", 5).is_err(), "the lease ran out");
        c.set_held(&t, 0, later);
        assert!(c
            .lease_wants(&nobody, due)
            .iter()
            .all(|w| w.scope != "t:acme"));
    }

    #[test]
    fn a_tenant_runs_at_most_its_quota_at_once() {
        let c = Concurrency::new(10, 1, HashMap::new());
        let a1 = c.acquire("acme.a", 2).unwrap();
        let _a2 = c.acquire("acme.b", 2).unwrap();
        let e = c.acquire("acme.a", 2).unwrap_err();
        assert_eq!(e.reason, Some("ConcurrentInvocationLimitExceeded"));
        assert!(e.message.contains("--quota-concurrency"), "{}", e.message);
        let _other = c
            .acquire("beta.a", 2)
            .expect("another tenant's quota is its own");
        drop(a1);
        let _a3 = c.acquire("acme.a", 2).unwrap();
    }
}
