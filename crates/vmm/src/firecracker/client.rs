//! A client for Firecracker's API: HTTP/1.1 over its Unix socket, one connection per call,
//! every call under a deadline, replies bounded (Firecracker is trusted, but a wedged VMM must
//! cost a timeout, not a hang).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::api::Call;
use crate::VmmError;

/// Replies beyond this are refused.
const MAX_REPLY: usize = 64 * 1024;

/// Talks to one Firecracker process.
#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    socket: PathBuf,
    limit: Duration,
}

fn control(what: impl std::fmt::Display) -> VmmError {
    VmmError::Control(what.to_string())
}

impl ApiClient {
    pub(crate) fn new(socket: &Path, limit: Duration) -> Self {
        Self {
            socket: socket.to_path_buf(),
            limit,
        }
    }

    /// Makes `call`; an answer other than 2xx is an error carrying Firecracker's
    /// `fault_message`.
    pub(crate) async fn call(&self, call: &Call) -> Result<serde_json::Value, VmmError> {
        tokio::time::timeout(self.limit, self.call_inner(call))
            .await
            .map_err(|_| {
                control(format!(
                    "{} {}: no answer within {:?}",
                    call.method, call.path, self.limit
                ))
            })?
    }

    async fn call_inner(&self, call: &Call) -> Result<serde_json::Value, VmmError> {
        let what = format!("{} {}", call.method, call.path);
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(VmmError::io(format!("connect {}", self.socket.display())))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| control(format!("{what}: {e}")))?;
        let conn = tokio::spawn(conn);
        let body = if call.body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(call.body.to_string())
        };
        let request = hyper::Request::builder()
            .method(call.method)
            .uri(call.path.as_str())
            .header("host", "localhost")
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| control(format!("{what}: {e}")))?;
        let reply = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| control(format!("{what}: {e}")))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| control(format!("{what}: reply: {e}")))?
                .to_bytes();
            let value: serde_json::Value = if bytes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|e| control(format!("{what}: reply is not JSON: {e}")))?
            };
            if status.is_success() {
                Ok(value)
            } else {
                let fault = value
                    .get("fault_message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("no fault_message");
                Err(control(format!("{what}: {status}: {fault}")))
            }
        }
        .await;
        conn.abort();
        reply
    }
}

#[cfg(test)]
mod tests {
    //! The client against a stand-in API server on a Unix socket: these test the HTTP client,
    //! not a VM.

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    async fn serve_once(listener: UnixListener, reply: &'static str) -> String {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head, then the body Content-Length says.
        loop {
            let n = s.read(&mut buf).await.unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).into_owned();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if req.len() >= head_end + 4 + len {
                    break;
                }
            }
        }
        s.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8(req).unwrap()
    }

    #[tokio::test]
    async fn client_sends_json_and_reads_firecracker_faults_from_a_stand_in_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let client = ApiClient::new(&sock, Duration::from_secs(2));
        let call = Call {
            method: "PUT",
            path: "/machine-config".into(),
            body: serde_json::json!({ "vcpu_count": 1, "mem_size_mib": 128 }),
        };

        let server = tokio::spawn(serve_once(
            UnixListener::bind(&sock).unwrap(),
            "HTTP/1.1 204 No Content\r\n\r\n",
        ));
        client.call(&call).await.unwrap();
        let req = server.await.unwrap();
        assert!(req.starts_with("PUT /machine-config HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("content-type: application/json"), "{req}");
        assert!(
            req.ends_with(r#"{"mem_size_mib":128,"vcpu_count":1}"#),
            "{req}"
        );

        std::fs::remove_file(&sock).unwrap();
        let body = r#"{"fault_message":"The vCPU number is invalid!"}"#;
        let reply: &'static str = Box::leak(
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let server = tokio::spawn(serve_once(UnixListener::bind(&sock).unwrap(), reply));
        let err = client.call(&call).await.unwrap_err().to_string();
        server.await.unwrap();
        assert!(
            err.contains("400 Bad Request: The vCPU number is invalid!"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_silent_api_costs_a_timeout_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let _hold = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let client = ApiClient::new(&sock, Duration::from_millis(200));
        let err = client
            .call(&super::super::api::set_state(true))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no answer within"), "{err}");
    }
}
