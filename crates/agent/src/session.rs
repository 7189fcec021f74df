//! The session with the host: the loop that answers each [`HostMessage`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ignition_proto::{
    Code, ErrorBody, FunctionSpec, GuestMessage, HostMessage, InvokeRequest, InvokeResult, Outcome,
};

use crate::init::{console, power_off, Guest};
use crate::network::NetState;
use crate::runtime_api::{self, Answer, Broker, Invocation};
use crate::supervisor::{self, Launch, LogBuffer, TASK_ROOT};

struct Loaded {
    function_arn: String,
    runtime: ignition_proto::Runtime,
}

/// Serves the host until it asks for a shutdown; returns only on a fatal error.
pub fn serve(guest: Guest) -> String {
    let Guest {
        mut channel,
        kernel_release,
        network: mut net,
    } = guest;
    let broker = Arc::new(Broker::default());
    let logs = Arc::new(LogBuffer::default());
    let runtime_pid = Arc::new(Mutex::new(None));
    supervisor::spawn_reaper(Arc::clone(&runtime_pid), Arc::clone(&broker));
    if let Err(e) = runtime_api::serve(Arc::clone(&broker)) {
        return e;
    }
    let ready = GuestMessage::Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release,
    };
    if let Err(e) = channel.send(&ready) {
        return e;
    }
    console("ready");
    let mut loaded: Option<Loaded> = None;
    loop {
        let msg = match channel.recv() {
            Ok(Some(m)) => m,
            // A vsock channel is reset by a snapshot restore: connect again and carry on.
            Ok(None) | Err(_) if channel.reconnect(Duration::from_secs(5)) => continue,
            Ok(None) => power_off(),
            Err(e) => return format!("host channel: {e}"),
        };
        let reply = match msg {
            HostMessage::Shutdown => power_off(),
            HostMessage::LoadFunction(spec) if loaded.is_none() => {
                match load(&spec, &logs, &runtime_pid, &broker) {
                    Ok(l) => {
                        // Initialization (imports, init code) is paid before `Loaded`, so the
                        // function's timeout covers only its handler, as in Lambda. An init
                        // failure surfaces as the first invocation's result.
                        broker.wait_initialized();
                        loaded = Some(l);
                        GuestMessage::Loaded
                    }
                    Err(message) => GuestMessage::Fatal { message },
                }
            }
            HostMessage::LoadFunction(_) => GuestMessage::Fatal {
                message: "a function is already loaded in this VM".to_owned(),
            },
            HostMessage::Warmup(network) => match &loaded {
                Some(l) => {
                    if let Some(cfg) = &network {
                        // A failure here is reported by the invocation, which applies it again.
                        if let Err(e) = net.apply(cfg) {
                            console(&format!("network set-up during warm-up: {e}"));
                        }
                    }
                    match warm_up(l, &broker, &logs) {
                        Ok(()) => GuestMessage::Warmed,
                        // A VM whose runtime is stuck in the warm-up must not become a slot.
                        Err(message) => GuestMessage::Fatal { message },
                    }
                }
                None => GuestMessage::Fatal {
                    message: "warm-up before any function was loaded".to_owned(),
                },
            },
            HostMessage::Invoke(req) => match &loaded {
                Some(l) => GuestMessage::Result(invoke(req, l, &broker, &logs, &mut net)),
                None => GuestMessage::Fatal {
                    message: "invoke before any function was loaded".to_owned(),
                },
            },
        };
        if let Err(e) = channel.send(&reply) {
            return e;
        }
    }
}

fn load(
    spec: &FunctionSpec,
    logs: &Arc<LogBuffer>,
    runtime_pid: &Arc<Mutex<Option<nix::unistd::Pid>>>,
    broker: &crate::runtime_api::Broker,
) -> Result<Loaded, String> {
    std::fs::create_dir_all(TASK_ROOT).map_err(|e| format!("mkdir {TASK_ROOT}: {e}"))?;
    match &spec.code {
        Code::Drive if spec.image.is_some() => {
            let scratch_mib = crate::init::cmdline_option("scratch_mib")
                .and_then(|v| v.parse().ok())
                .unwrap_or(64);
            crate::image_root::mount(scratch_mib)?;
        }
        Code::Tar(_) if spec.image.is_some() => {
            return Err("a container image's function comes on its drive, not as a tar".into())
        }
        Code::Drive => crate::code_drive::mount(TASK_ROOT, crate::supervisor::OPT_ROOT)?,
        Code::Tar(tar) => {
            let mut archive = tar::Archive::new(&tar[..]);
            archive.set_preserve_permissions(true);
            archive
                .unpack(TASK_ROOT)
                .map_err(|e| format!("unpack function code: {e}"))?;
        }
    }
    // Hold the pid lock across the spawn so the reaper cannot see the runtime's exit before it
    // knows the runtime's pid.
    let mut slot = runtime_pid.lock().unwrap_or_else(|p| p.into_inner());
    let started = supervisor::start(
        &Launch {
            runtime: spec.runtime,
            handler: &spec.handler,
            function_name: &spec.display_name,
            version: &spec.version,
            memory_mib: spec.memory_mib,
            env: &spec.env,
            image: spec.image.as_ref(),
        },
        logs,
    );
    match started {
        Ok(pid) => *slot = Some(pid),
        // An image's entry point that cannot be run is the function's init failure, as on
        // Lambda, not the VM's.
        Err(message) if spec.image.is_some() => broker.init_error(ignition_proto::ErrorBody {
            error_type: "Runtime.InvalidEntrypoint".to_owned(),
            error_message: message,
            stack_trace: Vec::new(),
        }),
        Err(message) => return Err(message),
    }
    Ok(Loaded {
        function_arn: format!(
            "arn:aws:lambda:local:{}:function:{}",
            spec.account_id, spec.display_name
        ),
        runtime: spec.runtime,
    })
}

fn set_clock(host_time_unix_ms: u64) {
    let ts = nix::sys::time::TimeSpec::new(
        i64::try_from(host_time_unix_ms / 1000).unwrap_or(i64::MAX),
        i64::try_from((host_time_unix_ms % 1000) * 1_000_000).unwrap_or(0),
    );
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        console(&format!("cannot set the clock: {e}"));
    }
}

/// How long a warm-up may take before the agent stops waiting for the runtime: under the host's
/// own limit (10 s), so that the host hears why rather than only that time ran out.
const WARMUP_LIMIT: Duration = Duration::from_secs(8);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0)
}

/// Runs a synthetic invocation marked as a warm-up through the Runtime API. Only Ignition's own
/// runtime clients (Python's and Node.js's) know the mark (they answer without calling the
/// handler); a `provided` bootstrap is the user's code, so for it nothing is run.
fn warm_up(loaded: &Loaded, broker: &Broker, logs: &LogBuffer) -> Result<(), String> {
    // The guest-side steps of a real invocation, with nothing secret or credited: the clock as
    // it is, and the pool mixed with bytes that carry no claimed entropy.
    set_clock(now_unix_ms());
    let _ = crate::entropy::reseed(&now_unix_ms().to_le_bytes(), false);
    if loaded.runtime == ignition_proto::Runtime::Provided {
        return Ok(());
    }
    // The runtime's own errors are left for the first real invocation to report (an init
    // failure is its result); only a runtime that never answered spoils the VM.
    let answer = broker.invoke(
        Invocation {
            request_id: format!("warmup-{}", now_unix_ms()),
            payload: b"{}".to_vec(),
            deadline_unix_ms: now_unix_ms().saturating_add(ms(WARMUP_LIMIT)),
            function_arn: loaded.function_arn.clone(),
            vm_id: String::new(),
            warmup: true,
            client_context: None,
        },
        WARMUP_LIMIT,
    );
    logs.settle();
    let _ = logs.take();
    match answer {
        Answer::TimedOut => Err(format!(
            "the runtime did not finish its warm-up within {WARMUP_LIMIT:?}"
        )),
        _ => Ok(()),
    }
}

fn invoke(
    req: InvokeRequest,
    loaded: &Loaded,
    broker: &Broker,
    logs: &LogBuffer,
    net: &mut NetState,
) -> InvokeResult {
    set_clock(req.host_time_unix_ms);
    if let Err(e) = crate::entropy::reseed(&req.entropy, true) {
        console(&format!("cannot reseed the RNG: {e}"));
    }
    let network_us = match req.network.as_ref().map(|c| net.apply(c)) {
        None => 0,
        Some(Ok(us)) => us,
        Some(Err(why)) => {
            // The function would run without the network its policy grants: say so instead.
            return InvokeResult {
                request_id: req.request_id,
                outcome: Outcome::FunctionError(ErrorBody {
                    error_type: "Ignition.NetworkSetupError".to_owned(),
                    error_message: format!("the guest could not configure its network: {why}"),
                    stack_trace: Vec::new(),
                }),
                logs: Vec::new(),
                logs_truncated: false,
                duration_ms: 0,
                network_us: 0,
            };
        }
    };
    let started = Instant::now();
    // The timeout runs here, by the guest's monotonic clock, so that what the function logged
    // before it ran out reaches the host; the host's own deadline is a little later and only
    // ends a guest that stopped answering altogether.
    let answer = broker.invoke(
        Invocation {
            request_id: req.request_id.clone(),
            payload: req.payload,
            deadline_unix_ms: now_unix_ms().saturating_add(req.timeout_ms),
            function_arn: loaded.function_arn.clone(),
            vm_id: req.vm_id,
            warmup: false,
            client_context: req.client_context,
        },
        Duration::from_millis(req.timeout_ms),
    );
    let duration_ms = ms(started.elapsed());
    logs.settle();
    let outcome = match answer {
        Answer::Response(body) => Outcome::Success(body),
        Answer::Error(e) => Outcome::FunctionError(e),
        Answer::InitError(e) => Outcome::InitError(e),
        Answer::RuntimeExited(why) => Outcome::FunctionError(ErrorBody {
            error_type: "Runtime.ExitError".to_owned(),
            error_message: why,
            stack_trace: Vec::new(),
        }),
        Answer::TimedOut => Outcome::Timeout {
            after_ms: req.timeout_ms,
        },
    };
    let (logs, logs_truncated) = logs.take();
    InvokeResult {
        request_id: req.request_id,
        outcome,
        logs,
        logs_truncated,
        duration_ms,
        network_us,
    }
}
