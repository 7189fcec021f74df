//! The tenant's pages: the functions, one function (configuration, versions, aliases, URL,
//! invoke form, charts, recent invocations, logs), and the deploy form.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use ignition_api::auth::Caller;
use ignition_api::history::{now_ms, Past, Status};
use ignition_api::AppState;
use ignition_store::{Alias, FunctionRecord, FunctionUrl, Store, StoreError};
use maud::{html, Markup};

use crate::layout::{layout, Nav};
use crate::session::Viewer;
use crate::Page;

/// A page that says something went wrong on the node.
pub(crate) fn failed(message: &str) -> Page {
    Page::Html(
        StatusCode::INTERNAL_SERVER_ERROR,
        layout(
            "Error",
            None,
            Nav::None,
            html! { section.card { h1 { "Something went wrong" } p.error { (message) } } },
        ),
    )
}

/// A page for a path with nothing behind it.
pub(crate) fn missing(message: &str) -> Page {
    missing_for(None, message)
}

/// [`missing`], with the navigation of whoever is looking.
fn missing_for(viewer: Option<&Viewer>, message: &str) -> Page {
    Page::Html(
        StatusCode::NOT_FOUND,
        layout(
            "Not found",
            viewer,
            Nav::Functions,
            html! {
                section.card {
                    h1 { "Not found" }
                    p #not-found { (message) }
                    p { a href="/ui/functions" { "Back to the functions" } }
                }
            },
        ),
    )
}

/// Runs a store read off the async threads.
async fn read<T, F>(state: &AppState, f: F) -> Result<T, Page>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(&state.store);
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(failed(&e.to_string())),
        Err(e) => Err(failed(&e.to_string())),
    }
}

/// What a function's row and page show besides its record.
struct Extras {
    versions: Vec<u32>,
    aliases: Vec<Alias>,
    urls: Vec<FunctionUrl>,
}

async fn extras(state: &AppState, stored: String) -> Result<Extras, Page> {
    read(state, move |s| {
        Ok(Extras {
            versions: s.list_versions(&stored)?,
            aliases: s.list_aliases(&stored)?,
            urls: s.function_urls(&stored)?,
        })
    })
    .await
}

fn host(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
}

fn runtime_of(r: &FunctionRecord) -> String {
    if r.config.image.is_some() {
        "image".to_owned()
    } else {
        r.config.runtime_name.clone()
    }
}

/// The caller's functions with their stored names, by name.
async fn own(state: &AppState, caller: &Caller) -> Result<Vec<(String, FunctionRecord)>, Page> {
    let all = read(state, |s| s.list_functions()).await?;
    let mut own: Vec<_> = all
        .into_iter()
        .filter_map(|r| {
            let name = caller.owns(&r.config.name)?.to_owned();
            Some((name, r))
        })
        .collect();
    own.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(own)
}

pub(crate) async fn functions(State(state): State<AppState>, headers: HeaderMap) -> Page {
    match functions_page(&state, &headers).await {
        Ok(p) | Err(p) => p,
    }
}

async fn functions_page(state: &AppState, headers: &HeaderMap) -> Result<Page, Page> {
    let viewer = Viewer::of(state, headers).await?;
    let own = own(state, &viewer.caller).await?;
    let now = now_ms();
    let mut rows = Vec::with_capacity(own.len());
    for (name, record) in own {
        let extras = extras(state, record.config.name.clone()).await?;
        let hour = state.metrics.history.last_hour(&record.config.name, now);
        rows.push((name, record, extras, hour));
    }
    let body = html! {
        div.heading {
            h1 { "Functions" }
            a.button href="/ui/deploy" { "Deploy a function" }
        }
        section data-live #functions {
            @if rows.is_empty() {
                p.empty {
                    @if viewer.caller.operator && viewer.csrf.is_some() {
                        "An operator's key owns no functions; the "
                        a href="/ui/node" { "Node" } " page shows every function's pool."
                    } @else {
                        "No functions yet. " a href="/ui/deploy" { "Deploy one." }
                    }
                }
            } @else {
                table {
                    thead { tr {
                        th { "Name" } th { "Runtime" } th.num { "Memory" } th.num { "Timeout" }
                        th.num { "Versions" } th { "Aliases" } th { "URL" } th { "Last invoked" }
                        th.num { "Invocations (1 h)" } th.num { "Errors (1 h)" }
                    } }
                    tbody {
                        @for (name, r, x, hour) in &rows {
                            tr data-function=(name) {
                                td { a href=(format!("/ui/functions/{name}")) { (name) } }
                                td { (runtime_of(r)) }
                                td.num { (r.config.memory_mib) " MiB" }
                                td.num { (r.config.timeout_s) " s" }
                                td.num { (x.versions.len()) }
                                td {
                                    @if x.aliases.is_empty() { span.muted { "–" } }
                                    @for (i, a) in x.aliases.iter().enumerate() { @if i > 0 { ", " } (a.name) }
                                }
                                td.url {
                                    @if x.urls.is_empty() { span.muted { "–" } }
                                    @for u in &x.urls {
                                        a href=(state.urls.address(host(headers), &u.url_id)) { "URL" } " " }
                                }
                                td { @match hour.last_invoked_ms {
                                    Some(t) => (crate::time::ago(t, now)),
                                    None => span.muted { "never here" },
                                } }
                                td.num.invocations { (hour.invocations) }
                                td.num.errors.bad[hour.errors > 0] { (hour.errors) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Page::Html(
        StatusCode::OK,
        layout("Functions", Some(&viewer), Nav::Functions, body),
    ))
}

pub(crate) async fn function(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Page {
    match function_page(&state, &headers, name).await {
        Ok(p) | Err(p) => p,
    }
}

async fn function_page(state: &AppState, headers: &HeaderMap, name: String) -> Result<Page, Page> {
    let viewer = Viewer::of(state, headers).await?;
    let Ok(stored) = viewer.caller.function(&name) else {
        return Err(missing_for(
            Some(&viewer),
            &format!("Function not found: {name}"),
        ));
    };
    let s = stored.clone();
    let Some(record) = read(state, move |st| st.get_function(&s)).await? else {
        return Err(missing_for(
            Some(&viewer),
            &format!("Function not found: {name}"),
        ));
    };
    let x = extras(state, stored.clone()).await?;
    let now = now_ms();
    let since = (now / 60_000 + 1).saturating_sub(crate::charts::WINDOW) * 60_000;
    let past = state.metrics.history.past(&stored, since);
    let c = &record.config;
    let body = html! {
        div.heading {
            h1 #function-name { (name) }
            span.muted { (runtime_of(&record)) }
        }
        div.columns {
            section.card {
                h2 { "Configuration" }
                dl.config {
                    @if let Some(image) = &c.image {
                        dt { "Image" } dd { code { (image.uri) } }
                        dt { "Digest" } dd { code.small { (image.digest) } }
                    } @else {
                        dt { "Runtime" } dd { (c.runtime_name) }
                        dt { "Handler" } dd { code { (c.handler) } }
                        dt { "Code" } dd { code.small { (short(&record.code_sha256)) } " · " (record.code_size / 1024) " KiB" }
                    }
                    dt { "Memory" } dd { (c.memory_mib) " MiB" }
                    dt { "Timeout" } dd { (c.timeout_s) " s" }
                    @if !c.description.is_empty() { dt { "Description" } dd { (c.description) } }
                    dt { "Egress" } dd {
                        @if c.egress.is_empty() { span.muted { "none (no network out)" } }
                        @for r in &c.egress { code { (r.to_string()) } " " }
                    }
                    dt { "Environment" } dd {
                        @if c.env.is_empty() { span.muted { "none" } }
                        @for (k, v) in &c.env { div { code { (k) "=" (v) } } }
                    }
                    @if !c.layers.is_empty() {
                        dt { "Layers" } dd { @for l in &c.layers { div { code.small { (l.arn) } } } }
                    }
                    dt { "Updated" } dd { (crate::time::date_time(record.updated_at)) }
                }
            }
            section.card {
                h2 { "Versions and aliases" }
                @if x.versions.is_empty() { p.muted { "Only $LATEST: no version published." } }
                @else { p { "Versions: " @for (i, v) in x.versions.iter().enumerate() { @if i > 0 { ", " } (v) } } }
                @if !x.aliases.is_empty() {
                    table.compact {
                        thead { tr { th { "Alias" } th { "Version" } th { "Description" } } }
                        tbody { @for a in &x.aliases { tr { td { (a.name) } td { (a.version) } td { (a.description) } } } }
                    }
                }
                h2 { "Function URL" }
                @if x.urls.is_empty() { p.muted { "None (" code { "ignition fn url " (name) } " makes one)." } }
                @for u in &x.urls {
                    @let address = state.urls.address(host(headers), &u.url_id);
                    p { a href=(address) { (address) } " · " (u.auth.as_str())
                        @if let Some(q) = &u.qualifier { " · alias " (q) } }
                }
            }
        }
        section.card #invoke {
            h2 { "Invoke" }
            form #invoke-form data-function=(name) {
                label for="payload" { "Event (JSON)" }
                textarea #payload name="payload" rows="5" spellcheck="false" { "{}" }
                p.error #payload-error role="alert" hidden {}
                button type="submit" { "Invoke" }
            }
            div #invoke-result hidden {
                dl.facts {
                    dt { "Status" } dd #result-status {}
                    dt { "Duration" } dd #result-duration {}
                    dt { "VM" } dd #result-start {}
                    dt { "Node" } dd #result-node {}
                    dt { "Request" } dd #result-request {}
                }
                h3 { "Result" }
                pre #result-body {}
                h3 { "Log tail" }
                pre #result-log {}
            }
        }
        section.card data-live #activity {
            h2 { "The last hour on this node" }
            div.charts {
                (crate::charts::invocations(&past.minutes, now))
                (crate::charts::durations(&past.minutes, now))
                (crate::charts::cold_and_warm(&past.minutes, now))
            }
            h2 { "Recent invocations" }
            (recent(&past, now))
        }
        section.card {
            h2 { "Logs " span.muted.small #logs-state { "following" } }
            pre.logs #logs data-function=(name) {}
        }
    };
    Ok(Page::Html(
        StatusCode::OK,
        layout(&name, Some(&viewer), Nav::Functions, body),
    ))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn recent(past: &Past, now: u64) -> Markup {
    html! {
        @if past.recent.is_empty() {
            p.muted #recent-empty { "No invocations on this node yet." }
        } @else {
            table.compact #recent {
                thead { tr { th { "When" } th { "Request" } th { "Status" } th.num { "Duration" } th { "VM" } th { "Node" } } }
                tbody {
                    @for inv in &past.recent {
                        tr data-request=(inv.request_id) {
                            td { (crate::time::clock_s(inv.at_ms)) " " span.muted { "(" (crate::time::ago(inv.at_ms, now)) ")" } }
                            td { code.small { (inv.request_id) } }
                            td.bad[inv.status != Status::Success] { (status_text(inv.status)) }
                            td.num { @match inv.duration_ms { Some(ms) => { (ms) " ms" }, None => "–" } }
                            td { (inv.start.unwrap_or("–")) }
                            td { (inv.node) }
                        }
                    }
                }
            }
        }
    }
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Success => "succeeded",
        Status::FunctionError => "function error",
        Status::Timeout => "timed out",
        Status::VmError => "VM error",
        Status::Throttled => "throttled",
    }
}

pub(crate) async fn deploy(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let viewer = match Viewer::of(&state, &headers).await {
        Ok(v) => v,
        Err(p) => return p,
    };
    let runtimes = ignition_types::SUPPORTED_RUNTIMES;
    let field =
        |id: &str| html! { p.error.field-error id=(format!("{id}-error")) role="alert" hidden {} };
    // A grid cell: the label, the control, and where the API's message about it goes.
    let cell = |id: &str, label: &str, control: Markup| {
        html! { div { label for=(id) { (label) } (control) (field(id)) } }
    };
    let body = html! {
        h1 { "Deploy a function" }
        section.card {
            form #deploy-form novalidate {
                p.error #form-error role="alert" hidden {}
                div.grid {
                    (cell("name", "Name", html! {
                        input #name name="name" required maxlength="64" placeholder="hello" spellcheck="false";
                    }))
                    (cell("runtime", "Runtime", html! {
                        select #runtime name="runtime" { @for r in runtimes { option value=(r) { (r) } } }
                    }))
                    (cell("handler", "Handler", html! {
                        input #handler name="handler" value="handler.handler" maxlength="128" spellcheck="false";
                    }))
                    (cell("memory", "Memory (MiB)", html! {
                        input #memory name="memory" type="number" value="128" step="1";
                    }))
                    (cell("timeout", "Timeout (s)", html! {
                        input #timeout name="timeout" type="number" value="3" step="1";
                    }))
                    (cell("code", "Code (a .zip or .tar.gz)", html! {
                        input #code name="code" type="file" accept=".zip,.tar.gz,.tgz";
                    }))
                }
                label for="env" { "Environment (one " code { "KEY=VALUE" } " a line)" }
                textarea #env name="env" rows="3" spellcheck="false" {}
                (field("env"))
                label for="egress" { "Egress rules (one " code { "CIDR:PORT[-PORT][/tcp|/udp]" } " a line; none: no network out)" }
                textarea #egress name="egress" rows="2" spellcheck="false" {}
                (field("egress"))
                button type="submit" { "Deploy" }
                span.muted #deploy-state role="status" {}
            }
        }
    };
    Page::Html(
        StatusCode::OK,
        layout("Deploy", Some(&viewer), Nav::Deploy, body),
    )
}
