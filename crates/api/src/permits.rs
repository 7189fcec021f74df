//! Concurrency permits on a cluster's shared store: for each reserved function and each
//! tenant's concurrency quota the node holds a share leased from the store (never more than
//! the limit across the cluster, see `ignition_store`'s `lease_permits`) and takes one of
//! its own per invocation ([`crate::Concurrency`]).
//!
//! The invoke path asks the store only when the node holds too few permits for one more
//! invocation (the first of a tenant or a reserved function on this node in a while, or one
//! more at once than it ran before), for a quarter more than it needs, and waits for the
//! answer at most [`ASK_WITHIN`]; otherwise it counts locally. A node refused what it asked
//! for tells the others, which give back at their next [`ROUND`] what they hold and do not
//! use, and asks again once after a round before answering 429. In the background
//! a node renews its leases a third of the way through them and gives back permits unused
//! for [`IDLE`], so that a node that dies holds its permits for at most [`LEASE`], and one
//! that loses the store keeps running within what it holds for 19 s or more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::concurrency::{Permit, Renewal, Want};
use crate::{ApiError, AppState};

/// How often a node looks at its leases.
const ROUND: Duration = Duration::from_millis(500);
/// How long a lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(30);
/// How long before its lease ends a node stops using a permit (a late renewal and the
/// store's clock may differ by this much).
const MARGIN: Duration = Duration::from_secs(1);
/// Leases with less than this left are renewed.
const RENEW_WITHIN: Duration = Duration::from_secs(20);
/// Permits none of which was taken for this long are given back.
const IDLE: Duration = Duration::from_secs(10);
/// How many more times an invocation short of a permit asks for one (waiting a round, once,
/// when the store had fewer than asked).
const RETRIES: u32 = 3;
/// How long an invocation waits for the store's answer when it asks for a permit: past it,
/// the invocation runs within what the node holds (or is refused), and the answer is
/// recorded when it comes.
const ASK_WITHIN: Duration = Duration::from_secs(2);

/// A place for one invocation of `function` (a stored name), whose tenant may run
/// `tenant_limit` at once, or 429: on a shared store the node first leases what it lacks,
/// waiting for the store at most [`ASK_WITHIN`] each time.
pub(crate) async fn admit(
    state: &AppState,
    function: &str,
    tenant_limit: u64,
) -> Result<Permit, ApiError> {
    let mut tries = 0;
    let mut held_enough = false;
    let mut waited = false;
    loop {
        let short = state.concurrency.shortfall(function, tenant_limit);
        let asked = if short.is_empty() {
            Asked::Nothing
        } else {
            ask(state, &short).await
        };
        let permit = state.concurrency.acquire(function, tenant_limit);
        state.concurrency.done_waiting(&short);
        match (permit, asked) {
            (Ok(p), _) => return Ok(p),
            // The store is not answering: nothing to wait for.
            (Err(e), Asked::NoAnswer) => return Err(e),
            (Err(e), _) if tries == RETRIES => return Err(e),
            // Refused although the node held enough when it looked: over a limit itself (the
            // second time), or others took the permits meanwhile (the next look leases).
            (Err(e), Asked::Nothing) if held_enough => return Err(e),
            (Err(_), Asked::Nothing) => held_enough = true,
            // Others took the permits while this one leased: lease again at once.
            (Err(_), Asked::Enough) => {}
            // The store had fewer: the others give back what they do not use at their next
            // round; one round is waited, then the limit is the limit.
            (Err(e), Asked::Short) if waited => return Err(e),
            (Err(_), Asked::Short) => {
                waited = true;
                tokio::time::sleep(ROUND).await;
            }
        }
        tries += 1;
    }
}

/// What a node's request for permits came to.
#[derive(Debug, Clone, Copy)]
enum Asked {
    /// The node held enough: it asked nothing.
    Nothing,
    /// The store granted what the node asked (or it needed nothing more by its turn).
    Enough,
    /// The store granted fewer.
    Short,
    /// The store did not answer within [`ASK_WITHIN`].
    NoAnswer,
}

/// Leases what `short` says the node lacks. The lease runs as a task of its own, holding the
/// node's leasing lock until the store answers and what it granted is recorded, whether or not
/// this invocation still waits.
async fn ask(state: &AppState, short: &[Want]) -> Asked {
    let asking = {
        let (state, short) = (state.clone(), short.to_vec());
        tokio::spawn(async move {
            let _leasing = state.concurrency.leasing.lock().await;
            let wants = state.concurrency.recount(&short);
            lease(&state, wants).await
        })
    };
    match tokio::time::timeout(ASK_WITHIN, asking).await {
        Ok(Ok(false)) => Asked::Enough,
        Ok(Ok(true)) => Asked::Short,
        Ok(Err(_)) | Err(_) => Asked::NoAnswer,
    }
}

/// Leases `wants` for this node and records what the store granted; a scope the store cannot
/// answer for keeps what the node holds. Whether the store granted fewer than wanted. The
/// caller holds `Concurrency::leasing`.
async fn lease(state: &AppState, wants: Vec<Want>) -> bool {
    if wants.is_empty() {
        return false;
    }
    let store = Arc::clone(&state.store);
    let node = state.node_id.clone();
    let asked = Instant::now();
    let now_ms = crate::now_ms();
    let until_ms = now_ms.saturating_add(i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX));
    let granted = tokio::task::spawn_blocking(move || {
        wants
            .into_iter()
            .map(|w| {
                let got = store.lease_permits(&w.scope, &node, w.want, w.limit, now_ms, until_ms);
                (w, got)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let usable_until = asked + LEASE.saturating_sub(MARGIN);
    let mut short = false;
    for (want, got) in granted.unwrap_or_default() {
        match got {
            Ok(n) => {
                short |= n < want.want;
                state.concurrency.set_held(&want, n, usable_until);
            }
            Err(e) => tracing::debug!(scope = %want.scope, error = %e, "cannot lease permits"),
        }
    }
    short
}

/// Renews this node's leases and gives back what it does not use, every [`ROUND`], for as
/// long as the runtime lives.
pub fn spawn_leasing(state: AppState) {
    state.concurrency.share_limits();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ROUND).await;
            let wanted_elsewhere = state.store.permits_wanted(&state.node_id);
            let renewal = Renewal {
                renew_before: Instant::now() + RENEW_WITHIN,
                idle: IDLE,
            };
            let _leasing = state.concurrency.leasing.lock().await;
            lease(
                &state,
                state.concurrency.lease_wants(&wanted_elsewhere, renewal),
            )
            .await;
        }
    });
}
