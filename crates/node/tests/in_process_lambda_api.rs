//! Lambda's API semantics the AWS CLI, SAM and Terraform rely on, on a node started in-process
//! with the in-process guest as its VMM: qualifiers on Get and Delete, partial ARNs, and
//! Lambda's error for an operation that does not exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process_support;

use ignition_in_process_guest::InProcessGuest;
use in_process_support::*;
use serde_json::{json, Value};

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, String, Value) {
    request(None, method, url, body).await
}

/// A request, as the tenant whose bearer token `auth` is if given: (status, error type, body).
async fn request(
    auth: Option<&str>,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
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

/// The calls Terraform's `aws_lambda_function` makes on create and read, and what it needs
/// back: what was sent comes back (description, tags), a revision id that changes with every
/// change and is checked when sent, pages, and no code signing.
#[tokio::test]
async fn in_process_create_with_tags_and_publish_and_read_back_what_was_sent() {
    use base64::Engine;
    use reqwest::Method;
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    let fns = |p: &str| n.url(&format!("/2015-03-31/functions{p}"));
    let zip = base64::engine::general_purpose::STANDARD.encode(zip_of(&[(
        "echo.py",
        b"def handler(e, c):\n    return e\n",
    )]));
    let (status, _, created) = call(
        Method::POST,
        fns(""),
        Some(json!({
            "FunctionName": "tf",
            "Runtime": "python3.11",
            "Role": "arn:aws:iam::1:role/r",
            "Handler": "echo.handler",
            "Code": {"ZipFile": zip},
            "Description": "made by terraform",
            "Tags": {"team": "platform", "env": "test"},
            "Publish": true,
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["Version"], "1",
        "Publish: the new version: {created}"
    );
    assert_eq!(created["Description"], "made by terraform");
    let (_, _, got) = call(Method::GET, fns("/tf"), None).await;
    assert_eq!(got["Configuration"]["Description"], "made by terraform");
    assert_eq!(got["Tags"], json!({"team": "platform", "env": "test"}));
    assert!(got.get("Concurrency").is_none());
    let revision = got["Configuration"]["RevisionId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(revision.len(), 36, "{revision}");
    let (_, _, again) = call(Method::GET, fns("/tf"), None).await;
    assert_eq!(
        again["Configuration"]["RevisionId"],
        revision.as_str(),
        "a read changes nothing"
    );

    let arn = got["Configuration"]["FunctionArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let tags = |q: &str| n.url(&format!("/2017-03-31/tags/{}{q}", arn.replace(':', "%3A")));
    let (_, _, listed) = call(Method::GET, tags(""), None).await;
    assert_eq!(listed["Tags"]["team"], "platform");
    assert_eq!(
        call(Method::POST, tags(""), Some(json!({"Tags": {"cost": "1"}})))
            .await
            .0,
        204
    );
    assert_eq!(
        call(Method::DELETE, tags("?tagKeys=env&tagKeys=team"), None)
            .await
            .0,
        204
    );
    let (_, _, listed) = call(Method::GET, tags(""), None).await;
    assert_eq!(listed["Tags"], json!({"cost": "1"}));
    let (status, _, _) = call(
        Method::POST,
        tags(""),
        Some(json!({"Tags": {"aws:x": "1"}})),
    )
    .await;
    assert_eq!(status, 400, "aws: keys are AWS's");

    // RevisionId: a stale one is refused; the current one goes through and changes it.
    let stale = json!({"Timeout": 5, "RevisionId": "00000000-0000-0000-0000-000000000000"});
    let (status, kind, _) = call(Method::PUT, fns("/tf/configuration"), Some(stale)).await;
    assert_eq!(
        (status, kind.as_str()),
        (412, "PreconditionFailedException")
    );
    let fresh = json!({"Timeout": 5, "RevisionId": revision, "Description": "changed"});
    let (status, _, updated) = call(Method::PUT, fns("/tf/configuration"), Some(fresh)).await;
    assert_eq!(status, 200, "{updated}");
    assert_ne!(updated["RevisionId"], revision.as_str());
    assert_eq!(updated["Description"], "changed");
    let (status, kind, _) = call(
        Method::POST,
        fns("/tf/versions"),
        Some(json!({"RevisionId": revision})),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (412, "PreconditionFailedException")
    );
    let (status, _, v2) = call(Method::POST, fns("/tf/versions"), Some(json!({}))).await;
    assert_eq!((status, v2["Version"].as_str()), (201, Some("2")));

    // What else Terraform reads.
    let (status, _, signing) = call(
        Method::GET,
        n.url("/2020-06-30/functions/tf/code-signing-config"),
        None,
    )
    .await;
    assert_eq!(
        (status, signing["FunctionName"].as_str()),
        (200, Some("tf"))
    );
    assert_eq!(
        call(
            Method::PUT,
            n.url("/2017-10-31/functions/tf/concurrency"),
            Some(json!({"ReservedConcurrentExecutions": 2}))
        )
        .await
        .0,
        200
    );
    let (_, _, got) = call(Method::GET, fns("/tf"), None).await;
    assert_eq!(got["Concurrency"]["ReservedConcurrentExecutions"], 2);

    // Pages: versions one at a time.
    let (_, _, page) = call(Method::GET, fns("/tf/versions?MaxItems=1"), None).await;
    assert_eq!(page["Versions"].as_array().unwrap().len(), 1);
    let mut seen = vec![page["Versions"][0]["Version"].as_str().unwrap().to_owned()];
    let mut marker = page["NextMarker"].as_str().map(str::to_owned);
    while let Some(m) = marker {
        let (_, _, page) = call(
            Method::GET,
            fns(&format!("/tf/versions?MaxItems=1&Marker={m}")),
            None,
        )
        .await;
        seen.push(page["Versions"][0]["Version"].as_str().unwrap().to_owned());
        marker = page["NextMarker"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ["$LATEST", "1", "2"]);
    n.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_weighted_alias_splits_its_invocations_by_weight() {
    use reqwest::Method;
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    let fns = |p: &str| n.url(&format!("/2015-03-31/functions/{p}"));
    assert_eq!(deploy(&n, "w", "vm.handler", json!({})).await.status(), 201);
    assert_eq!(call(Method::POST, fns("w/versions"), None).await.0, 201);
    assert_eq!(
        deploy(&n, "w", "vm.handler", json!({"timeout_s": 4}))
            .await
            .status(),
        200
    );
    assert_eq!(call(Method::POST, fns("w/versions"), None).await.0, 201);
    for (bad, why) in [
        (json!({"2": 1.5}), "a weight over 1"),
        (json!({"1": 0.5}), "the alias's own version"),
        (json!({"2": 0.1, "3": 0.1}), "two additional versions"),
        (json!({"9": 0.1}), "a version that does not exist"),
    ] {
        let body = json!({"Name": "bad", "FunctionVersion": "1", "RoutingConfig": {"AdditionalVersionWeights": bad}});
        let (status, _, e) = call(Method::POST, fns("w/aliases"), Some(body)).await;
        assert!(status == 400 || status == 404, "{why}: {status} {e}");
    }
    let body = json!({
        "Name": "live",
        "FunctionVersion": "1",
        "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.2}},
    });
    let (status, _, alias) = call(Method::POST, fns("w/aliases"), Some(body)).await;
    assert_eq!(status, 201, "{alias}");
    assert_eq!(alias["RoutingConfig"]["AdditionalVersionWeights"]["2"], 0.2);
    let (_, _, got) = call(Method::GET, fns("w/aliases/live"), None).await;
    assert_eq!(got["RoutingConfig"]["AdditionalVersionWeights"]["2"], 0.2);

    let client = reqwest::Client::new();
    let mut on_2 = 0;
    for _ in 0..200 {
        let r = client
            .post(fns("w/invocations?Qualifier=live"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let executed = r.headers()["X-Amz-Executed-Version"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["version"],
            executed.as_str(),
            "the header says which ran"
        );
        if executed == "2" {
            on_2 += 1;
        }
    }
    let share = f64::from(on_2) / 200.0;
    assert!((share - 0.2).abs() <= 0.1, "version 2 ran {on_2} of 200");

    // Cleared, the alias runs its one version.
    let body = json!({"RoutingConfig": {"AdditionalVersionWeights": {}}});
    let (status, _, alias) = call(Method::PUT, fns("w/aliases/live"), Some(body)).await;
    assert_eq!(status, 200);
    assert!(alias.get("RoutingConfig").is_none(), "{alias}");
    for _ in 0..10 {
        let r = client
            .post(fns("w/invocations?Qualifier=live"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["X-Amz-Executed-Version"], "1");
    }
    n.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_event_invoke_configs_set_retries_and_send_records_to_destinations() {
    use reqwest::Method;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let s = Arc::clone(&seen);
    let guest = InProcessGuest::new().with_handler(
        "sink.handler",
        Arc::new(move |call| {
            let s = Arc::clone(&s);
            Box::pin(async move {
                s.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&call.payload).unwrap());
                ignition_in_process_guest::Reply::json(&json!({}))
            })
        }),
    );
    let n = start_with(guest, |_| {}).await;
    for (name, handler) in [
        ("fails", "fail.handler"),
        ("ok", "echo.handler"),
        ("sink", "sink.handler"),
    ] {
        assert_eq!(deploy(&n, name, handler, json!({})).await.status(), 201);
    }
    let config = |f: &str| n.url(&format!("/2019-09-25/functions/{f}/event-invoke-config"));
    let sink = "arn:aws:lambda:local:000000000000:function:sink";
    for (bad, why) in [
        (json!({"MaximumRetryAttempts": 3}), "retries"),
        (json!({"MaximumEventAgeInSeconds": 30}), "age"),
        (
            json!({"DestinationConfig": {"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:1:q"}}}),
            "sqs",
        ),
        (
            json!({"DestinationConfig": {"OnFailure": {"Destination": "arn:aws:lambda:local:0:function:nope"}}}),
            "missing",
        ),
    ] {
        let (status, kind, e) = call(Method::PUT, config("fails"), Some(bad)).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "InvalidParameterValueException"),
            "{why}: {e}"
        );
    }
    let (status, _, set) = call(
        Method::PUT,
        config("fails"),
        Some(json!({"MaximumRetryAttempts": 0, "DestinationConfig": {"OnFailure": {"Destination": sink}}})),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["MaximumRetryAttempts"], 0);
    assert!(set["FunctionArn"]
        .as_str()
        .unwrap()
        .ends_with(":fails:$LATEST"));
    let (status, _, _) = call(
        Method::PUT,
        config("ok"),
        Some(json!({"DestinationConfig": {"OnSuccess": {"Destination": sink}}})),
    )
    .await;
    assert_eq!(status, 200);

    let event = |f: &str, body: Value| {
        reqwest::Client::new()
            .post(n.url(&format!("/2015-03-31/functions/{f}/invocations")))
            .header("X-Amz-Invocation-Type", "Event")
            .json(&body)
            .send()
    };
    assert_eq!(event("fails", json!({"n": 1})).await.unwrap().status(), 202);
    assert_eq!(event("ok", json!({"n": 2})).await.unwrap().status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "records: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = seen.lock().unwrap().clone();
    let failure = records
        .iter()
        .find(|r| r["requestContext"]["condition"] == "RetriesExhausted")
        .expect("the failure's record");
    assert_eq!(failure["requestPayload"], json!({"n": 1}));
    assert_eq!(
        failure["requestContext"]["approximateInvokeCount"], 1,
        "no retries: {failure}"
    );
    assert_eq!(failure["responseContext"]["functionError"], "Unhandled");
    assert!(
        failure["responsePayload"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("boom"),
        "{failure}"
    );
    let success = records
        .iter()
        .find(|r| r["requestContext"]["condition"] == "Success")
        .expect("the success's record");
    assert_eq!(success["responsePayload"], json!({"n": 2}));
    assert_eq!(success["version"], "1.0");

    // Update changes what is given; list, get and delete.
    let (_, _, updated) = call(
        Method::POST,
        config("fails"),
        Some(json!({"MaximumEventAgeInSeconds": 120})),
    )
    .await;
    assert_eq!(updated["MaximumEventAgeInSeconds"], 120);
    assert_eq!(
        updated["DestinationConfig"]["OnFailure"]["Destination"],
        sink
    );
    let (_, _, listed) = call(
        Method::GET,
        n.url("/2019-09-25/functions/fails/event-invoke-config/list"),
        None,
    )
    .await;
    assert_eq!(
        listed["FunctionEventInvokeConfigs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(call(Method::DELETE, config("fails"), None).await.0, 204);
    let (status, kind, _) = call(Method::GET, config("fails"), None).await;
    assert_eq!((status, kind.as_str()), (404, "ResourceNotFoundException"));
    n.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_provisioned_concurrency_is_the_pools_minimum_for_a_version() {
    use reqwest::Method;
    use std::time::{Duration, Instant};
    let n = start_with(InProcessGuest::new(), |c| c.worker.pool_memory_mib = 100).await;
    let fns = |p: &str| n.url(&format!("/2015-03-31/functions/{p}"));
    assert_eq!(deploy(&n, "p", "vm.handler", json!({})).await.status(), 201);
    assert_eq!(call(Method::POST, fns("p/versions"), None).await.0, 201);
    let alias = json!({"Name": "live", "FunctionVersion": "1"});
    assert_eq!(
        call(Method::POST, fns("p/aliases"), Some(alias)).await.0,
        201
    );
    let pc = |q: &str| {
        n.url(&format!(
            "/2019-09-30/functions/p/provisioned-concurrency{q}"
        ))
    };
    let (status, _, _) = call(
        Method::PUT,
        pc(""),
        Some(json!({"ProvisionedConcurrentExecutions": 1})),
    )
    .await;
    assert_eq!(status, 400, "a qualifier is required");
    let (status, _, _) = call(
        Method::PUT,
        pc("?Qualifier=$LATEST"),
        Some(json!({"ProvisionedConcurrentExecutions": 1})),
    )
    .await;
    assert_eq!(status, 400, "not $LATEST");
    let (status, _, put) = call(
        Method::PUT,
        pc("?Qualifier=live"),
        Some(json!({"ProvisionedConcurrentExecutions": 2})),
    )
    .await;
    assert_eq!(status, 202, "{put}");
    assert_eq!(put["RequestedProvisionedConcurrentExecutions"], 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, got) = call(Method::GET, pc("?Qualifier=live"), None).await;
        if got["Status"] == "READY" {
            assert_eq!(got["AvailableProvisionedConcurrentExecutions"], 2);
            break;
        }
        assert_eq!(got["Status"], "IN_PROGRESS", "{got}");
        assert!(Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = get_json(n.url("/v1/stats")).await;
    assert!(
        pool["worker"]["pool_functions"].as_u64().unwrap() >= 1,
        "{pool}"
    );
    // More than the pool's budget holds fails, saying why.
    let (_, _, over) = call(
        Method::PUT,
        pc("?Qualifier=1"),
        Some(json!({"ProvisionedConcurrentExecutions": 50})),
    )
    .await;
    assert_eq!(over["Status"], "FAILED", "{over}");
    assert!(
        over["StatusReason"]
            .as_str()
            .unwrap()
            .contains("--pool-memory-mib"),
        "{over}"
    );
    let (_, _, listed) = call(Method::GET, pc("?List=ALL"), None).await;
    assert_eq!(
        listed["ProvisionedConcurrencyConfigs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(call(Method::DELETE, pc("?Qualifier=1"), None).await.0, 204);
    assert_eq!(
        call(Method::DELETE, pc("?Qualifier=live"), None).await.0,
        204
    );
    let (status, kind, _) = call(Method::GET, pc("?Qualifier=live"), None).await;
    assert_eq!(
        (status, kind.as_str()),
        (404, "ProvisionedConcurrencyConfigNotFoundException")
    );
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_the_runtime_sent_is_the_runtime_answered() {
    use base64::Engine;
    use reqwest::Method;
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    let fns = |p: &str| n.url(&format!("/2015-03-31/functions{p}"));
    let zip = base64::engine::general_purpose::STANDARD.encode(zip_of(&[
        ("bootstrap", b"#!/bin/sh\n"),
        ("echo.py", b"def handler(e, c):\n    return e\n"),
    ]));
    let create = |name: &str, runtime: &str, handler: &str| {
        call(
            Method::POST,
            fns(""),
            Some(
                json!({"FunctionName": name, "Runtime": runtime, "Role": "r", "Handler": handler, "Code": {"ZipFile": zip}}),
            ),
        )
    };
    let (status, _, e) = create("sh", "provided.al2023", "x").await;
    assert_eq!(status, 400, "bootstrap is not executable in this zip: {e}");
    let executable = {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        w.start_file("bootstrap", options).unwrap();
        w.write_all(b"#!/bin/sh\n").unwrap();
        base64::engine::general_purpose::STANDARD.encode(w.finish().unwrap().into_inner())
    };
    let (status, _, c) = call(
        Method::POST,
        fns(""),
        Some(json!({"FunctionName": "sh", "Runtime": "provided.al2023", "Role": "r", "Handler": "x", "Code": {"ZipFile": executable}})),
    )
    .await;
    assert_eq!(
        (status, c["Runtime"].as_str()),
        (201, Some("provided.al2023")),
        "{c}"
    );
    let (status, _, c) = create("py", "python3.11", "echo.handler").await;
    assert_eq!(
        (status, c["Runtime"].as_str()),
        (201, Some("python3.11")),
        "{c}"
    );
    let (status, kind, e) = create("new", "python3.12", "echo.handler").await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "InvalidParameterValueException")
    );
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("python3.11") && message.contains("provided.al2023"),
        "{message}"
    );
    // The CLI's short form answers as the guest's Python.
    assert_eq!(
        deploy(&n, "short", "echo.handler", json!({}))
            .await
            .status(),
        201
    );
    let (_, _, got) = call(Method::GET, fns("/short"), None).await;
    assert_eq!(got["Configuration"]["Runtime"], "python3.11");
    let (status, _, updated) = call(
        Method::PUT,
        fns("/py/configuration"),
        Some(json!({"Runtime": "python3"})),
    )
    .await;
    assert_eq!(
        (status, updated["Runtime"].as_str()),
        (200, Some("python3.11"))
    );
    n.node.shutdown().await.unwrap();
}

/// A request to `path` as the tenant whose bearer token `auth` is.
async fn send_as(
    n: &TestNode,
    auth: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String, Value) {
    request(Some(auth), method, n.url(path), body).await
}

/// Invoke `target` (a name or an ARN) as `auth` with `{"from": "x"}`.
async fn invoke_as(n: &TestNode, auth: &str, target: &str) -> (u16, String, Value) {
    let path = format!("/2015-03-31/functions/{target}/invocations");
    send_as(
        n,
        auth,
        reqwest::Method::POST,
        &path,
        Some(json!({"from": "x"})),
    )
    .await
}

/// A node with keys for `tenants`, and their bearer tokens.
async fn node_with_tenants(tenants: &[&str]) -> (TestNode, Vec<String>) {
    let n = start_with(InProcessGuest::new(), |c| c.api.dev = false).await;
    let keys = tenants
        .iter()
        .map(|t| {
            let k = n.node.state().store.create_key(t).unwrap();
            format!("Bearer {}:{}", k.access_key_id, k.secret_access_key)
        })
        .collect();
    (n, keys)
}

/// CreateFunction of an echo function `name` as `auth`; its ARN.
async fn create_echo(n: &TestNode, auth: &str, name: &str) -> String {
    use base64::Engine as _;
    let code = base64::engine::general_purpose::STANDARD.encode(zip_of(&[(
        "echo.py",
        b"def handler(e, c):\n    return e\n",
    )]));
    let body = json!({"FunctionName": name, "Runtime": "python3.11", "Role": "r",
        "Handler": "echo.handler", "Code": {"ZipFile": code}});
    let (status, _, c) = send_as(
        n,
        auth,
        reqwest::Method::POST,
        "/2015-03-31/functions",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    c["FunctionArn"].as_str().unwrap().to_owned()
}

/// #21: each tenant has its own account id in every ARN it sees, and an ARN naming another
/// account does not reach that account's function without a policy that lets it.
#[tokio::test]
async fn in_process_each_tenant_sees_its_own_account_id_and_cannot_reach_anothers_by_arn() {
    let (n, keys) = node_with_tenants(&["alice", "bob"]).await;
    let arns = [
        create_echo(&n, &keys[0], "f").await,
        create_echo(&n, &keys[1], "f").await,
    ];
    let account = |arn: &str| arn.split(':').nth(4).unwrap().to_owned();
    assert_eq!(account(&arns[0]), ignition_types::account_id("alice"));
    assert_eq!(account(&arns[1]), ignition_types::account_id("bob"));
    assert_ne!(account(&arns[0]), account(&arns[1]));
    assert_ne!(account(&arns[0]), "000000000000");
    // An alias's ARN carries it too.
    let (_, _, v) = send_as(
        &n,
        &keys[0],
        reqwest::Method::POST,
        "/2015-03-31/functions/f/versions",
        None,
    )
    .await;
    assert_eq!(v["FunctionArn"], format!("{}:1", arns[0]), "{v}");

    // Alice by her own ARN and partial ARN: her function.
    let alice_partial = format!("{}:function:f", account(&arns[0]));
    for name in [&arns[0], &alice_partial] {
        let (status, _, got) = send_as(
            &n,
            &keys[0],
            reqwest::Method::GET,
            &format!("/2015-03-31/functions/{name}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{got}");
    }
    // Bob naming Alice's function by ARN: refused, for reading, invoking and deleting, and her
    // function is untouched.
    for (method, path) in [
        (
            reqwest::Method::GET,
            format!("/2015-03-31/functions/{}", arns[0]),
        ),
        (
            reqwest::Method::POST,
            format!("/2015-03-31/functions/{}/invocations", arns[0]),
        ),
        (
            reqwest::Method::POST,
            format!("/2015-03-31/functions/{alice_partial}/invocations"),
        ),
        (
            reqwest::Method::DELETE,
            format!("/2015-03-31/functions/{}", arns[0]),
        ),
    ] {
        let (status, kind, got) = send_as(&n, &keys[1], method.clone(), &path, None).await;
        assert_eq!(
            (status, kind.as_str()),
            (403, "AccessDeniedException"),
            "{method} {path}: {got}"
        );
    }
    let (status, _, _) = send_as(
        &n,
        &keys[0],
        reqwest::Method::GET,
        "/2015-03-31/functions/f",
        None,
    )
    .await;
    assert_eq!(status, 200, "Alice's function is still there");
    n.node.shutdown().await.unwrap();
}

/// #21: a resource policy lets another tenant invoke a function by its ARN (and only invoke,
/// only what the statement names, only while it is there); GetPolicy, AddPermission and
/// RemovePermission answer in Lambda's shapes and errors.
#[tokio::test]
async fn in_process_a_policy_lets_another_account_invoke_and_nothing_more() {
    use reqwest::Method;
    let (n, keys) = node_with_tenants(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&keys[0], &keys[1], &keys[2]);
    let arn = create_echo(&n, alice, "shared").await;
    let fns = |p: &str| format!("/2015-03-31/functions/{p}");
    // No policy yet: GetPolicy says so as Lambda does, and Bob cannot invoke.
    let (status, kind, _) = send_as(&n, alice, Method::GET, &fns("shared/policy"), None).await;
    assert_eq!((status, kind.as_str()), (404, "ResourceNotFoundException"));
    let (status, kind, _) = invoke_as(&n, bob, &arn).await;
    assert_eq!((status, kind.as_str()), (403, "AccessDeniedException"));

    let bob_account = ignition_types::account_id("bob");
    let grant = json!({"StatementId": "bob-invokes", "Action": "lambda:InvokeFunction",
        "Principal": bob_account});
    let (status, _, added) = send_as(
        &n,
        alice,
        Method::POST,
        &fns("shared/policy"),
        Some(grant.clone()),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    let statement: Value = serde_json::from_str(added["Statement"].as_str().unwrap()).unwrap();
    assert_eq!(
        statement["Principal"]["AWS"],
        format!("arn:aws:iam::{bob_account}:root")
    );
    assert_eq!(statement["Resource"], arn.as_str());
    let (status, kind, _) =
        send_as(&n, alice, Method::POST, &fns("shared/policy"), Some(grant)).await;
    assert_eq!(
        (status, kind.as_str()),
        (409, "ResourceConflictException"),
        "a statement id once"
    );
    let (status, _, got) = send_as(&n, alice, Method::GET, &fns("shared/policy"), None).await;
    assert_eq!(status, 200, "{got}");
    let policy: Value = serde_json::from_str(got["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(policy["Statement"][0]["Sid"], "bob-invokes");
    assert!(got["RevisionId"].as_str().is_some_and(|r| r.len() == 36));

    // Bob invokes Alice's function by its ARN: hers runs.
    let (status, _, out) = invoke_as(&n, bob, &arn).await;
    assert_eq!((status, &out), (200, &json!({"from": "x"})));
    // Only invoking: Bob still cannot read, change or delete it, nor grant himself more.
    for (method, path) in [
        (Method::GET, fns(&arn)),
        (Method::DELETE, fns(&arn)),
        (Method::GET, fns(&format!("{arn}/policy"))),
    ] {
        let (status, kind, _) = send_as(&n, bob, method.clone(), &path, None).await;
        assert_eq!(
            (status, kind.as_str()),
            (403, "AccessDeniedException"),
            "{method} {path}"
        );
    }
    // Carol, whom no statement names, cannot invoke; nor can anyone by a qualifier the
    // statement does not cover.
    let (status, _, _) = invoke_as(&n, carol, &arn).await;
    assert_eq!(status, 403);
    let (status, _, _) = send_as(&n, alice, Method::POST, &fns("shared/versions"), None).await;
    assert_eq!(status, 201);
    let (status, _, _) = invoke_as(&n, bob, &format!("{arn}:1")).await;
    assert_eq!(status, 403, "the statement is the unqualified function's");
    // Removed, the grant is gone.
    let (status, _, _) = send_as(
        &n,
        alice,
        Method::DELETE,
        &fns("shared/policy/bob-invokes"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, kind, _) = send_as(
        &n,
        alice,
        Method::DELETE,
        &fns("shared/policy/bob-invokes"),
        None,
    )
    .await;
    assert_eq!((status, kind.as_str()), (404, "ResourceNotFoundException"));
    let (status, _, _) = invoke_as(&n, bob, &arn).await;
    assert_eq!(status, 403);
    // Bad input gets Lambda's error, not a stored statement.
    for bad in [
        json!({"StatementId": "x", "Action": "lambda:InvokeFunction", "Principal": "alice"}),
        json!({"StatementId": "x", "Action": "s3:GetObject", "Principal": "*"}),
        json!({"StatementId": "no spaces", "Action": "lambda:InvokeFunction", "Principal": "*"}),
    ] {
        let (status, kind, _) = send_as(
            &n,
            alice,
            Method::POST,
            &fns("shared/policy"),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "InvalidParameterValueException"),
            "{bad}"
        );
    }
    n.node.shutdown().await.unwrap();
}

/// PublishLayerVersion of a layer holding `files` as `auth`: its answer.
async fn publish_layer(n: &TestNode, auth: &str, name: &str, files: &[(&str, &[u8])]) -> Value {
    use base64::Engine as _;
    let zip = base64::engine::general_purpose::STANDARD.encode(zip_of(files));
    let (status, _, v) = send_as(
        n,
        auth,
        reqwest::Method::POST,
        &format!("/2018-10-31/layers/{name}/versions"),
        Some(json!({"Content": {"ZipFile": zip}, "Description": "deps",
            "CompatibleRuntimes": ["python3.11"], "LicenseInfo": "MIT"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v
}

/// #21 layers: published, read, listed and deleted in Lambda's shapes; a function names up to
/// five of its own account's layer versions, which it keeps when a version is deleted; every
/// bad reference is Lambda's error and changes nothing.
#[tokio::test]
async fn in_process_layers_are_published_listed_used_by_functions_and_deleted() {
    let (n, keys) = node_with_tenants(&["alice", "bob"]).await;
    let (alice, bob) = (&keys[0], &keys[1]);
    let account = ignition_types::account_id("alice");
    let v1 = publish_layer(&n, alice, "deps", &[("python/dep.py", b"v = 1\n")]).await;
    let v2 = publish_layer(&n, alice, "deps", &[("python/dep.py", b"v = 2\n")]).await;
    assert_eq!(v1["Version"], 1);
    assert_eq!(v2["Version"], 2);
    let arn2 = format!("arn:aws:lambda:local:{account}:layer:deps:2");
    assert_eq!(v2["LayerVersionArn"], arn2.as_str());
    assert_eq!(
        v2["LayerArn"],
        format!("arn:aws:lambda:local:{account}:layer:deps").as_str()
    );
    assert_eq!(v2["CompatibleRuntimes"], json!(["python3.11"]));
    assert_eq!(v2["LicenseInfo"], "MIT");
    assert!(v2["Content"]["CodeSize"].as_u64().unwrap() > 0);
    assert_eq!(v2["Content"]["CodeSha256"].as_str().unwrap().len(), 44);

    let get = |auth: &str, path: String| {
        let auth = auth.to_owned();
        let n = &n;
        async move { send_as(n, &auth, reqwest::Method::GET, &path, None).await }
    };
    let (s, _, got) = get(alice, "/2018-10-31/layers/deps/versions/1".into()).await;
    assert_eq!((s, &got["Version"]), (200, &json!(1)));
    let (s, _, by_arn) = get(
        alice,
        format!("/2018-10-31/layers?find=LayerVersion&Arn={arn2}"),
    )
    .await;
    assert_eq!((s, &by_arn["Version"]), (200, &json!(2)), "{by_arn}");
    let (_, _, list) = get(alice, "/2018-10-31/layers".into()).await;
    assert_eq!(list["Layers"][0]["LayerName"], "deps");
    assert_eq!(list["Layers"][0]["LatestMatchingVersion"]["Version"], 2);
    let (_, _, none) = get(
        alice,
        "/2018-10-31/layers?CompatibleRuntime=provided".into(),
    )
    .await;
    assert_eq!(none["Layers"], json!([]), "filtered by runtime");
    let (_, _, versions) = get(alice, "/2018-10-31/layers/deps/versions".into()).await;
    let numbers: Vec<_> = versions["LayerVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1], "newest first");
    // Another tenant sees none of it, by name or by ARN.
    let (_, _, theirs) = get(bob, "/2018-10-31/layers".into()).await;
    assert_eq!(theirs["Layers"], json!([]));
    let (s, kind, _) = get(bob, "/2018-10-31/layers/deps/versions/1".into()).await;
    assert_eq!((s, kind.as_str()), (404, "ResourceNotFoundException"));
    let (s, kind, _) = get(
        bob,
        format!("/2018-10-31/layers?find=LayerVersion&Arn={arn2}"),
    )
    .await;
    assert_eq!((s, kind.as_str()), (403, "AccessDeniedException"));

    // A function with the layer: its configuration names it with its size.
    use base64::Engine as _;
    let code = base64::engine::general_purpose::STANDARD.encode(zip_of(&[(
        "app.py",
        b"import dep\ndef handler(e, c):\n    return dep.v\n",
    )]));
    let create = |name: &str, layers: Value| {
        json!({"FunctionName": name, "Runtime": "python3.11", "Role": "r",
            "Handler": "app.handler", "Code": {"ZipFile": code}, "Layers": layers})
    };
    let post = |auth: &str, body: Value| {
        let auth = auth.to_owned();
        let n = &n;
        async move {
            send_as(
                n,
                &auth,
                reqwest::Method::POST,
                "/2015-03-31/functions",
                Some(body),
            )
            .await
        }
    };
    let (s, _, c) = post(alice, create("f", json!([arn2]))).await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["Layers"][0]["Arn"], arn2.as_str());
    assert_eq!(c["Layers"][0]["CodeSize"], v2["Content"]["CodeSize"]);
    // Bad references: each Lambda's error, and no function made.
    let arn1 = format!("arn:aws:lambda:local:{account}:layer:deps:1");
    let missing = format!("arn:aws:lambda:local:{account}:layer:deps:9");
    let six: Vec<String> = (0..6).map(|_| arn1.clone()).collect();
    for (layers, want) in [
        (json!([missing]), (400, "InvalidParameterValueException")),
        (json!([arn1, arn2]), (400, "InvalidParameterValueException")),
        (json!(six), (400, "InvalidParameterValueException")),
        (
            json!(["not-an-arn"]),
            (400, "InvalidParameterValueException"),
        ),
    ] {
        let (s, kind, body) = post(alice, create("g", layers.clone())).await;
        assert_eq!((s, kind.as_str()), want, "{layers}: {body}");
    }
    let (s, kind, _) = post(bob, create("g", json!([arn2]))).await;
    assert_eq!(
        (s, kind.as_str()),
        (403, "AccessDeniedException"),
        "another account's layer"
    );
    let (s, _, _) = get(alice, "/2015-03-31/functions/g".into()).await;
    assert_eq!(s, 404, "nothing was made");

    // UpdateFunctionConfiguration replaces the list; deleting a version the function uses
    // leaves the function as it is.
    let (s, _, c) = send_as(
        &n,
        alice,
        reqwest::Method::PUT,
        "/2015-03-31/functions/f/configuration",
        Some(json!({"Layers": [arn1]})),
    )
    .await;
    assert_eq!((s, &c["Layers"][0]["Arn"]), (200, &json!(arn1)), "{c}");
    // `ignition fn deploy` without `--layer` keeps them; with it, replaces them.
    let v1_deploy = |layers: Option<Value>| {
        let mut body = json!({"runtime": "python3.11", "handler": "app.handler",
            "code": code.clone()});
        if let Some(l) = layers {
            body["layers"] = l;
        }
        body
    };
    for (layers, want) in [(None, &arn1), (Some(json!([arn2])), &arn2)] {
        let (s, _, body) = send_as(
            &n,
            alice,
            reqwest::Method::PUT,
            "/v1/functions/f",
            Some(v1_deploy(layers)),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let (_, _, f) = get(alice, "/2015-03-31/functions/f".into()).await;
        assert_eq!(f["Configuration"]["Layers"][0]["Arn"], want.as_str());
    }
    let (s, _, _) = send_as(
        &n,
        alice,
        reqwest::Method::PUT,
        "/2015-03-31/functions/f/configuration",
        Some(json!({"Layers": [arn1]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = send_as(
        &n,
        alice,
        reqwest::Method::DELETE,
        "/2018-10-31/layers/deps/versions/1",
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, kind, _) = get(alice, "/2018-10-31/layers/deps/versions/1".into()).await;
    assert_eq!((s, kind.as_str()), (404, "ResourceNotFoundException"));
    let (_, _, f) = get(alice, "/2015-03-31/functions/f".into()).await;
    assert_eq!(f["Configuration"]["Layers"][0]["Arn"], arn1.as_str());
    let v3 = publish_layer(&n, alice, "deps", &[("python/dep.py", b"v = 3\n")]).await;
    assert_eq!(
        v3["Version"], 3,
        "a deleted version's number is not given again"
    );
    n.node.shutdown().await.unwrap();
}

/// #21: code and layers together may expand to Lambda's 250 MiB (code lives on a drive, not in
/// the guest's memory): a function with a 130 MiB layer is made; with a second one the total
/// passes the limit and the function is refused, naming the limit. (The layers are put in
/// the store directly: this is about the API's check, not about uploading 260 MiB.)
#[tokio::test]
async fn in_process_code_with_layers_may_expand_to_lambdas_limit_and_no_further() {
    let (n, keys) = node_with_tenants(&["alice"]).await;
    let alice = &keys[0];
    let account = ignition_types::account_id("alice");
    let store = n.node.state().store.clone();
    let mut arns = Vec::new();
    for (fill, name) in [(1u8, "big1"), (2, "big2")] {
        let tar = vec![fill; 130 << 20];
        let v = store
            .publish_layer_version(
                &format!("alice.{name}"),
                &ignition_store::LayerMeta::default(),
                &tar,
                &ignition_types::TenantQuotas::default(),
            )
            .unwrap();
        arns.push(format!(
            "arn:aws:lambda:local:{account}:layer:{name}:{}",
            v.version
        ));
    }
    use base64::Engine as _;
    let code = base64::engine::general_purpose::STANDARD.encode(zip_of(&[(
        "echo.py",
        b"def handler(e, c):\n    return e\n",
    )]));
    let create = |name: &str, layers: &[String]| {
        json!({"FunctionName": name, "Runtime": "python3.11", "Role": "r",
            "Handler": "echo.handler", "Code": {"ZipFile": code}, "Layers": layers})
    };
    let (s, _, c) = send_as(
        &n,
        alice,
        reqwest::Method::POST,
        "/2015-03-31/functions",
        Some(create("one", &arns[..1])),
    )
    .await;
    assert_eq!(s, 201, "{c}");
    let (s, kind, body) = send_as(
        &n,
        alice,
        reqwest::Method::POST,
        "/2015-03-31/functions",
        Some(create("two", &arns)),
    )
    .await;
    assert_eq!((s, kind.as_str()), (400, "InvalidParameterValueException"));
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("262144000")
            || body["Message"]
                .as_str()
                .unwrap_or_default()
                .contains("262144000"),
        "{body}"
    );
    let (s, _, _) = send_as(
        &n,
        alice,
        reqwest::Method::GET,
        "/2015-03-31/functions/two",
        None,
    )
    .await;
    assert_eq!(s, 404, "nothing was made");
    n.node.shutdown().await.unwrap();
}
