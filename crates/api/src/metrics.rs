//! Prometheus metrics at `GET /metrics` (text exposition format): invocations by function, how
//! their VM started and how they ended; their durations; and, read at scrape time, the worker's
//! counters, warm pool memory, VMs waiting for admission, VM networks, and asynchronous events.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use ignition_worker::{ExecError, Execution};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    function: String,
    /// `boot`, `restore`, `pool`, `warm`, or `none` when no VM answered.
    start: String,
    /// `success`, `function_error`, `timeout`, `vm_error` or `throttled`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    invocations: Family<InvocationLabels, Counter>,
    duration: Family<FunctionLabel, Histogram>,
    worker: Family<NameLabel, Gauge>,
    /// Each function's recent past, per minute.
    pub history: crate::history::History,
}

fn new_histogram() -> Histogram {
    // 5 ms to ~82 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ignition");
        let invocations = Family::<InvocationLabels, Counter>::default();
        let duration = Family::<FunctionLabel, Histogram>::new_with_constructor(
            new_histogram as fn() -> Histogram,
        );
        let worker = Family::<NameLabel, Gauge>::default();
        registry.register(
            "invocations",
            "Invocations by function, VM start kind and outcome",
            invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Time from accepting an invocation to its answer",
            duration.clone(),
        );
        registry.register(
            "node",
            "Node state read at scrape time: worker counters (boots, restores, snapshots, pool and warm hits), pool memory, invocations waiting for admission, VM networks, asynchronous events",
            worker.clone(),
        );
        Self {
            registry,
            invocations,
            duration,
            worker,
            history: crate::history::History::default(),
        }
    }
}

impl Metrics {
    fn count(&self, function: &str, start: &str, outcome: &str) {
        self.invocations
            .get_or_create(&InvocationLabels {
                function: function.to_owned(),
                start: start.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records an invocation that ran (or that no VM answered): its counters and its line in
    /// the function's history.
    pub(crate) fn record_run(
        &self,
        function: &str,
        request_id: &str,
        node: &str,
        outcome: &Result<Execution, ExecError>,
    ) {
        use crate::history::Status;
        let (status, duration_ms, start) = match outcome {
            Ok(exec) => {
                let (outcome, status) = match exec.result.outcome {
                    ignition_proto::Outcome::Success(_) => ("success", Status::Success),
                    ignition_proto::Outcome::Timeout { .. } => ("timeout", Status::Timeout),
                    _ => ("function_error", Status::FunctionError),
                };
                self.count(function, exec.start.as_str(), outcome);
                self.duration
                    .get_or_create(&FunctionLabel {
                        function: function.to_owned(),
                    })
                    .observe(exec.timings.total_ms as f64 / 1000.0);
                (
                    status,
                    Some(exec.timings.total_ms),
                    Some(exec.start.as_str()),
                )
            }
            Err(e) => {
                let (outcome, status) = match e {
                    ExecError::Timeout(_) => ("timeout", Status::Timeout),
                    _ => ("vm_error", Status::VmError),
                };
                self.count(function, "none", outcome);
                (status, None, None)
            }
        };
        self.history.record(
            function,
            crate::history::Invocation {
                request_id: request_id.to_owned(),
                at_ms: crate::history::now_ms(),
                status,
                duration_ms,
                start,
                node: node.to_owned(),
            },
        );
    }

    /// Records an invocation refused by a concurrency limit.
    pub(crate) fn record_throttle(&self, function: &str, request_id: &str, node: &str) {
        self.count(function, "none", "throttled");
        self.history.record(
            function,
            crate::history::Invocation {
                request_id: request_id.to_owned(),
                at_ms: crate::history::now_ms(),
                status: crate::history::Status::Throttled,
                duration_ms: None,
                start: None,
                node: node.to_owned(),
            },
        );
    }

    fn set(&self, name: &str, v: i64) {
        self.worker
            .get_or_create(&NameLabel {
                name: name.to_owned(),
            })
            .set(v);
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `GET /metrics`.
pub(crate) async fn render(
    _: crate::auth::Operator,
    State(state): State<AppState>,
) -> impl IntoResponse {
    let m = &state.metrics;
    let w = state.worker.stats();
    for (name, v) in [
        ("boots", w.boots),
        ("restores", w.restores),
        ("snapshots_built", w.snapshots_built),
        ("base_snapshots_built", w.base_snapshots_built),
        ("snapshots_invalid", w.snapshots_invalid),
        ("restore_fallbacks", w.restore_fallbacks),
        ("pool_hits", w.pool_hits),
        ("warm_hits", w.warm_hits),
        ("admission_waiting", state.worker.waiting()),
    ] {
        m.set(name, i(v));
    }
    let n = state.node.stats().await;
    for (name, v) in [
        ("node_queued", n.queued as u64),
        ("node_busy_slots", n.busy as u64),
        ("node_peers", n.peers as u64),
        ("node_ran_stolen", n.ran_stolen),
        ("node_lent", n.lent),
        ("node_stolen", n.stolen),
        ("node_probes", n.probes),
        ("node_reclaimed", n.reclaimed),
    ] {
        m.set(name, i(v));
    }
    m.set("pool_charged_mib", state.worker.pool_charged_mib() as i64);
    m.set(
        "logs_pending",
        i64::try_from(state.logs.pending()).unwrap_or(i64::MAX),
    );
    m.set("logs_dropped", i(state.logs.dropped()));
    m.set("store_statements", i(state.store.statements()));
    let (ready, filling) = state.worker.pool_sizes();
    m.set("pool_ready", i64::try_from(ready).unwrap_or(i64::MAX));
    m.set("pool_filling", i64::try_from(filling).unwrap_or(i64::MAX));
    if let Some(n) = state.worker.network_stats() {
        m.set("vm_networks_active", i64::from(n.active));
    }
    if let Ok((queued, running, failed)) = crate::blocking(&state, |s| s.event_counts()).await {
        m.set("events_queued", i(queued));
        m.set("events_running", i(running));
        m.set("events_failed", i(failed));
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &m.registry).is_err() {
        text.clear();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
