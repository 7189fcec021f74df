//! The warm pool: VMs restored from a function's snapshot and left paused, ready to take an
//! invocation with nothing left to do but resume.
//!
//! Sizing. For each function the pool aims at
//! `max(min_ready, ceil(arrival rate x refill time) + waiting + 1)` ready slots while the
//! function has had an arrival within the keep-alive, and at `min_ready` (zero by default)
//! after. The arrival rate is counted over the last [`RATE_WINDOW`]; the refill time is a moving
//! average of measured restores. Slots above the target are destroyed once the function has been
//! idle for the keep-alive, and a function's entry itself (which holds its code) once it has
//! neither slots nor demand.
//!
//! Memory. Every ready slot is charged its measured proportional set size (PSS: pages shared
//! with other VMs restored from the same snapshot count by their share). A refill reserves an
//! estimate (the average of slots measured so far) before it starts, and a slot whose measured
//! cost would take the total over the budget is destroyed instead of kept: the ready slots'
//! measured PSS never exceeds the budget.
//!
//! Warm-up. A restored VM has run nothing since its snapshot: under a CPU emulator none of its
//! code is translated yet, and on any host its caches are cold. Each new slot is resumed once to
//! run the agent's warm-up (the invocation path through the Runtime API, without the function's
//! handler) and paused again. No invocation has used it: it is still sterile.
//!
//! One refiller task plans for all functions; at most `refill_parallelism` restores run at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::guest::Guest;
use crate::launcher::{FunctionRef, Launcher};
use ignition_vmm::jail::CpuPriority;

/// A slot taken by an invocation: from now on the invocation waits for it, so it shares the
/// CPU as a foreground VM (it was filled in the background).
fn handed_over(guest: Guest) -> Guest {
    if let Err(e) = guest.vm.set_priority(CpuPriority::Foreground) {
        tracing::warn!(vm = %guest.vm.id(), error = %e, "raising a warm slot's CPU share");
    }
    guest
}

/// Window over which the arrival rate is counted.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Cost assumed for a slot before any was measured, MiB.
const INITIAL_SLOT_MIB: f64 = 32.0;

/// How the pool is bounded.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Budget for ready slots, MiB of PSS; 0 disables the pool.
    pub memory_budget_mib: u64,
    /// How long after a function's last arrival its demand-driven slots are kept.
    pub keep_alive: Duration,
    /// Restores that may run at once to refill.
    pub refill_parallelism: usize,
}

/// A function's pool, as reported.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PoolStatus {
    /// Slots ready now.
    pub ready: usize,
    /// Slots being restored.
    pub filling: usize,
    /// The size the pool aims at now.
    pub target: usize,
    /// Slots kept regardless of demand.
    pub min_ready: usize,
    /// Arrivals per second over the rate window.
    pub arrival_rate: f64,
    /// Moving average of the time a refill takes, ms.
    pub refill_ms: f64,
    /// PSS of each ready slot measured now, MiB: its pages shared with the other VMs restored
    /// from the same snapshot count divided among them.
    pub slot_pss_mib: Vec<f64>,
    /// What each ready slot is charged against the memory budget, MiB: its PSS when it became
    /// ready (slots made after it share its clean pages and lower its PSS).
    pub slot_charged_mib: Vec<f64>,
    /// Refills that failed in a row (0 once one succeeds).
    pub failures: u32,
    /// Why the last refill failed, while they fail.
    pub last_error: Option<String>,
    /// How long until the next refill may start, ms, while refills back off.
    pub retry_in_ms: Option<u64>,
}

/// The first pause after a failed refill; it doubles with each failure in a row.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest pause between refills of a function whose refills fail.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The pause after `failures` failed refills in a row.
fn backoff(failures: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

struct Slot {
    guest: Guest,
    pss_mib: f64,
}

struct FnPool {
    function: FunctionRef,
    key: String,
    ready: VecDeque<Slot>,
    filling: usize,
    min_ready: usize,
    waiting: usize,
    arrivals: VecDeque<Instant>,
    last_demand: Option<Instant>,
    refill_ms: f64,
    available: Arc<Notify>,
    /// Refills that failed in a row, why the last did, and when the next may start.
    failures: u32,
    last_error: Option<String>,
    retry_at: Option<Instant>,
}

impl FnPool {
    fn rate(&mut self, now: Instant) -> f64 {
        while self
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) > RATE_WINDOW)
        {
            self.arrivals.pop_front();
        }
        self.arrivals.len() as f64 / RATE_WINDOW.as_secs_f64()
    }

    fn target(&mut self, now: Instant, keep_alive: Duration) -> usize {
        let rate = self.rate(now);
        let active = self
            .last_demand
            .is_some_and(|t| now.duration_since(t) <= keep_alive);
        let demand = if active {
            let in_flight = (rate * self.refill_ms / 1000.0).ceil();
            // `in_flight` is bounded by rate and refill time, both finite and small.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let in_flight = in_flight as usize;
            in_flight + self.waiting + 1
        } else {
            0
        };
        self.min_ready.max(demand)
    }
}

#[derive(Default)]
struct State {
    fns: HashMap<String, FnPool>,
    /// MiB charged: measured PSS of ready slots plus estimates for refills in progress.
    charged_mib: f64,
    filling: usize,
    /// Moving average of measured slot PSS, MiB.
    slot_mib: f64,
    stopped: bool,
}

/// The warm pool of one node.
pub(crate) struct WarmPool {
    launcher: Arc<Launcher>,
    config: PoolConfig,
    state: Mutex<State>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WarmPool {
    pub(crate) fn new(launcher: Arc<Launcher>, config: PoolConfig) -> Arc<Self> {
        let pool = Arc::new(Self {
            launcher,
            config,
            state: Mutex::new(State {
                slot_mib: INITIAL_SLOT_MIB,
                ..State::default()
            }),
            wake: Arc::new(Notify::new()),
        });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            loop {
                let Some(pool) = weak.upgrade() else { return };
                if pool.lock().stopped {
                    return;
                }
                pool.plan().await;
                let wake = Arc::clone(&pool.wake);
                drop(pool);
                let _ = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
            }
        });
        pool
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'a>(state: &'a mut State, function: &FunctionRef, key: &str) -> &'a mut FnPool {
        let name = function.spec.name.clone();
        let stale = state.fns.get(&name).is_some_and(|p| p.key != key);
        if stale {
            // The function changed: its old slots run old code and are dropped.
            if let Some(old) = state.fns.remove(&name) {
                for slot in old.ready {
                    state.charged_mib -= slot.pss_mib;
                    tokio::spawn(slot.guest.destroy());
                }
            }
        }
        state.fns.entry(name).or_insert_with(|| FnPool {
            function: function.clone(),
            key: key.to_owned(),
            ready: VecDeque::new(),
            filling: 0,
            min_ready: 0,
            waiting: 0,
            arrivals: VecDeque::new(),
            last_demand: None,
            refill_ms: 500.0,
            available: Arc::new(Notify::new()),
            failures: 0,
            last_error: None,
            retry_at: None,
        })
    }

    /// Records an arrival for `function` and takes a ready slot if there is one.
    pub(crate) fn take(&self, function: &FunctionRef) -> Option<Guest> {
        if self.config.memory_budget_mib == 0 {
            return None;
        }
        let key = self.launcher.function_key(function);
        let now = Instant::now();
        let mut st = self.lock();
        let p = Self::entry(&mut st, function, &key);
        p.arrivals.push_back(now);
        p.last_demand = Some(now);
        let slot = p.ready.pop_front();
        if let Some(s) = &slot {
            st.charged_mib -= s.pss_mib;
        }
        drop(st);
        self.wake.notify_one();
        slot.map(|s| handed_over(s.guest))
    }

    /// Waits up to `limit` for a ready slot of `function` (the refiller makes one).
    pub(crate) async fn take_wait(&self, function: &FunctionRef, limit: Duration) -> Option<Guest> {
        let deadline = Instant::now() + limit;
        if let Some(g) = self.take(function) {
            return Some(g);
        }
        let key = self.launcher.function_key(function);
        let available = {
            let mut st = self.lock();
            let p = Self::entry(&mut st, function, &key);
            p.waiting += 1;
            Arc::clone(&p.available)
        };
        self.wake.notify_one();
        let got = loop {
            let notified = available.notified();
            {
                let mut st = self.lock();
                let p = Self::entry(&mut st, function, &key);
                if let Some(s) = p.ready.pop_front() {
                    st.charged_mib -= s.pss_mib;
                    break Some(s.guest);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break None;
            }
        };
        let mut st = self.lock();
        if let Some(p) = st.fns.get_mut(&function.spec.name) {
            p.waiting = p.waiting.saturating_sub(1);
        }
        got.map(handed_over)
    }

    /// Sets the slots kept for `function` regardless of demand (provisioned concurrency).
    pub(crate) fn set_min_ready(&self, function: &FunctionRef, n: usize) {
        let key = self.launcher.function_key(function);
        let mut st = self.lock();
        Self::entry(&mut st, function, &key).min_ready = n;
        drop(st);
        self.wake.notify_one();
    }

    /// Functions with a pool entry (slots, demand, or a minimum).
    pub(crate) fn functions(&self) -> usize {
        self.lock().fns.len()
    }

    /// The pool of `name`.
    pub(crate) fn status(&self, name: &str) -> PoolStatus {
        let (mut status, pids) = self.counts(name);
        // Read outside the lock: each is a walk of a VMM's page tables.
        status.slot_pss_mib = pids
            .into_iter()
            .filter_map(|pid| pid.and_then(crate::guest::pss_mib_of))
            .collect();
        status
    }

    /// The pool of `name` without measuring its slots (`slot_pss_mib` empty): cheap, for
    /// callers that need its counts and health only.
    pub(crate) fn counts(&self, name: &str) -> (PoolStatus, Vec<Option<u32>>) {
        let keep_alive = self.config.keep_alive;
        let mut st = self.lock();
        let Some(p) = st.fns.get_mut(name) else {
            return (PoolStatus::default(), Vec::new());
        };
        let now = Instant::now();
        let pids: Vec<Option<u32>> = p.ready.iter().map(|s| s.guest.pid()).collect();
        let status = PoolStatus {
            ready: p.ready.len(),
            filling: p.filling,
            target: p.target(now, keep_alive),
            min_ready: p.min_ready,
            arrival_rate: p.rate(now),
            refill_ms: p.refill_ms,
            slot_pss_mib: Vec::new(),
            slot_charged_mib: p.ready.iter().map(|s| s.pss_mib).collect(),
            failures: p.failures,
            last_error: p.last_error.clone(),
            retry_in_ms: p
                .retry_at
                .filter(|t| *t > now)
                .map(|t| u64::try_from(t.duration_since(now).as_millis()).unwrap_or(u64::MAX)),
        };
        (status, pids)
    }

    /// MiB charged to the budget now.
    pub(crate) fn charged_mib(&self) -> f64 {
        self.lock().charged_mib
    }

    /// The budget, and what a slot is expected to cost (the average measured so far), MiB.
    pub(crate) fn budget(&self) -> (u64, f64) {
        (self.config.memory_budget_mib, self.lock().slot_mib)
    }

    /// Slots ready and being filled, over all functions.
    pub(crate) fn sizes(&self) -> (usize, usize) {
        let st = self.lock();
        (st.fns.values().map(|f| f.ready.len()).sum(), st.filling)
    }

    /// Drops every slot of `name` (its code or configuration changed, or it was deleted).
    /// Drops the pools of every function `matches` names, destroying their slots.
    pub(crate) fn invalidate_matching(&self, matches: &dyn Fn(&str) -> bool) {
        let names: Vec<String> = self
            .lock()
            .fns
            .keys()
            .filter(|k| matches(k))
            .cloned()
            .collect();
        for n in names {
            self.invalidate(&n);
        }
    }

    pub(crate) fn invalidate(&self, name: &str) {
        let mut st = self.lock();
        if let Some(p) = st.fns.remove(name) {
            for slot in p.ready {
                st.charged_mib -= slot.pss_mib;
                tokio::spawn(slot.guest.destroy());
            }
        }
    }

    /// Destroys every slot and stops refilling.
    pub(crate) async fn shutdown(&self) {
        let slots: Vec<Slot> = {
            let mut st = self.lock();
            st.stopped = true;
            st.fns
                .values_mut()
                .flat_map(|p| p.ready.drain(..))
                .collect()
        };
        for s in slots {
            s.guest.destroy().await;
        }
    }

    /// One planning round: shrink what is above target and idle, start refills below target.
    async fn plan(self: &Arc<Self>) {
        let now = Instant::now();
        let mut doomed = Vec::new();
        let mut fills = Vec::new();
        {
            let mut st = self.lock();
            if st.stopped {
                return;
            }
            let budget = self.config.memory_budget_mib as f64;
            let keep_alive = self.config.keep_alive;
            let names: Vec<String> = st.fns.keys().cloned().collect();
            for name in names {
                let Some(p) = st.fns.get_mut(&name) else {
                    continue;
                };
                let target = p.target(now, keep_alive);
                let idle = p
                    .last_demand
                    .is_none_or(|t| now.duration_since(t) > keep_alive);
                let mut freed = 0.0;
                while p.ready.len() > target && (idle || p.ready.len() > 2 * target + 2) {
                    if let Some(s) = p.ready.pop_back() {
                        freed += s.pss_mib;
                        doomed.push(s.guest);
                    }
                }
                if idle && target == 0 && p.ready.is_empty() && p.filling == 0 && p.waiting == 0 {
                    // Idle past the keep-alive with nothing kept: the entry (which holds the
                    // function's code) goes; the next invocation makes a new one.
                    st.charged_mib -= freed;
                    st.fns.remove(&name);
                    continue;
                }
                let backing_off = p.retry_at.is_some_and(|t| now < t);
                let want = if backing_off {
                    0
                } else {
                    target.saturating_sub(p.ready.len() + p.filling)
                };
                let function = p.function.clone();
                let key = p.key.clone();
                st.charged_mib -= freed;
                for _ in 0..want {
                    if st.filling >= self.config.refill_parallelism.max(1) {
                        break;
                    }
                    if st.charged_mib + st.slot_mib > budget {
                        break;
                    }
                    st.charged_mib += st.slot_mib;
                    st.filling += 1;
                    let estimate = st.slot_mib;
                    if let Some(p) = st.fns.get_mut(&name) {
                        p.filling += 1;
                    }
                    fills.push((function.clone(), key.clone(), estimate));
                }
            }
        }
        for g in doomed {
            tokio::spawn(g.destroy());
        }
        for (function, key, estimate) in fills {
            let pool = Arc::clone(self);
            tokio::spawn(async move { pool.fill(function, key, estimate).await });
        }
    }

    async fn fill(self: Arc<Self>, function: FunctionRef, key: String, estimate: f64) {
        let started = Instant::now();
        let restored: Result<Guest, String> = match self.launcher.snapshot(&function).await {
            Ok((snap, _)) => match self
                .launcher
                .restore(&function, &snap, CpuPriority::Background)
                .await
            {
                Ok(mut guest) => match guest.warm_up(crate::guest::WARMUP_LIMIT).await {
                    Ok(()) => Ok(guest),
                    Err(e) => {
                        guest.destroy().await;
                        Err(format!("warm-up failed: {e}"))
                    }
                },
                Err(e) => Err(format!("restore failed: {e}")),
            },
            Err(e) => Err(format!("no snapshot: {e}")),
        };
        let (restored, error) = match restored {
            Ok(g) => (Some(g), None),
            Err(e) => {
                tracing::warn!(function = %function.spec.name, error = %e, "pool refill failed");
                (None, Some(e))
            }
        };
        let pss = restored
            .as_ref()
            .and_then(Guest::pss_mib)
            .unwrap_or(estimate);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let leftover = {
            let mut st = self.lock();
            st.filling = st.filling.saturating_sub(1);
            st.charged_mib -= estimate;
            if restored.is_some() {
                st.slot_mib = 0.8 * st.slot_mib + 0.2 * pss;
            }
            let fits = st.charged_mib + pss <= self.config.memory_budget_mib as f64 && !st.stopped;
            let mut leftover = restored;
            let mut pushed = false;
            if let Some(p) = st.fns.get_mut(&function.spec.name).filter(|p| p.key == key) {
                p.filling = p.filling.saturating_sub(1);
                match error {
                    None => {
                        p.refill_ms = 0.7 * p.refill_ms + 0.3 * elapsed_ms;
                        p.failures = 0;
                        p.last_error = None;
                        p.retry_at = None;
                    }
                    Some(e) => {
                        // No tight loop of failing restores: each failure doubles the pause.
                        p.failures = p.failures.saturating_add(1);
                        p.retry_at = Some(Instant::now() + backoff(p.failures));
                        p.last_error = Some(e);
                    }
                }
                if fits {
                    if let Some(guest) = leftover.take() {
                        p.ready.push_back(Slot {
                            guest,
                            pss_mib: pss,
                        });
                        p.available.notify_one();
                        pushed = true;
                    }
                }
            }
            if pushed {
                st.charged_mib += pss;
            }
            leftover
        };
        // Not kept (over budget, function changed, pool stopped): it never served anyone.
        if let Some(g) = leftover {
            g.destroy().await;
        }
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_refills_back_off_exponentially_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
