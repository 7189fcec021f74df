//! Signing in and out, and who is looking at a page.
//!
//! Signing in checks an access key's id and secret (posted in a form's body, never in a URL)
//! and opens a session in the store: the browser gets its token in an HttpOnly,
//! `SameSite=Strict` cookie (`Secure` when the node serves HTTPS) that expires with it, and the
//! page gets the session's CSRF token, which the console's script sends with every request
//! that changes state. A `--dev` node has no keys: its console needs no sign-in.

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use ignition_api::auth::{self, Caller};
use ignition_api::AppState;
use maud::html;
use serde::Deserialize;

use crate::layout::{layout, Nav};
use crate::Page;

/// How long a session lasts.
pub(crate) const SESSION_TTL_S: i64 = 8 * 3600;

/// Who is looking at a page.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub(crate) caller: Caller,
    /// What the page's script echoes on requests that change state (`None` on a `--dev` node,
    /// which checks nothing).
    pub(crate) csrf: Option<String>,
}

impl Viewer {
    /// Who is looking: the session's caller, the development mode's, or a redirect to sign in
    /// (saying the session expired when the browser had one).
    pub(crate) async fn of(state: &AppState, headers: &HeaderMap) -> Result<Self, Page> {
        if state.dev_mode {
            return Ok(Self {
                caller: Caller {
                    tenant: ignition_types::DEFAULT_TENANT.to_owned(),
                    operator: true,
                },
                csrf: None,
            });
        }
        let Some(token) = auth::session_token(headers) else {
            return Err(Page::Redirect(Redirect::to("/ui/sign-in")));
        };
        match auth::session(state, token.to_owned()).await {
            Ok(Some((caller, session))) => Ok(Self {
                caller,
                csrf: Some(session.csrf),
            }),
            Ok(None) => Err(Page::Redirect(Redirect::to("/ui/sign-in?expired=1"))),
            Err(e) => Err(crate::pages::failed(&e.message)),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignInQuery {
    #[serde(default)]
    expired: Option<String>,
}

pub(crate) async fn sign_in_page(
    State(state): State<AppState>,
    Query(q): Query<SignInQuery>,
) -> Page {
    let notice = q
        .expired
        .is_some()
        .then_some("Your session has expired or was signed out. Sign in again.");
    sign_in_form(&state, StatusCode::OK, notice, None)
}

fn sign_in_form(
    state: &AppState,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
) -> Page {
    let body = html! {
        section.card.narrow {
            h1 { "Sign in" }
            @if state.dev_mode {
                p { "This node runs in development mode: no sign-in is needed. "
                    a href="/ui/functions" { "Go to the functions." } }
            } @else {
                p.muted { "With an access key made by " code { "ignition key create" } "." }
                @if let Some(n) = notice { p.notice role="status" { (n) } }
                @if let Some(e) = error { p.error #sign-in-error role="alert" { (e) } }
                form method="post" action="/ui/sign-in" autocomplete="off" {
                    label for="access_key_id" { "Access key id" }
                    input #access_key_id name="access_key_id" required maxlength="128"
                        spellcheck="false" autocomplete="username";
                    label for="secret_access_key" { "Secret access key" }
                    input #secret_access_key name="secret_access_key" type="password" required
                        maxlength="128" autocomplete="current-password";
                    button type="submit" { "Sign in" }
                }
            }
        }
    };
    Page::Html(status, layout("Sign in", None, Nav::None, body))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignIn {
    access_key_id: String,
    secret_access_key: String,
}

/// Most bytes a sign-in or sign-out form may have.
pub(crate) const MAX_FORM: usize = 16 * 1024;

/// A form's body, read within the node's body timeout (the console's routes are outside the
/// API's authentication, which bounds the API's own bodies): `None` when it is not the form,
/// is larger than [`MAX_FORM`] or comes too slowly.
async fn form<T: serde::de::DeserializeOwned>(state: &AppState, req: Request) -> Option<T> {
    let read = axum::body::to_bytes(req.into_body(), MAX_FORM);
    let bytes = tokio::time::timeout(state.body_timeout, read)
        .await
        .ok()?
        .ok()?;
    serde_urlencoded::from_bytes(&bytes).ok()
}

pub(crate) async fn sign_in(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let refused =
        |why: &str| sign_in_form(&state, StatusCode::UNAUTHORIZED, None, Some(why)).into_response();
    if state.dev_mode {
        return Redirect::to("/ui/functions").into_response();
    }
    if !auth::same_origin(&headers) {
        return refused("Sign in from this node's own sign-in page.");
    }
    let Some(form) = form::<SignIn>(&state, req).await else {
        return refused("Enter an access key id and its secret.");
    };
    let (id, secret) = (form.access_key_id.trim().to_owned(), form.secret_access_key);
    if id.is_empty() || id.len() > 128 || secret.len() > 128 {
        return refused("Enter an access key id and its secret.");
    }
    let store = std::sync::Arc::clone(&state.store);
    let key = tokio::task::spawn_blocking(move || store.key(&id)).await;
    let key = match key {
        Ok(Ok(Some(key))) if auth::secret_matches(&key, secret.trim()) => key,
        Ok(Ok(_)) => {
            return refused("That access key id and secret do not match a key of this node.")
        }
        Ok(Err(e)) => return crate::pages::failed(&e.to_string()).into_response(),
        Err(e) => return crate::pages::failed(&e.to_string()).into_response(),
    };
    let store = std::sync::Arc::clone(&state.store);
    let id = key.access_key_id.clone();
    let opened = tokio::task::spawn_blocking(move || store.open_session(&id, SESSION_TTL_S)).await;
    let session = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return crate::pages::failed(&e.to_string()).into_response(),
        Err(e) => return crate::pages::failed(&e.to_string()).into_response(),
    };
    tracing::info!(access_key_id = %key.access_key_id, tenant = %key.tenant, "console sign-in");
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_S}{}",
        auth::SESSION_COOKIE,
        session.token,
        if state.urls.https { "; Secure" } else { "" }
    );
    with_cookie(Redirect::to("/ui/functions").into_response(), &cookie)
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignOut {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn sign_out(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let clear = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        auth::SESSION_COOKIE
    );
    let Some(token) = auth::session_token(&headers).map(str::to_owned) else {
        return with_cookie(Redirect::to("/ui/sign-in").into_response(), &clear);
    };
    let csrf = form::<SignOut>(&state, req)
        .await
        .map(|f| f.csrf)
        .unwrap_or_default();
    match auth::session(&state, token.clone()).await {
        Ok(Some((_, session)))
            if auth::same_origin(&headers) && auth::csrf_matches(&session, csrf.as_bytes()) =>
        {
            let store = std::sync::Arc::clone(&state.store);
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || store.close_session(&token)).await
            {
                return crate::pages::failed(&e.to_string()).into_response();
            }
            with_cookie(Redirect::to("/ui/sign-in").into_response(), &clear)
        }
        Ok(Some(_)) => (
            StatusCode::FORBIDDEN,
            "sign out from the console's own page",
        )
            .into_response(),
        Ok(None) => with_cookie(Redirect::to("/ui/sign-in").into_response(), &clear),
        Err(e) => crate::pages::failed(&e.message).into_response(),
    }
}
