//! Lambda's API semantics the AWS CLI, SAM and Terraform rely on, on a node started in-process
//! with the in-process guest as its VMM: qualifiers on Get and Delete, partial ARNs, and
//! Lambda's error for an operation that does not exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process_support;

use ignition_in_process_guest::InProcessGuest;
use in_process_support::*;
use serde_json::{json, Value};

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, String, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("x-amzn-ErrorType")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, kind, body)
}

#[tokio::test]
async fn in_process_a_qualifier_gets_and_deletes_one_version() {
    use reqwest::Method;
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    assert_eq!(deploy(&n, "f", "vm.handler", json!({})).await.status(), 201);
    let fns = |p: &str| n.url(&format!("/2015-03-31/functions/{p}"));
    assert_eq!(call(Method::POST, fns("f/versions"), None).await.0, 201);
    assert_eq!(
        deploy(&n, "f", "vm.handler", json!({"timeout_s": 9}))
            .await
            .status(),
        200
    );
    assert_eq!(call(Method::POST, fns("f/versions"), None).await.0, 201);
    let alias = json!({"Name": "live", "FunctionVersion": "2"});
    assert_eq!(
        call(Method::POST, fns("f/aliases"), Some(alias)).await.0,
        201
    );

    let (_, _, got) = call(Method::GET, fns("f?Qualifier=1"), None).await;
    assert_eq!(got["Configuration"]["Version"], "1", "{got}");
    assert_eq!(got["Configuration"]["Timeout"], 3);
    assert!(got["Configuration"]["FunctionArn"]
        .as_str()
        .unwrap()
        .ends_with(":f:1"));
    let (_, _, got) = call(Method::GET, fns("f/configuration?Qualifier=live"), None).await;
    assert_eq!(
        (got["Version"].as_str(), got["Timeout"].as_u64()),
        (Some("2"), Some(9)),
        "{got}"
    );
    let (_, _, got) = call(Method::GET, fns("000000000000:function:f:2"), None).await;
    assert_eq!(
        got["Configuration"]["Version"], "2",
        "a partial ARN with a qualifier: {got}"
    );
    let (_, _, got) = call(Method::GET, fns("f"), None).await;
    assert_eq!(got["Configuration"]["Version"], "$LATEST");

    let (status, kind, _) = call(Method::DELETE, fns("f?Qualifier=2"), None).await;
    assert_eq!(
        (status, kind.as_str()),
        (409, "ResourceConflictException"),
        "an alias points at 2"
    );
    let (status, kind, _) = call(Method::DELETE, fns("f?Qualifier=$LATEST"), None).await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "InvalidParameterValueException")
    );
    let (status, _, _) = call(Method::DELETE, fns("f?Qualifier=1"), None).await;
    assert_eq!(status, 204);
    let (status, _, _) = call(Method::DELETE, fns("f?Qualifier=1"), None).await;
    assert_eq!(status, 404, "already gone");
    let (_, _, versions) = call(Method::GET, fns("f/versions"), None).await;
    let listed: Vec<&str> = versions["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Version"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["$LATEST", "2"],
        "the function and version 2 remain"
    );
    assert_eq!(call(Method::GET, fns("f?Qualifier=1"), None).await.0, 404);
    let r = invoke(&n, "f", &json!({})).await;
    assert_eq!(r.status(), 200);
    let r = reqwest::Client::new()
        .post(fns("f/invocations?Qualifier=live"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["X-Amz-Executed-Version"], "2");
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_an_unknown_operation_is_lambdas_error() {
    use reqwest::Method;
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    let (status, kind, e) = call(Method::GET, n.url("/2015-03-31/nothing-here"), None).await;
    assert_eq!(
        (status, kind.as_str()),
        (404, "UnknownOperationException"),
        "{e}"
    );
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("/2015-03-31/nothing-here"));
    let (status, kind, _) = call(Method::PATCH, n.url("/2015-03-31/functions/f"), None).await;
    assert_eq!((status, kind.as_str()), (405, "UnknownOperationException"));
    n.node.shutdown().await.unwrap();
}
