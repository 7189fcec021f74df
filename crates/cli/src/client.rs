//! The HTTP client the `fn` commands use.

use std::time::Duration;

use anyhow::{Context, Result};

/// Where a server listens by default, and where the CLI looks for one.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// A server's API.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

impl Client {
    pub(crate) fn new(global: &crate::GlobalArgs) -> Result<Self> {
        let base = global
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}"));
        let mut builder = reqwest::blocking::Client::builder()
            // Invocations boot a VM and may run for the function's whole timeout (up to 900 s).
            .timeout(Duration::from_secs(960))
            .default_headers(auth_headers()?);
        if let Some(ca) = ca_certificate(global)? {
            builder = builder.add_root_certificate(ca);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// Sends `req` and decodes its JSON answer; a refusal is an error naming `what` and the
    /// server's reason.
    pub(crate) fn json(
        &self,
        req: reqwest::blocking::RequestBuilder,
        what: &str,
    ) -> Result<serde_json::Value> {
        let resp = req.send().context("contacting the server")?;
        let status = resp.status();
        let bytes = resp.bytes().context("reading the answer")?;
        if !status.is_success() {
            anyhow::bail!("{what} failed: {}", api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).with_context(|| format!("decoding the {what} answer"))
    }
}

/// The CA certificate `--ca-cert` (or `IGNITION_CA_CERT`) names, to trust besides the system's.
pub(crate) fn ca_certificate(global: &crate::GlobalArgs) -> Result<Option<reqwest::Certificate>> {
    let Some(path) = &global.ca_cert else {
        return Ok(None);
    };
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let cert = reqwest::Certificate::from_pem(&pem)
        .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
    Ok(Some(cert))
}

/// `Authorization: Bearer ACCESS_KEY_ID:SECRET` from `IGNITION_TOKEN` (printed by
/// `ignition key create`), if set; a server in `--dev` mode needs none.
pub(crate) fn auth_headers() -> Result<reqwest::header::HeaderMap> {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(token) = std::env::var("IGNITION_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("IGNITION_TOKEN is not a valid header value")?;
        v.set_sensitive(true);
        h.insert(reqwest::header::AUTHORIZATION, v);
    }
    Ok(h)
}

/// Turns an API error response into a one-line message.
pub(crate) fn api_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (
        doc.get("errorType").and_then(|v| v.as_str()),
        doc.get("errorMessage").and_then(|v| v.as_str()),
    ) {
        (Some(t), Some(m)) => format!("{t}: {m} (HTTP {status})"),
        _ => format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
    }
}
