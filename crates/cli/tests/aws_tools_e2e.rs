//! The tools people manage Lambda functions with, unmodified, against a real server with real
//! microVMs: the AWS CLI (Debian's `awscli`) through a shell script of the commands a user
//! types, and the sequence of calls Terraform's `aws_lambda_function` makes, replayed with
//! boto3, read twice with no difference from what was sent; and each operation added for them
//! called with boto3, whose client checks the request's shape and parses the answer's.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::TestServer;

/// Runs a fixture and returns its `step value` lines (a step seen twice keeps every value).
fn run(program: &str, script: &str, args: &[&str]) -> HashMap<String, Vec<String>> {
    let script = common::repo_root()
        .join("crates/cli/tests/fixtures/sdk")
        .join(script);
    let out = Command::new(program)
        .arg(&script)
        .args(args)
        .output()
        .expect("the tool (./scripts/setup.sh installs awscli and python3-boto3)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut steps: HashMap<String, Vec<String>> = HashMap::new();
    for line in stdout.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        steps
            .entry(k.to_owned())
            .or_default()
            .push(v.trim().to_owned());
    }
    steps
}

#[test]
fn the_aws_cli_manages_functions_as_on_lambda() {
    let server = TestServer::start_secure(&[]);
    let (id, secret) = server.create_key("acme");
    let (other_id, other_secret) = server.create_key("other");
    let other_account = ignition_types::account_id("other");
    let work = tempfile::tempdir().unwrap();
    let s = run(
        "/bin/bash",
        "aws_cli.sh",
        &[
            &server.url,
            &id,
            &secret,
            work.path().to_str().unwrap(),
            &other_id,
            &other_secret,
            &other_account,
        ],
    );
    let one = |k: &str| s[k][0].clone();
    assert_eq!(one("create"), "python3.11\tmade by the cli", "{s:?}");
    assert_eq!(one("layer"), "greetings:1");
    assert_eq!(one("layers"), "greetings:1", "the function names its layer");
    assert_eq!(one("list-layers"), "greetings\t1");
    assert_eq!(
        one("invoke-layer"),
        "from a layer",
        "the function imported its layer's module from /opt/python in its microVM"
    );
    assert_eq!(one("layer-versions"), "0", "the version was deleted");
    assert_eq!(s["publish"], ["1", "2", "3"]);
    assert_eq!(one("alias"), r#"{"2":0.5}"#);
    let account = ignition_types::account_id("acme");
    assert_eq!(one("account"), account, "the tenant's own account id");
    assert_ne!(account, "000000000000");
    assert_eq!(
        one("event-config"),
        format!("arn:aws:lambda:local:{account}:function:sink")
    );
    assert_eq!(
        one("grant"),
        format!("arn:aws:iam::{other_account}:root"),
        "add-permission names the other tenant's account"
    );
    assert_eq!(
        one("granted-invoke"),
        "2",
        "the other tenant invoked the function by its ARN, as its policy lets it"
    );
    assert_eq!(one("tags"), "cli");
    assert_eq!(one("page1"), "1 True", "--max-items 1 pages");
    assert_eq!(one("page2"), "1");
    assert_eq!(one("invoke"), "1");
    assert_eq!(
        one("versions").split_whitespace().collect::<Vec<_>>(),
        ["$LATEST", "1", "2"],
        "version 3 deleted by qualifier; the function and the others remain"
    );
    assert_eq!(one("settings"), "2");
    assert_eq!(one("url"), "/path");
    server.stop_and_check_clean();
}

#[test]
fn terraforms_create_and_read_see_what_was_sent() {
    let server = TestServer::start_secure(&[]);
    let (id, secret) = server.create_key("acme");
    let s = run(
        "/usr/bin/python3",
        "terraform_read.py",
        &[&server.url, &id, &secret],
    );
    let one = |k: &str| s[k][0].clone();
    assert_eq!(one("state"), "Active", "{s:?}");
    assert_eq!(one("policy"), "none");
    assert_eq!(one("versions"), "$LATEST");
    assert_eq!(one("signing"), "''");
    assert_eq!(one("reserved"), "None");
    assert_eq!(one("diff-from-sent"), "none");
    assert_eq!(one("diff-between-reads"), "none");
    server.stop_and_check_clean();
}

#[test]
fn the_operations_added_answer_boto3_in_its_own_shapes() {
    let server = TestServer::start_secure(&[]);
    let (id, secret) = server.create_key("acme");
    let s = run(
        "/usr/bin/python3",
        "lambda_shapes.py",
        &[&server.url, &id, &secret],
    );
    let one = |k: &str| s[k][0].clone();
    assert_eq!(one("tags"), "{'b': '2'}", "{s:?}");
    assert_eq!(one("provisioned"), "IN_PROGRESS 1");
    assert_eq!(one("list-provisioned"), "1");
    assert_eq!(one("url"), "AWS_IAM");
    assert_eq!(one("url-gone"), "ResourceNotFoundException");
    assert_eq!(one("eic"), "1 datetime");
    assert_eq!(one("eic-list"), "1");
    assert_eq!(one("settings"), "1000");
    assert_eq!(one("alias"), "shape:live");
    assert_eq!(one("aliases"), "1");
    assert_eq!(one("delete-aliased"), "ResourceConflictException");
    assert_eq!(
        one("schedule"),
        "ENABLED {'MaximumWindowInMinutes': 5, 'Mode': 'FLEXIBLE'} datetime"
    );
    assert_eq!(one("schedules"), "[('s1', 'DISABLED')]");
    assert_eq!(one("schedule-gone"), "ResourceNotFoundException");
    assert_eq!(one("cs"), "''");
    server.stop_and_check_clean();
}
