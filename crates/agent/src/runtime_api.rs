//! The AWS Lambda Runtime API (`/2018-06-01/runtime/...`) served inside the guest, and the broker
//! that hands one invocation at a time between the session and the runtime.
//!
//! The runtime is the function's own code and is not trusted: request bodies are size-limited,
//! answers for a request id that is not in flight are refused, and nothing the runtime does can
//! block the session past the invocation's timeout (and the host's deadline, a little later,
//! ends a session that stops answering at all).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ignition_proto::{ErrorBody, MAX_RESULT_BYTES};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::handlers::Handlers;

/// Address the Runtime API listens on (`AWS_LAMBDA_RUNTIME_API`).
pub(crate) const RUNTIME_API_ADDR: &str = "127.0.0.1:9001";
/// The same API on a Unix socket (`IGNITION_RUNTIME_API_SOCKET`), which Ignition's own runtimes
/// use: a VM restored from a snapshot runs the kernel's Unix-socket path for the first time
/// instead of TCP/IP over loopback, a fraction of the code for an emulated CPU to translate.
pub(crate) const RUNTIME_API_SOCKET: &str = "/var/runtime/runtime-api.sock";
const PREFIX: &str = "/2018-06-01/runtime";
/// Error bodies are small JSON documents; more than this is refused.
const MAX_ERROR_BODY: usize = 256 * 1024;

/// One invocation waiting for, or handed to, the runtime.
#[derive(Debug, Clone)]
pub(crate) struct Invocation {
    pub(crate) request_id: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) deadline_unix_ms: u64,
    pub(crate) function_arn: String,
    pub(crate) vm_id: String,
    /// A warm-up: the runtime should answer without calling the handler.
    pub(crate) warmup: bool,
    /// The caller's client context (JSON), as `Lambda-Runtime-Client-Context`.
    pub(crate) client_context: Option<String>,
}

/// How the runtime answered.
#[derive(Debug)]
pub(crate) enum Answer {
    Response(Vec<u8>),
    Error(ErrorBody),
    InitError(ErrorBody),
    RuntimeExited(String),
    /// No answer within the invocation's timeout.
    TimedOut,
}

#[derive(Default)]
struct State {
    next: Option<Invocation>,
    in_flight: Option<String>,
    answer: Option<Answer>,
    /// Set once the runtime reported an init error or exited; later invocations fail at once.
    dead: Option<String>,
    /// The runtime's own report of its failed initialization, if it made one.
    init_failure: Option<ErrorBody>,
    /// The runtime has asked for work at least once: its initialization is over.
    initialized: bool,
}

/// Hands invocations to the runtime and answers back to the session.
#[derive(Default)]
pub(crate) struct Broker {
    state: Mutex<State>,
    changed: Condvar,
}

impl Broker {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a handler thread panicked mid-update; the state is still a set
        // of plain options, so carrying on is sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `inv` to the runtime and waits for its answer, at most `limit`. A runtime that
    /// does not answer in time is left mid-call: later invocations fail at once (the host does
    /// not use such a VM again).
    pub(crate) fn invoke(&self, inv: Invocation, limit: Duration) -> Answer {
        let deadline = Instant::now().checked_add(limit);
        let mut st = self.lock();
        if let Some(body) = &st.init_failure {
            return Answer::InitError(body.clone());
        }
        if let Some(why) = &st.dead {
            return Answer::RuntimeExited(why.clone());
        }
        st.answer = None;
        st.next = Some(inv);
        self.changed.notify_all();
        loop {
            if let Some(answer) = st.answer.take() {
                st.next = None;
                st.in_flight = None;
                return answer;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                st.next = None;
                st.in_flight = None;
                st.dead = Some("the runtime was still running an invocation that timed out".into());
                return Answer::TimedOut;
            }
            st = match self.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Waits until the runtime finished initializing (asked for its first event) or failed.
    pub(crate) fn wait_initialized(&self) {
        let mut st = self.lock();
        while !st.initialized && st.dead.is_none() {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn next(&self) -> Invocation {
        let mut st = self.lock();
        if !st.initialized {
            st.initialized = true;
            self.changed.notify_all();
        }
        loop {
            if let Some(inv) = st.next.take() {
                st.in_flight = Some(inv.request_id.clone());
                return inv;
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn answer(&self, request_id: &str, answer: Answer) -> bool {
        let mut st = self.lock();
        if st.in_flight.as_deref() != Some(request_id) || st.answer.is_some() {
            return false;
        }
        st.answer = Some(answer);
        self.changed.notify_all();
        true
    }

    pub(crate) fn init_error(&self, body: ErrorBody) {
        let mut st = self.lock();
        st.dead = Some(format!("{}: {}", body.error_type, body.error_message));
        st.init_failure = Some(body.clone());
        if st.answer.is_none() {
            st.answer = Some(Answer::InitError(body));
        }
        self.changed.notify_all();
    }

    /// Called by the reaper when the runtime process ends.
    pub(crate) fn runtime_exited(&self, why: String) {
        let mut st = self.lock();
        if st.dead.is_none() {
            st.dead = Some(why.clone());
        }
        if st.answer.is_none() && (st.next.is_some() || st.in_flight.is_some()) {
            st.answer = Some(Answer::RuntimeExited(why));
        }
        self.changed.notify_all();
    }
}

/// Starts the Runtime API server on its own threads.
pub(crate) fn serve(broker: Arc<Broker>) -> Result<(), String> {
    let tcp = Server::http(RUNTIME_API_ADDR).map_err(|e| format!("runtime API: {e}"))?;
    let socket = Path::new(RUNTIME_API_SOCKET);
    // A socket left by an earlier agent would make the bind fail.
    let _ = std::fs::remove_file(socket);
    let unix = Server::http_unix(socket)
        .map_err(|e| format!("runtime API on {RUNTIME_API_SOCKET}: {e}"))?;
    // The runtime runs as another user.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("chmod {RUNTIME_API_SOCKET}: {e}"))?;
    // /next blocks until there is work; every request gets a thread of its own so that a
    // runtime polling /next never stalls its own /response.
    let handlers = Handlers::new(move |req| handle(&broker, req));
    for server in [tcp, unix] {
        let handlers = Arc::clone(&handlers);
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                handlers.dispatch(req);
            }
        });
    }
    Ok(())
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn json_response(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut resp = Response::from_data(body.into_bytes()).with_status_code(status);
    if let Some(h) = header("Content-Type", "application/json") {
        resp.add_header(h);
    }
    resp
}

fn error_response(
    status: u16,
    error_type: &str,
    message: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": message });
    json_response(status, body.to_string())
}

/// Reads at most `max` bytes of body; `None` if the runtime sent more.
fn read_body(req: &mut Request, max: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    req.as_reader().take(limit).read_to_end(&mut body).ok()?;
    (body.len() <= max).then_some(body)
}

/// Parses a runtime's error document leniently: runtimes differ in what they fill in.
fn parse_error(body: &[u8], header_type: Option<String>) -> ErrorBody {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    // Python's runtimes name the frames `stackTrace`, Node.js's `trace`.
    let stack_trace = match doc.get("stackTrace").or_else(|| doc.get("trace")) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => s.lines().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    ErrorBody {
        error_type: text("errorType")
            .or(header_type)
            .unwrap_or_else(|| "Unhandled".to_owned()),
        error_message: text("errorMessage").unwrap_or_default(),
        stack_trace,
    }
}

fn handle(broker: &Broker, mut req: Request) {
    let url = req.url().to_owned();
    let path = url.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let method = req.method().clone();
    let error_type_header = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Lambda-Runtime-Function-Error-Type"))
        .map(|h| h.value.as_str().to_owned());

    let resp = match (method, rest) {
        (Method::Get, "/invocation/next") => {
            let inv = broker.next();
            let warmup = inv.warmup;
            let mut resp = Response::from_data(inv.payload).with_status_code(200);
            if warmup {
                if let Some(h) = header("Ignition-Warmup", "1") {
                    resp.add_header(h);
                }
            }
            if let Some(h) = inv
                .client_context
                .as_deref()
                .and_then(|c| header("Lambda-Runtime-Client-Context", c))
            {
                resp.add_header(h);
            }
            for (k, v) in [
                ("Lambda-Runtime-Aws-Request-Id", inv.request_id.clone()),
                (
                    "Lambda-Runtime-Deadline-Ms",
                    inv.deadline_unix_ms.to_string(),
                ),
                ("Lambda-Runtime-Invoked-Function-Arn", inv.function_arn),
                (
                    "Lambda-Runtime-Trace-Id",
                    format!("Root=1-{}", inv.request_id),
                ),
                ("Content-Type", "application/json".to_owned()),
                ("Ignition-Vm-Id", inv.vm_id),
            ] {
                if let Some(h) = header(k, &v) {
                    resp.add_header(h);
                }
            }
            let _ = req.respond(resp);
            return;
        }
        (Method::Post, "/init/error") => {
            let body = read_body(&mut req, MAX_ERROR_BODY).unwrap_or_default();
            broker.init_error(parse_error(&body, error_type_header));
            json_response(202, r#"{"status":"OK"}"#.to_owned())
        }
        (Method::Post, rest) => {
            let Some(tail) = rest.strip_prefix("/invocation/") else {
                let _ = req.respond(error_response(404, "NotFound", "unknown path"));
                return;
            };
            let (id, kind) = tail.rsplit_once('/').unwrap_or((tail, ""));
            let answer = match kind {
                "response" => match read_body(&mut req, MAX_RESULT_BYTES) {
                    Some(body) => Answer::Response(body),
                    None => {
                        let err = ErrorBody {
                            error_type: "Function.ResponseSizeTooLarge".to_owned(),
                            error_message: format!(
                                "Response payload size exceeded maximum allowed payload size ({MAX_RESULT_BYTES} bytes)."
                            ),
                            stack_trace: Vec::new(),
                        };
                        broker.answer(id, Answer::Error(err));
                        let _ = req.respond(error_response(
                            413,
                            "RequestEntityTooLarge",
                            "response too large",
                        ));
                        return;
                    }
                },
                "error" => {
                    let body = read_body(&mut req, MAX_ERROR_BODY).unwrap_or_default();
                    Answer::Error(parse_error(&body, error_type_header))
                }
                _ => {
                    let _ = req.respond(error_response(404, "NotFound", "unknown path"));
                    return;
                }
            };
            if broker.answer(id, answer) {
                json_response(202, r#"{"status":"OK"}"#.to_owned())
            } else {
                error_response(
                    400,
                    "InvalidRequestID",
                    "no invocation with this id is in flight",
                )
            }
        }
        _ => error_response(404, "NotFound", "unknown path"),
    };
    let _ = req.respond(resp);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(id: &str) -> Invocation {
        Invocation {
            request_id: id.to_owned(),
            payload: b"{}".to_vec(),
            deadline_unix_ms: 0,
            function_arn: String::new(),
            vm_id: String::new(),
            warmup: false,
            client_context: None,
        }
    }

    /// A runtime that takes each invocation and answers after `delay` (or never, if `None`).
    fn runtime(broker: &Arc<Broker>, delay: Option<Duration>) -> std::thread::JoinHandle<()> {
        let broker = Arc::clone(broker);
        std::thread::spawn(move || {
            let inv = broker.next();
            if let Some(d) = delay {
                std::thread::sleep(d);
                broker.answer(&inv.request_id, Answer::Response(b"\"late\"".to_vec()));
            }
        })
    }

    #[test]
    fn an_answer_within_the_limit_is_returned() {
        let broker = Arc::new(Broker::default());
        let rt = runtime(&broker, Some(Duration::from_millis(10)));
        let answer = broker.invoke(invocation("r1"), Duration::from_secs(30));
        assert!(matches!(answer, Answer::Response(b) if b == b"\"late\""));
        rt.join().unwrap();
    }

    #[test]
    fn a_runtime_past_the_limit_times_out_and_its_late_answer_is_refused() {
        let broker = Arc::new(Broker::default());
        let rt = runtime(&broker, Some(Duration::from_millis(400)));
        let t = Instant::now();
        let answer = broker.invoke(invocation("r1"), Duration::from_millis(100));
        assert!(matches!(answer, Answer::TimedOut), "{answer:?}");
        assert!(t.elapsed() >= Duration::from_millis(100));
        rt.join().unwrap();
        // The runtime answered after the timeout: nothing is waiting for that answer.
        assert!(broker.lock().answer.is_none());
        // The runtime was left mid-call, so nothing more is handed to it.
        let next = broker.invoke(invocation("r2"), Duration::from_secs(30));
        assert!(matches!(next, Answer::RuntimeExited(_)), "{next:?}");
    }

    #[test]
    fn a_runtime_that_never_takes_the_invocation_times_out_too() {
        let broker = Arc::new(Broker::default());
        let answer = broker.invoke(invocation("r1"), Duration::from_millis(50));
        assert!(matches!(answer, Answer::TimedOut), "{answer:?}");
        assert!(broker.lock().next.is_none(), "the invocation is withdrawn");
    }
}
