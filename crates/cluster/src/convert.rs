//! Between the worker's types and their wire form. Everything decoded here came from another
//! node: decoding is strict (unknown runtimes, start modes and malformed rules are errors), and
//! the code itself is checked against its hash where it is fetched.

use std::sync::Arc;
use std::time::Duration;

use ignition_proto::{ErrorBody, FunctionSpec, InvokeResult, Outcome, Runtime};
use ignition_worker::{ExecError, Execution, Job, StartKind, StartMode, Timings};

use crate::pb;

/// An invocation's wire form, without its code.
pub(crate) fn invocation(
    id: &str,
    attempt: u32,
    origin: &str,
    job: &Job,
    mode: StartMode,
    lease: Duration,
) -> pb::Invocation {
    let f = &job.function;
    pb::Invocation {
        id: id.to_owned(),
        attempt,
        origin: origin.to_owned(),
        request_id: job.request_id.clone(),
        function: Some(pb::Function {
            name: f.name.clone(),
            runtime: f.runtime.as_str().to_owned(),
            handler: f.handler.clone(),
            memory_mib: f.memory_mib,
            env: f.env.iter().cloned().collect(),
            code_sha256: job.code_sha256.clone(),
            reuse: job.reuse,
            egress: job.egress.iter().map(ToString::to_string).collect(),
            timeout_ms: u64::try_from(job.timeout.as_millis()).unwrap_or(u64::MAX),
            display_name: f.display_name.clone(),
            version: f.version.clone(),
            layer_sha256: job.layers.iter().map(|l| l.sha256.clone()).collect(),
        }),
        payload: job.payload.clone(),
        start_mode: start_mode_name(mode).to_owned(),
        lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        client_context: job.client_context.clone(),
    }
}

/// The name of a start mode on the wire.
pub(crate) fn start_mode_name(mode: StartMode) -> &'static str {
    match mode {
        StartMode::Auto => "auto",
        StartMode::Boot => "boot",
        StartMode::Restore => "restore",
        StartMode::Pool => "pool",
    }
}

/// A stolen invocation's job, given its code and its layers' (already checked against their
/// hashes).
pub(crate) fn job(
    inv: &pb::Invocation,
    code_tar: Vec<u8>,
    layer_tars: Vec<Vec<u8>>,
) -> Result<(Job, StartMode), String> {
    let f = inv
        .function
        .as_ref()
        .ok_or("the invocation names no function")?;
    let runtime = Runtime::parse(&f.runtime).map_err(|e| e.to_string())?;
    let mode: StartMode = inv.start_mode.parse()?;
    let egress = ignition_net::parse_rules(&f.egress).map_err(|e| e.to_string())?;
    let mut env: Vec<(String, String)> = f.env.clone().into_iter().collect();
    env.sort();
    if layer_tars.len() != f.layer_sha256.len() {
        return Err("the layers do not match the invocation's".to_owned());
    }
    let layers = f
        .layer_sha256
        .iter()
        .zip(layer_tars)
        .map(|(sha256, tar)| ignition_worker::LayerCode {
            sha256: sha256.clone(),
            tar: Some(Arc::new(tar)),
        })
        .collect();
    Ok((
        Job {
            function: Arc::new(FunctionSpec {
                name: f.name.clone(),
                runtime,
                handler: f.handler.clone(),
                memory_mib: f.memory_mib,
                env,
                code: ignition_proto::Code::Tar(code_tar),
                display_name: f.display_name.clone(),
                version: f.version.clone(),
                account_id: ignition_types::account_id(
                    &ignition_types::FunctionId::from_stored(&f.name).tenant,
                ),
                image: None,
            }),
            code_sha256: f.code_sha256.clone(),
            layers,
            reuse: f.reuse,
            egress: egress.into(),
            request_id: inv.request_id.clone(),
            payload: inv.payload.clone(),
            client_context: inv.client_context.clone(),
            timeout: Duration::from_millis(f.timeout_ms),
        },
        mode,
    ))
}

fn error_body(e: &ErrorBody) -> pb::ErrorBody {
    pb::ErrorBody {
        error_type: e.error_type.clone(),
        error_message: e.error_message.clone(),
        stack_trace: e.stack_trace.clone(),
    }
}

fn from_error_body(e: pb::ErrorBody) -> ErrorBody {
    ErrorBody {
        error_type: e.error_type,
        error_message: e.error_message,
        stack_trace: e.stack_trace,
    }
}

/// An execution's result in wire form.
pub(crate) fn result(outcome: &Result<Execution, ExecError>) -> pb::complete_request::Result {
    use pb::complete_request::Result as R;
    match outcome {
        Ok(exec) => {
            let r = &exec.result;
            let t = exec.timings;
            R::Execution(pb::Execution {
                outcome: Some(match &r.outcome {
                    Outcome::Success(body) => pb::execution::Outcome::Success(body.clone()),
                    Outcome::FunctionError(e) => {
                        pb::execution::Outcome::FunctionError(error_body(e))
                    }
                    Outcome::InitError(e) => pb::execution::Outcome::InitError(error_body(e)),
                    Outcome::Timeout { after_ms } => {
                        pb::execution::Outcome::TimedOutAfterMs(*after_ms)
                    }
                }),
                logs: r.logs.clone(),
                logs_truncated: r.logs_truncated,
                duration_ms: r.duration_ms,
                network_us: r.network_us,
                kernel_release: exec.kernel_release.clone(),
                start: exec.start.as_str().to_owned(),
                timings: Some(pb::Timings {
                    queued_ms: t.queued_ms,
                    snapshot_ms: t.snapshot_ms,
                    vm_start_ms: t.vm_start_ms,
                    guest_ready_ms: t.guest_ready_ms,
                    load_ms: t.load_ms,
                    invoke_ms: t.invoke_ms,
                    net_setup_us: t.net_setup_us,
                    net_attach_us: t.net_attach_us,
                    total_ms: t.total_ms,
                }),
            })
        }
        Err(ExecError::Timeout(after)) => R::Failure(pb::Failure {
            timed_out: true,
            timeout_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            message: String::new(),
        }),
        Err(e) => R::Failure(pb::Failure {
            timed_out: false,
            timeout_ms: 0,
            message: e.to_string(),
        }),
    }
}

/// What a thief reported, as the worker would have reported it here.
pub(crate) fn outcome(
    result: Option<pb::complete_request::Result>,
    request_id: &str,
    executor: &str,
) -> Result<Execution, ExecError> {
    use pb::complete_request::Result as R;
    let cluster = |why: String| ExecError::Cluster(format!("node {executor}: {why}"));
    match result {
        None => Err(cluster("reported no result".into())),
        Some(R::Failure(f)) if f.timed_out => {
            Err(ExecError::Timeout(Duration::from_millis(f.timeout_ms)))
        }
        Some(R::Failure(f)) => Err(cluster(f.message)),
        Some(R::Execution(e)) => {
            let outcome = match e.outcome {
                Some(pb::execution::Outcome::Success(body)) => Outcome::Success(body),
                Some(pb::execution::Outcome::FunctionError(b)) => {
                    Outcome::FunctionError(from_error_body(b))
                }
                Some(pb::execution::Outcome::InitError(b)) => {
                    Outcome::InitError(from_error_body(b))
                }
                Some(pb::execution::Outcome::TimedOutAfterMs(after_ms)) => {
                    Outcome::Timeout { after_ms }
                }
                None => return Err(cluster("reported an execution without an outcome".into())),
            };
            let start = match e.start.as_str() {
                "boot" => StartKind::Boot,
                "restore" => StartKind::Restore,
                "pool" => StartKind::Pool,
                "warm" => StartKind::Warm,
                other => return Err(cluster(format!("reported start {other:?}"))),
            };
            let t = e.timings.unwrap_or_default();
            Ok(Execution {
                result: InvokeResult {
                    request_id: request_id.to_owned(),
                    outcome,
                    logs: e.logs,
                    logs_truncated: e.logs_truncated,
                    duration_ms: e.duration_ms,
                    network_us: e.network_us,
                },
                kernel_release: e.kernel_release,
                start,
                timings: Timings {
                    queued_ms: t.queued_ms,
                    snapshot_ms: t.snapshot_ms,
                    vm_start_ms: t.vm_start_ms,
                    guest_ready_ms: t.guest_ready_ms,
                    load_ms: t.load_ms,
                    invoke_ms: t.invoke_ms,
                    net_setup_us: t.net_setup_us,
                    net_attach_us: t.net_attach_us,
                    total_ms: t.total_ms,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_job() -> Job {
        Job {
            function: Arc::new(FunctionSpec {
                name: "t.hello@2".into(),
                runtime: Runtime::Python3,
                handler: "app.handler".into(),
                memory_mib: 256,
                env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
                code: ignition_proto::Code::Tar(b"code".to_vec()),
                display_name: "hello".into(),
                version: "2".into(),
                account_id: ignition_types::account_id("t"),
                image: None,
            }),
            code_sha256: "ab".repeat(32),
            layers: vec![ignition_worker::LayerCode {
                sha256: "cd".repeat(32),
                tar: None,
            }]
            .into(),
            reuse: true,
            egress: ignition_net::parse_rules(&["10.0.0.0/8:443/tcp"])
                .unwrap_or_default()
                .into(),
            request_id: "r1".into(),
            payload: b"{\"x\":1}".to_vec(),
            client_context: Some(r#"{"custom":{"k":"v"}}"#.to_owned()),
            timeout: Duration::from_millis(2500),
        }
    }

    #[test]
    fn a_job_survives_the_wire_but_for_its_code() {
        let j = sample_job();
        let inv = invocation(
            "i1",
            3,
            "n1",
            &j,
            StartMode::Restore,
            Duration::from_secs(3),
        );
        assert_eq!(inv.lease_ms, 3000);
        assert_eq!(
            inv.function.as_ref().unwrap().layer_sha256,
            ["cd".repeat(32)]
        );
        assert!(
            job(&inv, b"code".to_vec(), vec![]).is_err(),
            "the layers' bundles must come with it"
        );
        let (back, mode) = job(&inv, b"code".to_vec(), vec![b"layer".to_vec()]).unwrap();
        assert_eq!(mode, StartMode::Restore);
        assert_eq!(back.layers[0].sha256, "cd".repeat(32));
        assert_eq!(
            back.layers[0].tar.as_deref().map(Vec::as_slice),
            Some(&b"layer"[..])
        );
        assert_eq!(back.function, j.function);
        assert_eq!(
            (
                back.code_sha256,
                back.reuse,
                back.request_id,
                back.payload,
                back.timeout
            ),
            (j.code_sha256, j.reuse, j.request_id, j.payload, j.timeout)
        );
        assert_eq!(back.egress.len(), 1);
        assert_eq!(back.egress[0].to_string(), j.egress[0].to_string());
        assert_eq!(back.client_context, j.client_context);
    }

    #[test]
    fn what_a_peer_sends_is_decoded_strictly() {
        let j = sample_job();
        let mut inv = invocation("i1", 1, "n1", &j, StartMode::Auto, Duration::from_secs(3));
        inv.start_mode = "sideways".into();
        assert!(job(&inv, vec![], vec![]).is_err());
        let mut inv = invocation("i1", 1, "n1", &j, StartMode::Auto, Duration::from_secs(3));
        if let Some(f) = inv.function.as_mut() {
            f.runtime = "cobol".into();
        }
        assert!(job(&inv, vec![], vec![]).is_err());
        inv.function = None;
        assert!(job(&inv, vec![], vec![]).is_err());
        let bad_start = pb::complete_request::Result::Execution(pb::Execution {
            outcome: Some(pb::execution::Outcome::Success(b"1".to_vec())),
            start: "teleport".into(),
            ..Default::default()
        });
        assert!(matches!(
            outcome(Some(bad_start), "r", "n2"),
            Err(ExecError::Cluster(_))
        ));
        assert!(matches!(
            outcome(None, "r", "n2"),
            Err(ExecError::Cluster(_))
        ));
    }

    #[test]
    fn results_and_timeouts_come_back_as_the_worker_reports_them() {
        let exec = Execution {
            result: InvokeResult {
                request_id: "r1".into(),
                outcome: Outcome::FunctionError(ErrorBody {
                    error_type: "ZeroDivisionError".into(),
                    error_message: "division by zero".into(),
                    stack_trace: vec!["line 1".into()],
                }),
                logs: b"log".to_vec(),
                logs_truncated: true,
                duration_ms: 12,
                network_us: 7,
            },
            kernel_release: "6.1.0".into(),
            start: StartKind::Pool,
            timings: Timings {
                invoke_ms: 12,
                total_ms: 20,
                ..Timings::default()
            },
        };
        let back = outcome(Some(result(&Ok(exec.clone()))), "r1", "n2").unwrap();
        assert_eq!(back.result, exec.result);
        assert_eq!(back.start, StartKind::Pool);
        assert_eq!(back.timings, exec.timings);
        let timeout = result(&Err(ExecError::Timeout(Duration::from_secs(3))));
        assert!(matches!(
            outcome(Some(timeout), "r1", "n2"),
            Err(ExecError::Timeout(d)) if d == Duration::from_secs(3)
        ));
        // A handler that ran out of time is an execution, with what it logged until then.
        let timed_out = Execution {
            result: InvokeResult {
                outcome: Outcome::Timeout { after_ms: 3000 },
                logs: b"before the timeout\n".to_vec(),
                ..exec.result.clone()
            },
            ..exec
        };
        let back = outcome(Some(result(&Ok(timed_out.clone()))), "r1", "n2").unwrap();
        assert_eq!(back.result, timed_out.result);
    }
}
