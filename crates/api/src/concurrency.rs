//! Concurrency limits, as Lambda has them: the node runs at most `--max-concurrency`
//! invocations at once (running or waiting for a VM); a function with reserved concurrency
//! runs at most that many and its reservation is held back from the others. Over a limit the
//! invocation is refused with 429 `TooManyRequestsException` (AWS SDKs retry it by themselves).
//!
//! On a cluster's shared store a reservation holds across the cluster: a node runs a reserved
//! function only within the permits it leases from the store ([`Concurrency::lease_wants`],
//! [`Concurrency::set_held`]; the node renews them in the background), and an invocation
//! beyond them is refused while the node asks for more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{blocking, ApiError, AppState};

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
    /// On a shared store, the permits of reserved functions this node leased.
    shares: Option<Shares>,
}

/// A node's leases of reserved functions' permits.
#[derive(Debug, Default)]
struct Shares {
    /// Permits held per function, and until when they may be used (a little before the lease
    /// ends, so that a node never uses a permit the store may already have given away).
    held: HashMap<String, (u32, Instant)>,
    /// Functions refused for want of a permit since the node last leased.
    wanted: HashSet<String>,
}

/// The node's concurrency accounting.
#[derive(Debug)]
pub struct Concurrency {
    limit: u32,
    /// What reservations must leave to functions without one (Lambda keeps 100 per account).
    min_unreserved: u32,
    counts: Mutex<Counts>,
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
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Invocations of `function` (a stored name) this node's API is running now.
    pub fn running(&self, function: &str) -> u32 {
        self.lock().running.get(function).copied().unwrap_or(0)
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
        if c.tenants.get(&tenant).copied().unwrap_or(0) >= tenant_limit {
            return Err(throttled(
                "ConcurrentInvocationLimitExceeded",
                format!("Rate Exceeded: the account runs at most {tenant_limit} invocations at once (--quota-concurrency)"),
            ));
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
                if let Some(shares) = &mut c.shares {
                    let held = shares
                        .held
                        .get(function)
                        .filter(|(_, until)| Instant::now() < *until)
                        .map_or(0, |(n, _)| *n);
                    if running >= held {
                        shares.wanted.insert(function.to_owned());
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
        Ok(Permit {
            owner: Arc::clone(self),
            function: function.to_owned(),
            tenant,
            reserved: reserved.is_some(),
        })
    }

    /// Makes reservations hold across a cluster: from now on a reserved function runs only
    /// within the permits [`Concurrency::set_held`] gives.
    pub fn share_reservations(&self) {
        self.lock().shares.get_or_insert_with(Shares::default);
    }

    /// What to lease for each reserved function: (function, permits wanted, its reservation).
    /// A node wants what it runs, one more where it refused an invocation for want of one
    /// since it last asked, and none (its lease given back) while idle.
    pub fn lease_wants(&self) -> Vec<(String, u32, u32)> {
        let mut c = self.lock();
        let Counts {
            running,
            reserved,
            shares,
            ..
        } = &mut *c;
        let Some(shares) = shares else {
            return Vec::new();
        };
        let wanted = std::mem::take(&mut shares.wanted);
        shares.held.retain(|f, _| reserved.contains_key(f));
        reserved
            .iter()
            .filter_map(|(f, &r)| {
                let busy = running.get(f).copied().unwrap_or(0);
                let want = busy.saturating_add(u32::from(wanted.contains(f))).min(r);
                let held = shares.held.get(f).map_or(0, |(n, _)| *n);
                (want > 0 || held > 0).then(|| (f.clone(), want, r))
            })
            .collect()
    }

    /// Records the permits of `function` this node now holds, usable until `until`.
    pub fn set_held(&self, function: &str, permits: u32, until: Instant) {
        if let Some(shares) = &mut self.lock().shares {
            shares.held.insert(function.to_owned(), (permits, until));
        }
    }

    /// Replaces every reservation with what the store holds (another node of a cluster may
    /// have changed them).
    pub fn refresh(&self, reserved: HashMap<String, u32>) {
        self.lock().reserved = reserved;
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PutConcurrency {
    reserved_concurrent_executions: u32,
}

/// `PUT /2017-10-31/functions/{name}/concurrency` (PutFunctionConcurrency).
pub(crate) async fn put(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(name): Path<String>,
    req: Result<Json<PutConcurrency>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = caller.function(&name)?;
    let Json(req) = req.map_err(|e| {
        ApiError::invalid(format!("ReservedConcurrentExecutions: {}", e.body_text()))
    })?;
    let n = name.clone();
    if blocking(&state, move |s| s.get_function(&n))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(&name));
    }
    let r = req.reserved_concurrent_executions;
    state.concurrency.set(&name, Some(r))?;
    blocking(&state, move |s| s.set_reserved_concurrency(&name, Some(r))).await?;
    Ok(Json(json!({ "ReservedConcurrentExecutions": r })))
}

/// `GET /2019-09-30/functions/{name}/concurrency` (GetFunctionConcurrency).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = caller.function(&name)?;
    let n = name.clone();
    if blocking(&state, move |s| s.get_function(&n))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(&name));
    }
    Ok(Json(match state.concurrency.lock().reserved.get(&name) {
        Some(r) => json!({ "ReservedConcurrentExecutions": r }),
        None => json!({}),
    }))
}

/// `DELETE /2017-10-31/functions/{name}/concurrency` (DeleteFunctionConcurrency).
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = caller.function(&name)?;
    state.concurrency.set(&name, None)?;
    blocking(&state, move |s| s.set_reserved_concurrency(&name, None)).await?;
    Ok(StatusCode::NO_CONTENT)
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
