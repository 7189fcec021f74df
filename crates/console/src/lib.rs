//! The web console every node serves at `/ui`: pages for people, over the same API and tenant
//! scoping as every other client.
//!
//! Pages are rendered on the node ([`maud`]: every value spliced into a page is escaped, so
//! nothing a function returns or logs becomes markup) and a small script of the console's own
//! ([`assets`]) does what needs no reload: invoking from a form, following logs, deploying,
//! refreshing live parts of a page, and saying when the node stops answering. The script
//! calls the node's API with the session cookie ([`session`]); every asset is built into the
//! binary and the Content-Security-Policy allows nothing but the node itself.
//!
//! Routes: `GET /ui` (to the functions), `GET|POST /ui/sign-in`, `POST /ui/sign-out`,
//! `GET /ui/functions`, `GET /ui/functions/{name}`, `GET /ui/deploy`, `GET /ui/node`
//! (operators), `GET /ui/assets/{file}`.

mod assets;
mod charts;
mod layout;
mod node_page;
mod pages;
mod session;
mod time;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use ignition_api::AppState;

/// What the console's pages may load and do: only what the node serves, no inline script or
/// style, no framing, forms posted only to the node.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The console's routes, to mount beside the API's (outside its authentication: pages sign in
/// with a session of their own).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/functions") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/functions") }))
        .route(
            "/ui/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/ui/sign-out", post(session::sign_out))
        .route("/ui/functions", get(pages::functions))
        .route("/ui/functions/{name}", get(pages::function))
        .route("/ui/deploy", get(pages::deploy))
        .route("/ui/node", get(node_page::node))
        .route("/ui/assets/{file}", get(assets::serve))
        .route(
            "/ui/{*rest}",
            get(|| async { pages::missing("No such page in the console.") }),
        )
        .layer(axum::middleware::map_response(secure_headers))
}

/// Headers on every console response: the policy above, no sniffing, no referrer to other
/// sites, no framing, and pages never cached (they show a tenant's data). The referrer policy is
/// `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null` with a
/// form's POST, and the node could no longer tell its own pages' requests from others'.
async fn secure_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A page's answer: the page, or where to go instead.
pub(crate) enum Page {
    Html(axum::http::StatusCode, maud::Markup),
    Redirect(Redirect),
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        match self {
            Self::Html(status, markup) => (status, markup).into_response(),
            Self::Redirect(r) => r.into_response(),
        }
    }
}
