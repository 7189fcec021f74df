//! Tenants' quotas on a node started in-process, with the in-process guest as its VMM:
//! functions, versions, code bytes, queued events and concurrent invocations each stop at the
//! tenant's quota with Lambda's error and a message naming the quota; an operator raises one
//! tenant's quota without touching another's; GetAccountSettings reports limits and usage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process_support;

use std::time::Duration;

use base64::Engine;
use ignition_in_process_guest::InProcessGuest;
use ignition_node::TenantQuotas;
use in_process_support::*;
use serde_json::{json, Value};

struct As {
    client: reqwest::Client,
    token: String,
}

impl As {
    fn new(key: &ignition_store::AccessKey) -> Self {
        Self {
            client: reqwest::Client::new(),
            token: format!("Bearer {}:{}", key.access_key_id, key.secret_access_key),
        }
    }

    fn req(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .header("authorization", &self.token)
    }
}

/// A zip whose handler module carries `pad` bytes that do not compress.
fn code(handler_module: &str, pad: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..pad)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xff) as u8
        })
        .collect();
    base64::engine::general_purpose::STANDARD.encode(zip_of(&[
        (
            &format!("{handler_module}.py"),
            b"def handler(e, c):\n    return e\n",
        ),
        ("pad.bin", &noise),
    ]))
}

async fn deploy_as(
    n: &TestNode,
    who: &As,
    name: &str,
    handler: &str,
    pad: usize,
) -> reqwest::Response {
    let module = handler.split('.').next().unwrap();
    who.req(
        reqwest::Method::PUT,
        n.url(&format!("/v1/functions/{name}")),
    )
    .json(&json!({"runtime": "python3", "handler": handler, "code": code(module, pad)}))
    .send()
    .await
    .unwrap()
}

async fn refusal(r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let kind = r.headers()["x-amzn-ErrorType"].to_str().unwrap().to_owned();
    (status, kind, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_each_quota_stops_its_tenant_and_an_operator_raises_one_tenants() {
    let n = start_with(InProcessGuest::new(), |c| {
        c.api.dev = false;
        c.api.quotas = TenantQuotas {
            functions: 2,
            versions: 1,
            code_mib: 1,
            queued_events: 2,
            concurrency: 1,
        };
    })
    .await;
    let store = &n.node.state().store;
    let acme = As::new(&store.create_key("acme").unwrap());
    let beta = As::new(&store.create_key("beta").unwrap());
    let operator = As::new(&store.create_operator_key().unwrap());

    // Functions.
    assert_eq!(
        deploy_as(&n, &acme, "slow", "sleep.handler", 0)
            .await
            .status(),
        201
    );
    assert_eq!(
        deploy_as(&n, &acme, "echo", "echo.handler", 0)
            .await
            .status(),
        201
    );
    let (status, kind, e) = refusal(deploy_as(&n, &acme, "third", "echo.handler", 0).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (429, "TooManyRequestsException"),
        "{e}"
    );
    assert_eq!(e["Reason"], "FunctionLimitExceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("2 functions (--quota-functions)"),
        "{e}"
    );
    assert_eq!(
        deploy_as(&n, &beta, "third", "echo.handler", 0)
            .await
            .status(),
        201,
        "another tenant's quota is its own"
    );

    // Code bytes: 1 MiB, and 1.5 MiB that does not compress is more.
    let (status, kind, e) =
        refusal(deploy_as(&n, &acme, "echo", "echo.handler", 1536 * 1024).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "CodeStorageExceededException"),
        "{e}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("--quota-code-mib"),
        "{e}"
    );

    // Versions.
    let publish = || {
        acme.req(
            reqwest::Method::POST,
            n.url("/2015-03-31/functions/echo/versions"),
        )
        .send()
    };
    assert_eq!(publish().await.unwrap().status(), 201);
    let r = acme
        .req(
            reqwest::Method::PUT,
            n.url("/2015-03-31/functions/echo/configuration"),
        )
        .json(&json!({"Timeout": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _, e) = refusal(publish().await.unwrap()).await;
    assert_eq!(
        (status, e["Reason"].as_str()),
        (429, Some("VersionLimitExceeded")),
        "{e}"
    );

    // Concurrency: one invocation at once.
    let running = {
        let r = acme
            .req(
                reqwest::Method::POST,
                n.url("/2015-03-31/functions/slow/invocations"),
            )
            .json(&json!({"ms": 1500}))
            .send();
        tokio::spawn(r)
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, e) = refusal(
        acme.req(
            reqwest::Method::POST,
            n.url("/2015-03-31/functions/echo/invocations"),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, e["Reason"].as_str()),
        (429, Some("ConcurrentInvocationLimitExceeded")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("--quota-concurrency"),
        "{e}"
    );
    let r = beta
        .req(
            reqwest::Method::POST,
            n.url("/2015-03-31/functions/third/invocations"),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "beta is not held by acme's quota");
    assert_eq!(running.await.unwrap().unwrap().status(), 200);

    // Queued events: held in the queue by a reservation of 0, two fit and the third does not.
    let r = acme
        .req(
            reqwest::Method::PUT,
            n.url("/2017-10-31/functions/echo/concurrency"),
        )
        .json(&json!({"ReservedConcurrentExecutions": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let event = || {
        acme.req(
            reqwest::Method::POST,
            n.url("/2015-03-31/functions/echo/invocations"),
        )
        .header("X-Amz-Invocation-Type", "Event")
        .json(&json!({}))
        .send()
    };
    assert_eq!(event().await.unwrap().status(), 202);
    assert_eq!(event().await.unwrap().status(), 202);
    let (status, _, e) = refusal(event().await.unwrap()).await;
    assert_eq!(
        (status, e["Reason"].as_str()),
        (429, Some("EventQueueFull")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("--quota-queued-events"),
        "{e}"
    );

    // GetAccountSettings, with and without the trailing slash SDKs send.
    for path in [
        "/2016-08-19/account-settings",
        "/2016-08-19/account-settings/",
    ] {
        let s: Value = acme
            .req(reqwest::Method::GET, n.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(s["AccountLimit"]["ConcurrentExecutions"], 1, "{s}");
        assert_eq!(s["AccountLimit"]["TotalCodeSize"], 1024 * 1024);
        assert_eq!(s["AccountLimit"]["UnreservedConcurrentExecutions"], 1);
        assert_eq!(s["AccountUsage"]["FunctionCount"], 2);
        assert!(s["AccountUsage"]["TotalCodeSize"].as_u64().unwrap() > 0);
    }

    // An operator raises acme's function quota; beta's stays the default.
    let quotas = n.url("/v1/tenants/acme/quotas");
    let r = acme
        .req(reqwest::Method::PUT, quotas.clone())
        .json(&json!({"functions": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a tenant cannot set quotas");
    let r = operator
        .req(reqwest::Method::PUT, quotas.clone())
        .json(&json!({"functoins": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a misspelt quota is refused");
    let r = operator
        .req(reqwest::Method::PUT, quotas.clone())
        .json(&json!({"functions": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = operator
        .req(reqwest::Method::GET, quotas)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["quotas"]["functions"], 3, "{got}");
    assert_eq!(got["quotas"]["versions"], 1);
    assert_eq!(got["overrides"], json!({"functions": 3}));
    assert_eq!(got["usage"]["functions"], 2);
    assert_eq!(got["usage"]["queued_events"], 2);
    assert_eq!(
        deploy_as(&n, &acme, "third", "echo.handler", 0)
            .await
            .status(),
        201
    );
    assert_eq!(
        deploy_as(&n, &beta, "fourth", "echo.handler", 0)
            .await
            .status(),
        201,
        "beta had 1 of its 2"
    );
    let (status, _, e) = refusal(deploy_as(&n, &beta, "fifth", "echo.handler", 0).await).await;
    assert_eq!(status, 429, "beta's default is still 2: {e}");
    n.node.shutdown().await.unwrap();
}
