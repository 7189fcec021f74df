//! Function URLs on nodes started in-process, with the in-process guest as their VMM: the
//! configuration API in Lambda's shapes, the payload format 2.0 event a request becomes, the
//! HTTP response a result becomes, CORS, and who may call. Real microVMs behind a URL, with
//! boto3 and curl, are tested in `crates/cli/tests/function_urls_e2e.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process_support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ignition_in_process_guest::{InProcessGuest, Reply};
use in_process_support::*;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Answers with a status, a header and a cookie, and the request's body back, base64-encoded
/// (what a function that serves binary does).
fn web_guest() -> InProcessGuest {
    InProcessGuest::new().with_handler(
        "web.handler",
        Arc::new(|call| {
            Box::pin(async move {
                let e: Value = serde_json::from_slice(&call.payload).unwrap();
                let body = match e["isBase64Encoded"].as_bool() {
                    Some(true) => e["body"].as_str().unwrap_or_default().to_owned(),
                    _ => B64.encode(e["body"].as_str().unwrap_or_default()),
                };
                Reply::json(&json!({
                    "statusCode": 418,
                    "headers": {"x-path": e["rawPath"], "content-type": "application/octet-stream"},
                    "cookies": ["session=abc; HttpOnly", "theme=dark"],
                    "body": body,
                    "isBase64Encoded": true,
                }))
            })
        }),
    )
}

async fn create_url(n: &TestNode, function: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(n.url(&format!("/2021-10-31/functions/{function}/url")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn url_of(n: &TestNode, function: &str, body: Value) -> String {
    let r = create_url(n, function, body).await;
    assert_eq!(r.status(), 201);
    let doc: Value = r.json().await.unwrap();
    doc["FunctionUrl"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn in_process_url_requests_become_lambda_http_events_and_results_become_responses() {
    let n = start_with(web_guest(), |_| {}).await;
    assert_eq!(
        deploy(&n, "echo", "echo.handler", json!({})).await.status(),
        201
    );

    // Configuration, in Lambda's shapes.
    let r = create_url(&n, "echo", json!({"AuthType": "NONE"})).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let url = created["FunctionUrl"].as_str().unwrap().to_owned();
    let prefix = format!("http://{}/lambda-url/", n.node.addr());
    assert!(url.starts_with(&prefix) && url.ends_with('/'), "{url}");
    assert_eq!(created["AuthType"], "NONE");
    assert_eq!(created["InvokeMode"], "BUFFERED");
    assert!(created["FunctionArn"]
        .as_str()
        .unwrap()
        .ends_with(":function:echo"));
    let again = create_url(&n, "echo", json!({"AuthType": "NONE"})).await;
    assert_eq!(again.status(), 409);
    assert_eq!(
        again.headers()["x-amzn-ErrorType"],
        "ResourceConflictException"
    );
    let got = get_json(n.url("/2021-10-31/functions/echo/url")).await;
    assert_eq!(got["FunctionUrl"], url.as_str());
    assert!(got["LastModifiedTime"].is_string());
    let listed = get_json(n.url("/2021-10-31/functions/echo/urls")).await;
    assert_eq!(listed["FunctionUrlConfigs"].as_array().unwrap().len(), 1);
    let functions = get_json(n.url("/v1/functions")).await;
    assert_eq!(functions["functions"][0]["url"], url.as_str());

    // A request: path, query, cookies, headers and a JSON body reach the function as the 2.0
    // event; a result without statusCode comes back as a 200 with the result as JSON.
    let r = reqwest::Client::new()
        .post(format!("{url}orders/42?tag=a&tag=b&q=hello%20world"))
        .header("cookie", "s=1; t=2")
        .header("content-type", "application/json")
        .header("x-custom", "yes")
        .body(r#"{"item": "tea"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().get("x-amzn-RequestId").is_some());
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["routeKey"], "$default");
    assert_eq!(e["rawPath"], "/orders/42");
    assert_eq!(e["rawQueryString"], "tag=a&tag=b&q=hello%20world");
    assert_eq!(
        e["queryStringParameters"],
        json!({"tag": "a,b", "q": "hello world"})
    );
    assert_eq!(e["cookies"], json!(["s=1", "t=2"]));
    assert_eq!(e["headers"]["x-custom"], "yes");
    assert!(
        e["headers"].get("cookie").is_none(),
        "cookies are not headers"
    );
    assert_eq!(e["body"], r#"{"item": "tea"}"#);
    assert_eq!(e["isBase64Encoded"], false);
    let ctx = &e["requestContext"];
    assert_eq!(ctx["http"]["method"], "POST");
    assert_eq!(ctx["http"]["path"], "/orders/42");
    assert_eq!(ctx["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(ctx["http"]["protocol"], "HTTP/1.1");
    assert!(ctx["requestId"].is_string());
    assert!(ctx["timeEpoch"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(ctx["time"].as_str().unwrap().ends_with(" +0000"));

    // A binary body goes in base64; a result with statusCode gives the status, headers,
    // cookies and a base64-decoded body: the bytes round-trip.
    assert_eq!(
        deploy(&n, "web", "web.handler", json!({})).await.status(),
        201
    );
    let web = url_of(&n, "web", json!({"AuthType": "NONE"})).await;
    let bytes: Vec<u8> = (0..=255u8).rev().collect();
    let r = reqwest::Client::new()
        .put(format!("{web}blob"))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 418);
    assert_eq!(r.headers()["x-path"], "/blob");
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["session=abc; HttpOnly", "theme=dark"]);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);

    // A URL that does not exist.
    let r = reqwest::get(format!("{prefix}{}/", "a".repeat(32)))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::get(n.url("/lambda-url/..%2f..%2fv1/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Deleting the function deletes its URL.
    let r = reqwest::Client::new()
        .delete(n.url("/v1/functions/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_url_errors_map_to_http_statuses_and_preflights_do_not_invoke() {
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    for (name, handler, extra) in [
        ("fails", "fail.handler", json!({})),
        ("echo", "echo.handler", json!({})),
    ] {
        assert_eq!(deploy(&n, name, handler, extra).await.status(), 201);
    }
    let fails = url_of(&n, "fails", json!({"AuthType": "NONE"})).await;
    let r = reqwest::get(&fails).await.unwrap();
    assert_eq!(r.status(), 502, "a handler error");

    let echo = url_of(
        &n,
        "echo",
        json!({"AuthType": "NONE", "Cors": {
            "AllowOrigins": ["https://app.example"],
            "AllowMethods": ["GET", "POST"],
            "AllowHeaders": ["content-type"],
            "ExposeHeaders": ["x-amzn-requestid"],
            "MaxAge": 600
        }}),
    )
    .await;
    let before = n.counters.invocations();
    let r = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, &echo)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-methods"], "GET,POST");
    assert_eq!(r.headers()["access-control-max-age"], "600");
    assert_eq!(
        n.counters.invocations(),
        before,
        "a preflight invokes nothing"
    );
    let r = reqwest::Client::new()
        .get(&echo)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = reqwest::Client::new()
        .get(&echo)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        r.headers()["access-control-expose-headers"],
        "x-amzn-requestid"
    );

    // Over 6 MiB: 413 before anything runs.
    let r = reqwest::Client::new()
        .post(&echo)
        .body(vec![b'x'; 6 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Throttled: reserved concurrency 0.
    let r = reqwest::Client::new()
        .put(n.url("/2017-10-31/functions/echo/concurrency"))
        .json(&json!({"ReservedConcurrentExecutions": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(&echo).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-amzn-ErrorType"], "TooManyRequestsException");
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_url_timeouts_are_504() {
    let guest = InProcessGuest::new().with_handler(
        "forever.handler",
        Arc::new(|_call| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Reply::json(&json!({}))
            })
        }),
    );
    let n = start_with(guest, |_| {}).await;
    assert_eq!(
        deploy(&n, "slow", "forever.handler", json!({"timeout_s": 1}))
            .await
            .status(),
        201
    );
    let slow = url_of(&n, "slow", json!({"AuthType": "NONE"})).await;
    let r = reqwest::get(&slow).await.unwrap();
    assert_eq!(r.status(), 504);
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_url_configuration_refuses_bad_input() {
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    assert_eq!(
        deploy(&n, "echo", "echo.handler", json!({})).await.status(),
        201
    );
    for (body, query, status, kind) in [
        (
            json!({"AuthType": "NONE", "InvokeMode": "RESPONSE_STREAM"}),
            "",
            400,
            "ValidationException",
        ),
        (json!({"AuthType": "OPEN"}), "", 400, "ValidationException"),
        (json!({}), "", 400, "ValidationException"),
        (
            json!({"AuthType": "NONE", "Cors": {"MaxAge": 100000}}),
            "",
            400,
            "ValidationException",
        ),
        (
            json!({"AuthType": "NONE"}),
            "?Qualifier=1",
            400,
            "ValidationException",
        ),
        (
            json!({"AuthType": "NONE"}),
            "?Qualifier=live",
            404,
            "ResourceNotFoundException",
        ),
    ] {
        let r = reqwest::Client::new()
            .post(n.url(&format!("/2021-10-31/functions/echo/url{query}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body} {query}");
        assert_eq!(r.headers()["x-amzn-ErrorType"], kind, "{body} {query}");
    }
    let r = create_url(&n, "nope", json!({"AuthType": "NONE"})).await;
    assert_eq!(r.status(), 404);
    let r = reqwest::get(n.url("/2021-10-31/functions/echo/url"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no URL yet");
    assert!(
        get_json(n.url("/2021-10-31/functions/echo/urls")).await["FunctionUrlConfigs"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // An alias's URL invokes the alias's version.
    let client = reqwest::Client::new();
    let r = client
        .post(n.url("/2015-03-31/functions/echo/versions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(n.url("/2015-03-31/functions/echo/aliases"))
        .json(&json!({"Name": "live", "FunctionVersion": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(n.url("/2021-10-31/functions/echo/url?Qualifier=live"))
        .json(&json!({"AuthType": "NONE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let live: Value = r.json().await.unwrap();
    assert!(live["FunctionArn"]
        .as_str()
        .unwrap()
        .ends_with(":echo:live"));
    let r = reqwest::get(live["FunctionUrl"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["X-Amz-Executed-Version"], "1");
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_iam_urls_need_a_key_of_the_functions_tenant_or_its_policy_and_domains_route_by_host(
) {
    let n = start_with(InProcessGuest::new(), |c| {
        c.api.dev = false;
        c.api.url_domain = Some("fn.test".to_owned());
    })
    .await;
    let store = &n.node.state().store;
    let (acme, other) = (
        store.create_key("acme").unwrap(),
        store.create_key("other").unwrap(),
    );
    let bearer = |k: &ignition_store::AccessKey| {
        format!("Bearer {}:{}", k.access_key_id, k.secret_access_key)
    };
    let client = reqwest::Client::new();
    let code = B64.encode(zip_of(&[(
        "echo.py",
        b"def handler(e, c):\n    return e\n",
    )]));
    let r = client
        .put(n.url("/v1/functions/echo"))
        .header("authorization", bearer(&acme))
        .json(&json!({"runtime": "python3", "handler": "echo.handler", "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(n.url("/2021-10-31/functions/echo/url"))
        .header("authorization", bearer(&acme))
        .json(&json!({"AuthType": "AWS_IAM"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url: Value = r.json().await.unwrap();
    let url = url["FunctionUrl"].as_str().unwrap().to_owned();
    let host = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix('/'))
        .unwrap()
        .to_owned();
    assert!(host.ends_with(".fn.test"), "{url}");

    // Routed by the Host header: the node's address, the URL's host name.
    let call = |auth: Option<String>| {
        let mut req = client
            .post(n.url("/some/path"))
            .header("host", &host)
            .header("content-type", "application/json")
            .body(r#"{"a": 1}"#);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let r = call(None).await.unwrap();
    assert_eq!(r.status(), 403, "unsigned");
    let r = call(Some(bearer(&other))).await.unwrap();
    assert_eq!(r.status(), 403, "another tenant's key");
    let r = call(Some(bearer(&acme))).await.unwrap();
    assert_eq!(r.status(), 200);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["rawPath"], "/some/path");
    assert_eq!(e["requestContext"]["domainName"], host.as_str());

    // The other tenant cannot see or change the URL.
    let r = client
        .get(n.url("/2021-10-31/functions/echo/url"))
        .header("authorization", bearer(&other))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // #20: with a statement in the function's policy that lets the other tenant's account call
    // the URL (as Lambda writes one for an AWS_IAM URL), its key is let in; without, not.
    let grant = |auth: &str| {
        json!({"StatementId": format!("other-{auth}"), "Action": "lambda:InvokeFunctionUrl",
            "Principal": ignition_types::account_id("other"), "FunctionUrlAuthType": auth})
    };
    let r = client
        .post(n.url("/2015-03-31/functions/echo/policy"))
        .header("authorization", bearer(&acme))
        .json(&grant("NONE"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = call(Some(bearer(&other))).await.unwrap();
    assert_eq!(
        r.status(),
        403,
        "a grant for another auth type lets nobody in"
    );
    let r = client
        .post(n.url("/2015-03-31/functions/echo/policy"))
        .header("authorization", bearer(&acme))
        .json(&grant("AWS_IAM"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = call(Some(bearer(&other))).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the policy lets the other tenant's key call the URL"
    );
    let r = call(None).await.unwrap();
    assert_eq!(r.status(), 403, "and still nobody unsigned");

    // A URL with AuthType NONE adds Lambda's public statement to the function's policy.
    let r = client
        .put(n.url("/v1/functions/open"))
        .header("authorization", bearer(&acme))
        .json(&json!({"runtime": "python3", "handler": "echo.handler", "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(n.url("/2021-10-31/functions/open/url"))
        .header("authorization", bearer(&acme))
        .json(&json!({"AuthType": "NONE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let policy: Value = client
        .get(n.url("/2015-03-31/functions/open/policy"))
        .header("authorization", bearer(&acme))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let policy: Value = serde_json::from_str(policy["Policy"].as_str().unwrap()).unwrap();
    let s = &policy["Statement"][0];
    assert_eq!(s["Sid"], "FunctionURLAllowPublicAccess", "{policy}");
    assert_eq!(
        (s["Principal"].as_str(), s["Action"].as_str()),
        (Some("*"), Some("lambda:InvokeFunctionUrl"))
    );
    assert_eq!(
        s["Condition"]["StringEquals"]["lambda:FunctionUrlAuthType"],
        "NONE"
    );
    // Other names under the domain are the API's, which needs authentication.
    let r = client
        .get(n.url("/v1/functions"))
        .header("host", "api.fn.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    n.node.shutdown().await.unwrap();
}
