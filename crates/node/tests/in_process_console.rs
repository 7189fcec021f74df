//! The web console's sessions, pages and boundary over HTTP, on a node started in-process with
//! the in-process guest (no VM is involved: these are about sign-in, CSRF, tenant scoping,
//! escaping and the history, not about running code). The console in a real browser against
//! real microVMs is `crates/cli/tests/console_e2e.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process_support;

use base64::Engine;
use in_process_support::*;
use reqwest::header::{
    HeaderMap, HeaderValue, CONTENT_SECURITY_POLICY, COOKIE, LOCATION, ORIGIN, SET_COOKIE,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn secure_node() -> TestNode {
    start_with(ignition_in_process_guest::InProcessGuest::new(), |c| {
        c.api.dev = false;
    })
    .await
}

/// Posts the sign-in form with `fields`, from `origin`.
async fn post_sign_in(n: &TestNode, origin: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(n.url("/ui/sign-in"))
        .header(ORIGIN, origin)
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// Signs in with `key` and returns the session cookie (`name=value`) and the CSRF token the
/// pages carry.
async fn sign_in(n: &TestNode, key: &ignition_store::AccessKey) -> (String, String) {
    let origin = format!("http://{}", n.node.addr());
    let r = post_sign_in(
        n,
        &origin,
        &[
            ("access_key_id", key.access_key_id.as_str()),
            ("secret_access_key", key.secret_access_key.as_str()),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/ui/functions");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = client()
        .get(n.url("/ui/functions"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("<meta name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries the session's CSRF token")
        .to_owned();
    (cookie, csrf)
}

/// A signed-in browser: its session cookie and the node's origin on every request, and on
/// writes the session's CSRF token.
struct Browser<'a> {
    n: &'a TestNode,
    cookie: String,
    csrf: String,
}

impl<'a> Browser<'a> {
    async fn sign_in(n: &'a TestNode, key: &ignition_store::AccessKey) -> Self {
        let (cookie, csrf) = sign_in(n, key).await;
        Self { n, cookie, csrf }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.unguarded(reqwest::Method::GET, path)
    }

    /// A request with the cookie but without the CSRF token.
    fn unguarded(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client()
            .request(method, self.n.url(path))
            .headers(session_headers(self.n, &self.cookie, None))
    }

    fn write(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client()
            .request(method, self.n.url(path))
            .headers(session_headers(self.n, &self.cookie, Some(&self.csrf)))
    }
}

fn session_headers(n: &TestNode, cookie: &str, csrf: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
    h.insert(
        ORIGIN,
        HeaderValue::from_str(&format!("http://{}", n.node.addr())).unwrap(),
    );
    if let Some(t) = csrf {
        h.insert("x-ignition-csrf", HeaderValue::from_str(t).unwrap());
    }
    h
}

fn deploy_body(description: &str) -> Value {
    let code = zip_of(&[(
        "echo.py",
        b"def handler(event, context):\n    return event\n",
    )]);
    json!({
        "runtime": "python3",
        "handler": "echo.handler",
        "description": description,
        "env": {"SHOWN": "<script>alert(2)</script>"},
        "code": base64::engine::general_purpose::STANDARD.encode(code),
    })
}

#[tokio::test]
async fn in_process_console_signs_in_with_a_key_into_a_strict_cookie_behind_a_strict_policy() {
    let n = secure_node().await;
    let key = n.node.state().store.create_key("acme").unwrap();

    let r = client().get(n.url("/ui/functions")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()[LOCATION],
        "/ui/sign-in",
        "signed out: to sign-in"
    );
    let r = client().get(n.url("/ui")).send().await.unwrap();
    assert_eq!(r.headers()[LOCATION], "/ui/functions");

    let r = client().get(n.url("/ui/sign-in")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = r.text().await.unwrap();
    assert!(
        page.contains("method=\"post\" action=\"/ui/sign-in\""),
        "a POST form: no secret in a URL"
    );
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline script or style"
    );

    // A wrong secret, an unknown key, and a form posted from another site are refused.
    let origin = format!("http://{}", n.node.addr());
    for (id, secret, from) in [
        (key.access_key_id.as_str(), "wrong", origin.as_str()),
        (
            "AKIGNOSUCHKEY0000000",
            key.secret_access_key.as_str(),
            origin.as_str(),
        ),
        (
            key.access_key_id.as_str(),
            key.secret_access_key.as_str(),
            "http://evil.example",
        ),
    ] {
        let r = post_sign_in(
            &n,
            from,
            &[("access_key_id", id), ("secret_access_key", secret)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{id} from {from}");
        assert!(r.headers().get(SET_COOKIE).is_none());
        let page = r.text().await.unwrap();
        assert!(page.contains("id=\"sign-in-error\""), "{page}");
    }

    // A form larger than a sign-in's is not read.
    let padding = "x".repeat(64 * 1024);
    let r = post_sign_in(
        &n,
        &origin,
        &[
            ("access_key_id", key.access_key_id.as_str()),
            ("secret_access_key", key.secret_access_key.as_str()),
            ("padding", padding.as_str()),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = post_sign_in(
        &n,
        &origin,
        &[
            ("access_key_id", key.access_key_id.as_str()),
            ("secret_access_key", key.secret_access_key.as_str()),
        ],
    )
    .await;
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    for part in [
        "ignition_session=",
        "Path=/",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=28800",
    ] {
        assert!(set.contains(part), "{set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP: a Secure cookie would never come back"
    );
    assert!(!set.contains(&key.secret_access_key));
}

#[tokio::test]
async fn in_process_console_session_writes_need_its_csrf_token_from_its_own_origin() {
    let n = secure_node().await;
    let key = n.node.state().store.create_key("acme").unwrap();
    let acme = Browser::sign_in(&n, &key).await;
    let (cookie, csrf) = (acme.cookie.clone(), acme.csrf.clone());
    let c = client();

    // Reads need only the cookie.
    let r = acme.get("/v1/functions").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A write without the token, with a wrong one, or from another origin is refused.
    let body = deploy_body("");
    for (token, origin) in [
        (None, None),
        (Some("not-the-token"), None),
        (Some(csrf.as_str()), Some("http://evil.example")),
    ] {
        let mut h = session_headers(&n, &cookie, token);
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        let r = c
            .put(n.url("/v1/functions/hello"))
            .headers(h)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{token:?} {origin:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errorType"], "AccessDeniedException");
    }
    assert!(n
        .node
        .state()
        .store
        .get_function("acme.hello")
        .unwrap()
        .is_none());

    // With both, the console's deploy and invoke go through, as the tenant's.
    let r = acme
        .write(reqwest::Method::PUT, "/v1/functions/hello")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    assert!(n
        .node
        .state()
        .store
        .get_function("acme.hello")
        .unwrap()
        .is_some());
    let r = acme
        .write(
            reqwest::Method::POST,
            "/2015-03-31/functions/hello/invocations",
        )
        .body(r#"{"x":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Signing out needs the token too; then the cookie opens nothing.
    let r = acme
        .unguarded(reqwest::Method::POST, "/ui/sign-out")
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = acme
        .unguarded(reqwest::Method::POST, "/ui/sign-out")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = acme.get("/v1/functions").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = acme.get("/ui/functions").send().await.unwrap();
    assert_eq!(r.headers()[LOCATION], "/ui/sign-in?expired=1");
    let page = c
        .get(n.url("/ui/sign-in?expired=1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("session has expired"), "{page}");

    // A deleted key's sessions end with it.
    let again = Browser::sign_in(&n, &key).await;
    n.node.state().store.delete_key(&key.access_key_id).unwrap();
    let r = again.get("/ui/functions").send().await.unwrap();
    assert_eq!(r.headers()[LOCATION], "/ui/sign-in?expired=1");
}

#[tokio::test]
async fn in_process_console_shows_a_tenant_its_own_functions_escaped_with_their_history() {
    let n = secure_node().await;
    let store = &n.node.state().store;
    let acme_key = store.create_key("acme").unwrap();
    let bravo = store.create_key("bravo").unwrap();
    let operator = store.create_operator_key().unwrap();
    let acme = Browser::sign_in(&n, &acme_key).await;
    let cookie = acme.cookie.clone();
    let c = client();
    let hostile = "<img src=x onerror=alert(1)>";
    let r = acme
        .write(reqwest::Method::PUT, "/v1/functions/hello")
        .json(&deploy_body(hostile))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for _ in 0..3 {
        let r = acme
            .write(
                reqwest::Method::POST,
                "/2015-03-31/functions/hello/invocations",
            )
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    let page = |path: &'static str, cookie: String| {
        let (c, n) = (c.clone(), n.url(path));
        async move {
            let r = c.get(n).header(COOKIE, cookie).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let (status, list) = page("/ui/functions", cookie.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.contains("data-function=\"hello\""), "{list}");
    let (status, one) = page("/ui/functions/hello", cookie.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !one.contains(hostile) && !one.contains("<script>alert(2)"),
        "nothing a tenant wrote becomes markup"
    );
    assert!(
        one.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "it shows as text"
    );
    assert!(
        one.contains("data-total=\"3\""),
        "the chart counts the invocations"
    );
    assert_eq!(
        one.matches("data-request=").count(),
        3,
        "the recent list has them"
    );

    // The history behind the charts, as the API answers it.
    let r = acme
        .get("/v1/functions/hello/history?minutes=5")
        .send()
        .await
        .unwrap();
    let h: Value = r.json().await.unwrap();
    let minutes = h["minutes"].as_array().unwrap();
    let total: u64 = minutes
        .iter()
        .map(|m| m["invocations"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3, "{h}");
    assert_eq!(h["recent"][0]["status"], "success");
    assert_eq!(h["recent"][0]["node"], "n1");
    let r = acme
        .get("/v1/functions/hello/history?minutes=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Another tenant sees none of it.
    let (other, _) = sign_in(&n, &bravo).await;
    let (_, list) = page("/ui/functions", other.clone()).await;
    assert!(!list.contains("data-function=\"hello\""));
    let (status, missing) = page("/ui/functions/hello", other.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing.contains("Function not found: hello"));
    let r = c
        .get(n.url("/v1/functions/hello/history"))
        .header(COOKIE, &other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The node's page is the operator's.
    let (status, _) = page("/ui/node", cookie.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (op, _) = sign_in(&n, &operator).await;
    let (status, node) = page("/ui/node", op).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        node.contains("Warm pool") && node.contains("id=\"cluster\""),
        "{node}"
    );

    // Deleted: "not found", and its history goes with it.
    let r = acme
        .write(reqwest::Method::DELETE, "/v1/functions/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, _) = page("/ui/functions/hello", cookie.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(n
        .node
        .state()
        .metrics
        .history
        .past("acme.hello", 0)
        .recent
        .is_empty());
}

#[tokio::test]
async fn in_process_console_serves_its_assets_and_needs_no_sign_in_in_dev_mode() {
    let n = start_with(ignition_in_process_guest::InProcessGuest::new(), |_| {}).await;
    let c = client();
    let r = c.get(n.url("/ui/functions")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "--dev: no sign-in");
    let page = r.text().await.unwrap();
    assert!(page.contains("development mode"));
    assert!(!page.contains("name=\"csrf\""));
    for (asset, kind) in [
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
    ] {
        let r = c
            .get(n.url(&format!("/ui/assets/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let r = c
        .get(n.url("/ui/assets/../../etc/passwd"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(n.url("/ui/no/such/page")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("No such page"));
}
