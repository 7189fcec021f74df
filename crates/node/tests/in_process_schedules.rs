//! Schedules on nodes started in-process, with the in-process guest as their VMM, driven with
//! an injected clock (`ignition_api::fire_due` at chosen times): EventBridge Scheduler's API
//! shapes and validation, each due time firing once, missed due times, one-time schedules that
//! delete themselves. A schedule waited for in real time, with boto3 and a microVM, is in
//! `crates/cli/tests/triggers_e2e.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignition_in_process_guest::{InProcessGuest, Reply};
use in_process_support::*;
use serde_json::{json, Value};

/// A guest whose `record.handler` keeps every event it gets.
fn recording_guest() -> (InProcessGuest, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let guest = InProcessGuest::new().with_handler(
        "record.handler",
        Arc::new(move |call| {
            let s = Arc::clone(&s);
            Box::pin(async move {
                s.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&call.payload).unwrap());
                Reply::json(&json!({"ok": true}))
            })
        }),
    );
    (guest, seen)
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn put_schedule(
    n: &TestNode,
    method: reqwest::Method,
    name: &str,
    body: Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .request(method, n.url(&format!("/schedules/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn schedule(expr: &str, function: &str) -> Value {
    json!({
        "ScheduleExpression": expr,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": {
            "Arn": format!("arn:aws:lambda:us-east-1:000000000000:function:{function}"),
            "RoleArn": "arn:aws:iam::000000000000:role/scheduler",
            "Input": "{\"from\": \"the clock\"}",
        },
    })
}

async fn wait_for_events(seen: &Arc<Mutex<Vec<Value>>>, n: usize) {
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} events arrived, not {n}", seen.lock().unwrap().len());
}

#[tokio::test]
async fn in_process_a_rate_schedule_fires_each_due_time_once_and_counts_what_it_missed() {
    let (guest, seen) = recording_guest();
    let n = start_with(guest, |_| {}).await;
    assert_eq!(
        deploy(&n, "tick", "record.handler", json!({}))
            .await
            .status(),
        201
    );
    let made = now_ms();
    let r = put_schedule(
        &n,
        reqwest::Method::POST,
        "every-minute",
        schedule("rate(1 minute)", "tick"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let created: Value = r.json().await.unwrap();
    assert_eq!(
        created["ScheduleArn"],
        "arn:aws:scheduler:local:000000000000:schedule/default/every-minute"
    );
    let again = put_schedule(
        &n,
        reqwest::Method::POST,
        "every-minute",
        schedule("rate(1 minute)", "tick"),
    )
    .await;
    assert_eq!(again.status(), 409);
    assert_eq!(again.headers()["x-amzn-ErrorType"], "ConflictException");

    let got = get_json(n.url("/schedules/every-minute")).await;
    assert_eq!(got["ScheduleExpression"], "rate(1 minute)");
    assert_eq!(got["State"], "ENABLED");
    assert_eq!(got["GroupName"], "default");
    assert_eq!(got["Target"]["RetryPolicy"]["MaximumRetryAttempts"], 185);
    let first = (got["IgnitionNextFire"].as_f64().unwrap() * 1000.0) as i64;
    assert!((made + 60_000..made + 62_000).contains(&first), "{got}");

    let state = n.node.state();
    assert_eq!(
        ignition_api::fire_due(state, first - 1).await.unwrap(),
        0,
        "not yet"
    );
    assert_eq!(ignition_api::fire_due(state, first).await.unwrap(), 1);
    assert_eq!(
        ignition_api::fire_due(state, first).await.unwrap(),
        0,
        "fired once"
    );
    wait_for_events(&seen, 1).await;
    assert_eq!(seen.lock().unwrap()[0], json!({"from": "the clock"}));

    // The node was away for two due times: the one past the grace is missed, the other fires.
    let late = first + 2 * 60_000 + 1_000;
    assert_eq!(ignition_api::fire_due(state, late).await.unwrap(), 1);
    wait_for_events(&seen, 2).await;
    let got = get_json(n.url("/schedules/every-minute")).await;
    assert_eq!(
        (
            got["IgnitionFired"].as_u64(),
            got["IgnitionMissed"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(
        (got["IgnitionNextFire"].as_f64().unwrap() * 1000.0) as i64,
        first + 3 * 60_000
    );

    // Scheduled runs are in the function's logs like any other.
    let logs = get_json(n.url("/v1/functions/tick/logs")).await;
    assert_eq!(logs["logs"].as_array().unwrap().len(), 2, "{logs}");

    // Disabled: nothing is due.
    let mut disabled = schedule("rate(1 minute)", "tick");
    disabled["State"] = "DISABLED".into();
    let r = put_schedule(&n, reqwest::Method::PUT, "every-minute", disabled).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        ignition_api::fire_due(state, first + 10 * 60_000)
            .await
            .unwrap(),
        0
    );
    let listed = get_json(n.url("/schedules")).await;
    assert_eq!(listed["Schedules"][0]["State"], "DISABLED");
    let r = reqwest::Client::new()
        .delete(n.url("/schedules/every-minute"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        reqwest::get(n.url("/schedules/every-minute"))
            .await
            .unwrap()
            .status(),
        404
    );
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_a_one_time_schedule_fires_in_its_zone_and_deletes_itself() {
    let (guest, seen) = recording_guest();
    let n = start_with(guest, |_| {}).await;
    assert_eq!(
        deploy(&n, "once", "record.handler", json!({}))
            .await
            .status(),
        201
    );
    let mut body = schedule("at(2099-07-04T09:00:00)", "once");
    body["ScheduleExpressionTimezone"] = "America/New_York".into();
    body["ActionAfterCompletion"] = "DELETE".into();
    let r = put_schedule(&n, reqwest::Method::POST, "launch", body).await;
    assert_eq!(r.status(), 200);
    let got = get_json(n.url("/schedules/launch")).await;
    let due = (got["IgnitionNextFire"].as_f64().unwrap() * 1000.0) as i64;
    assert_eq!(due, 4_086_853_200_000, "09:00 EDT is 13:00 UTC");
    assert_eq!(
        ignition_api::fire_due(n.node.state(), due + 500)
            .await
            .unwrap(),
        1
    );
    wait_for_events(&seen, 1).await;
    assert_eq!(
        reqwest::get(n.url("/schedules/launch"))
            .await
            .unwrap()
            .status(),
        404
    );
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_bad_schedules_are_validation_errors_and_nothing_is_stored() {
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    assert_eq!(
        deploy(&n, "echo", "echo.handler", json!({})).await.status(),
        201
    );
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = schedule("rate(5 minutes)", "echo");
        f(&mut b);
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|b| b["ScheduleExpression"] = "every 5 minutes".into()),
            "ScheduleExpression",
        ),
        (
            with(&|b| b["ScheduleExpression"] = "cron(0 12 * * MON *)".into()),
            "day-of-week",
        ),
        (
            with(&|b| b["ScheduleExpression"] = "rate(0 minutes)".into()),
            "at least 1",
        ),
        (
            with(&|b| b["ScheduleExpression"] = "at(2020-01-01T00:00:00)".into()),
            "in the past",
        ),
        (
            with(&|b| b["ScheduleExpressionTimezone"] = "Mars/Olympus".into()),
            "ScheduleExpressionTimezone",
        ),
        (
            with(&|b| b["Target"]["Arn"] = "arn:aws:lambda:us-east-1:1:function:nope".into()),
            "Target.Arn",
        ),
        (
            with(&|b| b["Target"]["Arn"] = "arn:aws:sqs:us-east-1:1:queue".into()),
            "Target.Arn",
        ),
        (
            with(&|b| b["Target"]["Input"] = "not json".into()),
            "Target.Input",
        ),
        (with(&|b| b["GroupName"] = "other".into()), "GroupName"),
        (
            with(&|b| b["FlexibleTimeWindow"] = json!({"Mode": "FLEXIBLE"})),
            "MaximumWindowInMinutes",
        ),
        (
            with(&|b| b["Target"]["RetryPolicy"] = json!({"MaximumRetryAttempts": 500})),
            "MaximumRetryAttempts",
        ),
        (with(&|b| b["State"] = "PAUSED".into()), "State"),
    ];
    for (body, field) in cases {
        let r = put_schedule(&n, reqwest::Method::POST, "bad", body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(
            r.headers()["x-amzn-ErrorType"],
            "ValidationException",
            "{body}"
        );
        let e: Value = r.json().await.unwrap();
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{field}: {e}"
        );
    }
    let r = put_schedule(
        &n,
        reqwest::Method::POST,
        "bad name!",
        schedule("rate(5 minutes)", "echo"),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = put_schedule(
        &n,
        reqwest::Method::PUT,
        "missing",
        schedule("rate(5 minutes)", "echo"),
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        get_json(n.url("/schedules")).await["Schedules"],
        json!([]),
        "nothing stored"
    );
    n.node.shutdown().await.unwrap();
}
