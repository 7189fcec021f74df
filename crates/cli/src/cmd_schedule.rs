//! `ignition schedule ...`: run functions on a clock, through EventBridge Scheduler's API.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Invoke a function on a schedule (asynchronously, with retries).
    Create {
        /// The schedule's name: 1-64 of letters, digits, '-', '_' and '.'.
        name: String,
        /// The function, or FUNCTION:QUALIFIER.
        #[arg(long)]
        function: String,
        /// `rate(5 minutes)`, `cron(0 9 ? * MON-FRI *)` or `at(2027-01-01T09:00:00)`.
        #[arg(long)]
        expression: String,
        /// The event each firing sends (JSON; default `{}`).
        #[arg(long)]
        input: Option<String>,
        /// The IANA time zone of a cron's or an at()'s wall-clock times (default UTC).
        #[arg(long)]
        tz: Option<String>,
    },
    /// List schedules.
    Ls,
    /// Delete a schedule.
    Rm {
        /// The schedule.
        name: String,
    },
}

pub(crate) fn run(cmd: ScheduleCommand, global: &crate::GlobalArgs) -> Result<ExitCode> {
    let client = Client::new(global)?;
    match cmd {
        ScheduleCommand::Create {
            name,
            function,
            expression,
            input,
            tz,
        } => {
            if let Some(i) = &input {
                serde_json::from_str::<serde::de::IgnoredAny>(i)
                    .context("--input is not valid JSON")?;
            }
            // The target is an ARN, which carries the caller's account id: the function's own
            // tells it (and that the function exists).
            let (fname, qualifier) = match function.split_once(':') {
                Some((f, q)) => (f, Some(q)),
                None => (function.as_str(), None),
            };
            let got = client.json(
                client
                    .http()
                    .get(client.url(&format!("/2015-03-31/functions/{fname}"))),
                "schedule create",
            )?;
            let arn = got["Configuration"]["FunctionArn"]
                .as_str()
                .context("the server did not say the function's ARN")?;
            let account = arn.split(':').nth(4).unwrap_or_default();
            let mut target = json!({
                "Arn": match qualifier {
                    Some(q) => format!("{arn}:{q}"),
                    None => arn.to_owned(),
                },
                "RoleArn": format!("arn:aws:iam::{account}:role/ignition"),
            });
            if let Some(i) = input {
                target["Input"] = i.into();
            }
            let mut body = json!({
                "ScheduleExpression": expression,
                "FlexibleTimeWindow": {"Mode": "OFF"},
                "Target": target,
            });
            if let Some(tz) = tz {
                body["ScheduleExpressionTimezone"] = tz.into();
            }
            let doc = client.json(
                client
                    .http()
                    .post(client.url(&format!("/schedules/{name}")))
                    .json(&body),
                "schedule create",
            )?;
            println!("{}", doc["ScheduleArn"].as_str().unwrap_or_default());
        }
        ScheduleCommand::Ls => {
            let doc = client.json(client.http().get(client.url("/schedules")), "schedule ls")?;
            if global.output == crate::Output::Json {
                println!("{}", serde_json::to_string_pretty(&doc["Schedules"])?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24} {:<9} {:<32} {:<24} TARGET",
                "NAME", "STATE", "EXPRESSION", "NEXT (UTC)"
            );
            for s in doc["Schedules"].as_array().into_iter().flatten() {
                let next = s["IgnitionNextFire"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), format_time);
                println!(
                    "{:<24} {:<9} {:<32} {:<24} {}",
                    s["Name"].as_str().unwrap_or_default(),
                    s["State"].as_str().unwrap_or_default(),
                    s["ScheduleExpression"].as_str().unwrap_or_default(),
                    next,
                    s["Target"]["Arn"].as_str().unwrap_or_default(),
                );
            }
        }
        ScheduleCommand::Rm { name } => {
            client.json(
                client
                    .http()
                    .delete(client.url(&format!("/schedules/{name}"))),
                "schedule rm",
            )?;
            println!("deleted {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS`.
fn format_time(secs: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    let secs = secs as i64;
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || secs.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}
