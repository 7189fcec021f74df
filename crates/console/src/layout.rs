//! The frame every page shares: the head (the console's own stylesheet and script, the
//! session's CSRF token for the script), the navigation, and the banner that says the node is
//! not answering.

use maud::{html, Markup, DOCTYPE};

use crate::session::Viewer;

/// Which navigation entry is the current page's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    None,
    Functions,
    Deploy,
    Node,
}

pub(crate) fn layout(title: &str, viewer: Option<&Viewer>, nav: Nav, body: Markup) -> Markup {
    let current = |n: Nav| if n == nav { Some("page") } else { None };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(csrf) = viewer.and_then(|v| v.csrf.as_deref()) {
                    meta name="csrf" content=(csrf);
                }
                title { (title) " · Ignition" }
                link rel="stylesheet" href=(crate::assets::path("console.css"));
                script type="module" src=(crate::assets::path("console.js")) {}
            }
            body {
                header.top {
                    a.brand href="/ui/functions" { "Ignition" }
                    @if let Some(v) = viewer {
                        nav {
                            a href="/ui/functions" aria-current=[current(Nav::Functions)] { "Functions" }
                            a href="/ui/deploy" aria-current=[current(Nav::Deploy)] { "Deploy" }
                            @if v.caller.operator {
                                a href="/ui/node" aria-current=[current(Nav::Node)] { "Node" }
                            }
                        }
                        div.who {
                            span.muted #who {
                                @if v.caller.operator && v.csrf.is_some() { "operator" }
                                @else if v.csrf.is_none() { "development mode" }
                                @else { "tenant " (v.caller.tenant) }
                            }
                            @if let Some(csrf) = &v.csrf {
                                form method="post" action="/ui/sign-out" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                div.banner #offline role="alert" hidden {
                    "The node is not answering. Retrying…"
                }
                main { (body) }
            }
        }
    }
}
