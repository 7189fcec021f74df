//! The operator's page: this node's VMs, queue and warm pool per function, and its cluster.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ignition_api::AppState;
use maud::html;

use crate::layout::{layout, Nav};
use crate::session::Viewer;
use crate::Page;

pub(crate) async fn node(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let viewer = match Viewer::of(&state, &headers).await {
        Ok(v) => v,
        Err(p) => return p,
    };
    if !viewer.caller.operator {
        return Page::Html(
            StatusCode::FORBIDDEN,
            layout(
                "Node",
                Some(&viewer),
                Nav::Node,
                html! { section.card { h1 { "Node" } p.error {
                "This page is the operator's: sign in with a key made by "
                code { "ignition key create --operator" } "." } } },
            ),
        );
    }
    let store = Arc::clone(&state.store);
    let functions = match tokio::task::spawn_blocking(move || store.list_functions()).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return crate::pages::failed(&e.to_string()),
        Err(e) => return crate::pages::failed(&e.to_string()),
    };
    let worker = &state.worker;
    let w = worker.stats();
    let cluster = state.node.stats().await;
    let (budget_mib, slot_mib) = worker.pool_budget();
    let (ready, filling) = worker.pool_sizes();
    let pools: Vec<_> = functions
        .iter()
        .map(|f| {
            let name = &f.config.name;
            let in_use = state.concurrency.running(name);
            (
                name.clone(),
                f.config.memory_mib,
                in_use,
                worker.pool_status(name),
            )
        })
        .filter(|(_, _, in_use, p)| p.ready + p.filling + p.target + p.min_ready > 0 || *in_use > 0)
        .collect();
    let peers = state.node.peer_stats().await;
    let net = worker.network_stats();
    let body = html! {
        div.heading {
            h1 { "Node " code { (state.node_id) } }
            span.muted { "guest image " code.small { (worker.image().id) } }
        }
        section data-live #node-live {
            div.tiles {
                div.tile { span.value #vms-busy { (cluster.busy) } span.label { "VMs running invocations" } }
                div.tile { span.value { (cluster.slots) } span.label { "slots" } }
                div.tile { span.value #queued { (cluster.queued) } span.label { "queued here" } }
                div.tile { span.value { (worker.waiting()) } span.label { "waiting for admission" } }
                div.tile { span.value #pool-ready { (ready) } span.label { "warm slots ready" } }
                div.tile { span.value { (filling) } span.label { "warm slots filling" } }
                div.tile { span.value { (format!("{:.0}", worker.pool_charged_mib())) " / " (budget_mib) } span.label { "pool MiB charged / budget" } }
                @if let Some(n) = &net {
                    div.tile { span.value { (n.active) } span.label { "VM networks active" } }
                }
            }
            section.card {
                h2 { "Warm pool" }
                p.muted { "A slot is a VM restored from the function's snapshot, waiting; a new one is expected to cost about "
                    (format!("{slot_mib:.0}")) " MiB." }
                @if pools.is_empty() {
                    p.muted #pools-empty { "No function has a warm pool on this node now." }
                } @else {
                    table #pools {
                        thead { tr {
                            th { "Function" } th.num { "In use" } th.num { "Ready" } th.num { "Filling" } th.num { "Target" }
                            th.num { "Kept (min)" } th.num { "Arrivals/s" } th.num { "Refill" } th.num { "Memory per slot" }
                            th.num { "Failures" }
                        } }
                        tbody {
                            @for (name, memory, in_use, p) in &pools {
                                tr data-function=(name) {
                                    td { (name) }
                                    td.num { (in_use) }
                                    td.num { (p.ready) } td.num { (p.filling) } td.num { (p.target) }
                                    td.num { (p.min_ready) }
                                    td.num { (format!("{:.2}", p.arrival_rate)) }
                                    td.num { (format!("{:.0}", p.refill_ms)) " ms" }
                                    td.num {
                                        @if p.slot_pss_mib.is_empty() { span.muted { "of " (memory) " MiB" } }
                                        @else {
                                            (format!("{:.1}", p.slot_pss_mib.iter().sum::<f64>() / p.slot_pss_mib.len() as f64))
                                            " MiB PSS " span.muted { "of " (memory) } }
                                    }
                                    td.num.bad[p.failures > 0] { (p.failures) }
                                }
                            }
                        }
                    }
                }
            }
            div.columns {
                section.card {
                    h2 { "Since start" }
                    dl.facts {
                        dt { "Invocations" } dd { (w.invocations) }
                        dt { "Boots" } dd { (w.boots) }
                        dt { "Restores" } dd { (w.restores) }
                        dt { "Pool hits" } dd { (w.pool_hits) }
                        dt { "Kept-VM hits" } dd { (w.warm_hits) }
                        dt { "Snapshots built" } dd { (w.snapshots_built) }
                        dt { "Restore fallbacks" } dd { (w.restore_fallbacks) }
                    }
                }
                section.card #cluster {
                    h2 { "Cluster" }
                    @if cluster.members.is_empty() {
                        p.muted { "A single node: no peers." }
                    } @else {
                        p { (cluster.peers) " live peers: "
                            @for (i, m) in cluster.members.iter().enumerate() { @if i > 0 { ", " } code { (m) } } }
                    }
                    table.compact #nodes {
                        thead { tr {
                            th { "Node" } th.num { "Slots" } th.num { "Busy" } th.num { "Queued" }
                            th.num { "Stole" } th.num { "Ran stolen" } th.num { "Lent" }
                        } }
                        tbody {
                            tr data-node=(cluster.node) {
                                td { code { (cluster.node) } " " span.muted { "(this node)" } }
                                td.num { (cluster.slots) } td.num { (cluster.busy) } td.num { (cluster.queued) }
                                td.num { (cluster.stolen) } td.num { (cluster.ran_stolen) } td.num { (cluster.lent) }
                            }
                            @for p in &peers {
                                tr data-node=(p.node) {
                                    td { code { (p.node) } }
                                    @if p.reachable {
                                        td.num { (p.slots) } td.num { (p.busy) } td.num { (p.queued) }
                                        td.num { (p.stolen) } td.num { (p.ran_stolen) } td.num { (p.lent) }
                                    } @else {
                                        td.bad colspan="6" { "not answering" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Page::Html(
        StatusCode::OK,
        layout("Node", Some(&viewer), Nav::Node, body),
    )
}
