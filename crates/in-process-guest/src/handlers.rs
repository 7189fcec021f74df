//! The in-process guest's "functions": closures keyed by the handler string a function is
//! deployed with, and the built-in ones tests deploy by name.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ignition_proto::{ErrorBody, FunctionSpec, Outcome};

/// One invocation as a handler sees it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The function loaded in the VM.
    pub function: Arc<FunctionSpec>,
    /// The request id.
    pub request_id: String,
    /// The event.
    pub payload: Vec<u8>,
    /// The VM's id.
    pub vm_id: String,
    /// The VM's memory, MiB.
    pub memory_mib: u32,
    /// Whether the VM was restored from a snapshot (rather than booted).
    pub restored: bool,
    /// Invocations this VM has run, this one included (more than 1 only in a reused VM).
    pub served: u64,
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The JSON result, or the error (`errorType`, `errorMessage`).
    pub result: Result<Vec<u8>, (String, String)>,
    /// What the handler "logged".
    pub logs: Vec<u8>,
}

impl Reply {
    /// A JSON result.
    pub fn json(v: &serde_json::Value) -> Self {
        Self {
            result: Ok(serde_json::to_vec(v).unwrap_or_default()),
            logs: Vec::new(),
        }
    }

    /// A function error.
    pub fn error(error_type: &str, message: &str) -> Self {
        Self {
            result: Err((error_type.to_owned(), message.to_owned())),
            logs: Vec::new(),
        }
    }

    /// The same reply with `line` logged.
    pub fn logged(mut self, line: &str) -> Self {
        self.logs.extend_from_slice(line.as_bytes());
        self.logs.push(b'\n');
        self
    }

    pub(crate) fn outcome(&self) -> Outcome {
        match &self.result {
            Ok(body) => Outcome::Success(body.clone()),
            Err((error_type, error_message)) => Outcome::FunctionError(ErrorBody {
                error_type: error_type.clone(),
                error_message: error_message.clone(),
                stack_trace: Vec::new(),
            }),
        }
    }
}

/// A handler: an async closure from the call to the reply.
pub type Handler = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// The handlers guests know, by handler string.
#[derive(Clone, Default)]
pub struct Handlers(HashMap<String, Handler>);

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        f.debug_tuple("Handlers").field(&names).finish()
    }
}

fn payload_json(call: &Call) -> serde_json::Value {
    serde_json::from_slice(&call.payload).unwrap_or(serde_json::Value::Null)
}

impl Handlers {
    /// The built-in handlers (their strings are valid Python handler names, so the API accepts
    /// functions deployed with them):
    /// - `echo.handler`: returns the event; logs `echo REQUEST_ID`.
    /// - `sleep.handler`: sleeps the event's `ms` (default 100), returns `{"slept_ms": N}`.
    /// - `fail.handler`: raises `ValueError: boom`.
    /// - `vm.handler`: returns what the guest knows of itself: `vm_id`, `restored`, `served`,
    ///   `memory_mib`, `function`, `version`, and the environment.
    pub fn builtin() -> Self {
        let mut h = Self::default();
        h.insert(
            "echo.handler",
            Arc::new(|call: Call| {
                Box::pin(async move {
                    Reply::json(&payload_json(&call)).logged(&format!("echo {}", call.request_id))
                })
            }),
        );
        h.insert(
            "sleep.handler",
            Arc::new(|call: Call| {
                Box::pin(async move {
                    let ms = payload_json(&call)
                        .get("ms")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(100);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Reply::json(&serde_json::json!({ "slept_ms": ms }))
                })
            }),
        );
        h.insert(
            "fail.handler",
            Arc::new(|_call: Call| {
                Box::pin(async move { Reply::error("ValueError", "boom").logged("about to fail") })
            }),
        );
        h.insert(
            "vm.handler",
            Arc::new(|call: Call| {
                Box::pin(async move {
                    let env: serde_json::Map<String, serde_json::Value> = call
                        .function
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect();
                    Reply::json(&serde_json::json!({
                        "vm_id": call.vm_id,
                        "restored": call.restored,
                        "served": call.served,
                        "memory_mib": call.memory_mib,
                        "function": call.function.display_name,
                        "version": call.function.version,
                        "env": env,
                    }))
                })
            }),
        );
        h
    }

    /// Adds or replaces a handler.
    pub fn insert(&mut self, name: &str, f: Handler) {
        self.0.insert(name.to_owned(), f);
    }

    pub(crate) fn get(&self, name: &str) -> Option<Handler> {
        self.0.get(name).cloned()
    }
}
