//! `ignition fn ...`: deploy, invoke, list and remove functions on a server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Subcommand;
use serde_json::json;

use crate::client::{api_error, Client};

// Parsed once per process: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum FnCommand {
    /// Create or update a function.
    Deploy {
        /// The function's name: [A-Za-z0-9_-]{1,64}.
        name: String,
        /// python3.11, nodejs18.x or provided.al2023 (Lambda's names; python3, nodejs and provided
        /// for short).
        #[arg(long, required_unless_present_any = ["image", "image_archive"])]
        runtime: Option<String>,
        /// FILE.FUNC for Python and Node.js (e.g. app.handler); passed as _HANDLER to a provided
        /// bootstrap.
        #[arg(long, required_unless_present_any = ["image", "image_archive"])]
        handler: Option<String>,
        /// A directory, or a .zip / .tar.gz archive.
        #[arg(long, required_unless_present_any = ["image", "image_archive"])]
        code: Option<PathBuf>,
        /// A container image instead of code: `[REGISTRY/]REPOSITORY[:TAG|@DIGEST]`, pulled by
        /// the server (its ENTRYPOINT and CMD speak the Lambda Runtime API).
        #[arg(long, conflicts_with_all = ["runtime", "handler", "code", "layers", "image_archive"])]
        image: Option<String>,
        /// A container image from a file, for hosts without a registry: an OCI image layout in
        /// a tar (`skopeo copy ... oci-archive:FILE`) or `docker save` output. Uploaded to the
        /// server, then deployed as --image.
        #[arg(long, value_name = "FILE.tar", conflicts_with_all = ["runtime", "handler", "code", "layers"])]
        image_archive: Option<PathBuf>,
        /// With an image: replaces its ENTRYPOINT (repeat for each word).
        #[arg(long = "image-entry-point", value_name = "WORD")]
        image_entry_point: Vec<String>,
        /// With an image: replaces its CMD (repeat for each word).
        #[arg(long = "image-command", value_name = "WORD")]
        image_command: Vec<String>,
        /// With an image: replaces its WORKDIR.
        #[arg(long = "image-workdir", value_name = "DIR")]
        image_workdir: Option<String>,
        /// Memory of the function's microVM, MiB.
        #[arg(long, default_value_t = 128)]
        memory: u32,
        /// Seconds before the invocation is killed.
        #[arg(long, default_value_t = 3)]
        timeout: u32,
        /// Environment variable K=V (repeatable).
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Keep a VM for later invocations of this function (never another's) instead of a
        /// fresh VM each time.
        #[arg(long)]
        reuse: bool,
        /// Allow connections to `CIDR:PORT[-PORT][/tcp|/udp]` (repeatable). Without it the
        /// function has no egress at all.
        #[arg(long = "egress", value_parser = parse_egress)]
        egress: Vec<String>,
        /// A layer version's ARN (repeatable, in order, at most 5); without any, a function
        /// that exists keeps the layers it has.
        #[arg(long = "layer")]
        layers: Vec<String>,
    },
    /// Invoke a function and print its result.
    Invoke {
        /// The function.
        name: String,
        /// The event: JSON text, or @FILE to read it from a file (@- for stdin).
        #[arg(long)]
        data: Option<String>,
        /// Print the invocation's log tail on stderr.
        #[arg(long)]
        logs: bool,
    },
    /// Print a function's invocation logs (oldest first).
    Logs {
        /// The function.
        name: String,
        /// Keep printing new invocations' logs as they come.
        #[arg(long)]
        follow: bool,
        /// Only this invocation's log.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Give a function a URL (or change its URL's settings) and print it: plain HTTP reaches
    /// the function, with Lambda's payload format 2.0 event.
    Url {
        /// The function, or FUNCTION:ALIAS for an alias's URL.
        name: String,
        /// Who may call it: none (anyone) or iam (requests signed with a key of the
        /// function's tenant).
        #[arg(long, value_enum, default_value_t = UrlAuthArg::Iam)]
        auth: UrlAuthArg,
        /// An origin browsers may call it from, for CORS (repeatable; `*` for any).
        #[arg(long = "cors-origin", value_name = "ORIGIN")]
        cors_origins: Vec<String>,
    },
    /// List functions.
    Ls,
    /// Delete a function.
    Rm {
        /// The function.
        name: String,
    },
}

/// `fn url --auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum UrlAuthArg {
    /// Public.
    None,
    /// Signed requests of the function's tenant.
    Iam,
}

impl UrlAuthArg {
    fn lambda_name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Iam => "AWS_IAM",
        }
    }
}

/// Parses `K=V`.
pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not K=V"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Reads `--data`: inline JSON, `@FILE`, or `@-`.
pub(crate) fn read_data(data: Option<&str>) -> Result<Vec<u8>> {
    let bytes = match data {
        None => return Ok(b"{}".to_vec()),
        Some("@-") => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
            v
        }
        Some(s) if s.starts_with('@') => {
            std::fs::read(&s[1..]).with_context(|| format!("reading {}", &s[1..]))?
        }
        Some(s) => s.as_bytes().to_vec(),
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).context("--data is not valid JSON")?;
    Ok(bytes)
}

/// The archive to upload: a directory is packed (checked like any bundle) as tar.gz.
fn code_archive(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        let bundle = ignition_bundle::from_dir(path, ignition_bundle::Limits::default())
            .with_context(|| format!("packing {}", path.display()))?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bundle.tar())?;
        return Ok(gz.finish()?);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Uploads an image archive to the server (`PUT /v1/images`), streamed from the file; the
/// `ImageUri` that deploys it.
fn upload_image_archive(client: &Client, file: &std::path::Path) -> Result<String> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let resp = client
        .http()
        .put(client.url("/v1/images"))
        .header("content-type", "application/x-tar")
        .header("content-length", len)
        .body(reqwest::blocking::Body::sized(f, len))
        .send()
        .context("contacting the server")?;
    let status = resp.status();
    let bytes = resp.bytes()?;
    if !status.is_success() {
        bail!(
            "uploading {} failed: {}",
            file.display(),
            api_error(status, &bytes)
        );
    }
    let doc: serde_json::Value = serde_json::from_slice(&bytes).context("the server's answer")?;
    doc["ImageUri"]
        .as_str()
        .map(str::to_owned)
        .context("the server's answer has no ImageUri")
}

pub(crate) fn run(cmd: FnCommand, global: &crate::GlobalArgs) -> Result<ExitCode> {
    match cmd {
        FnCommand::Deploy {
            name,
            runtime,
            handler,
            code,
            image,
            image_archive,
            image_entry_point,
            image_command,
            image_workdir,
            memory,
            timeout,
            env,
            reuse,
            egress,
            layers,
        } => {
            let client = Client::new(global)?;
            let env: serde_json::Map<String, serde_json::Value> =
                env.into_iter().map(|(k, v)| (k, v.into())).collect();
            let mut body = json!({
                "memory_mib": memory,
                "timeout_s": timeout,
                "env": env,
                "reuse": reuse,
                "egress": egress,
            });
            let image = match (image, image_archive) {
                (Some(reference), _) => Some(reference),
                (None, Some(file)) => Some(upload_image_archive(&client, &file)?),
                (None, None) => None,
            };
            match (image, runtime, handler, code) {
                (Some(uri), ..) => {
                    body["image"] = json!(uri);
                    let mut config = serde_json::Map::new();
                    if !image_entry_point.is_empty() {
                        config.insert("EntryPoint".into(), json!(image_entry_point));
                    }
                    if !image_command.is_empty() {
                        config.insert("Command".into(), json!(image_command));
                    }
                    if let Some(w) = image_workdir {
                        config.insert("WorkingDirectory".into(), json!(w));
                    }
                    body["image_config"] = config.into();
                }
                (None, Some(runtime), Some(handler), Some(code)) => {
                    if !image_entry_point.is_empty()
                        || !image_command.is_empty()
                        || image_workdir.is_some()
                    {
                        bail!("--image-entry-point, --image-command and --image-workdir go with --image or --image-archive");
                    }
                    let archive = code_archive(&code)?;
                    body["runtime"] = json!(runtime);
                    body["handler"] = json!(handler);
                    body["code"] = json!(base64::engine::general_purpose::STANDARD.encode(archive));
                }
                _ => bail!("give --runtime, --handler and --code, or --image, or --image-archive"),
            }
            if !layers.is_empty() {
                body["layers"] = json!(layers);
            }
            let resp = client
                .http()
                .put(client.url(&format!("/v1/functions/{name}")))
                .json(&body)
                .send()
                .context("contacting the server")?;
            let status = resp.status();
            let bytes = resp.bytes()?;
            if !status.is_success() {
                bail!("deploy failed: {}", api_error(status, &bytes));
            }
            println!("{}", String::from_utf8_lossy(&bytes));
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Invoke { name, data, logs } => {
            let client = Client::new(global)?;
            let payload = read_data(data.as_deref())?;
            let mut req = client
                .http()
                .post(client.url(&format!("/2015-03-31/functions/{name}/invocations")))
                .header("content-type", "application/json")
                .body(payload);
            if logs {
                req = req.header("X-Amz-Log-Type", "Tail");
            }
            let resp = req.send().context("contacting the server")?;
            let status = resp.status();
            let function_error = resp.headers().get("X-Amz-Function-Error").is_some();
            let log_tail = resp.headers().get("X-Amz-Log-Result").and_then(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .ok()
            });
            let bytes = resp.bytes()?;
            if let Some(tail) = log_tail {
                eprint!("{}", String::from_utf8_lossy(&tail));
                let _ = std::io::stderr().flush();
            }
            if !status.is_success() {
                bail!("invoke failed: {}", api_error(status, &bytes));
            }
            if function_error {
                let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let t = doc
                    .get("errorType")
                    .and_then(|v| v.as_str())
                    .unwrap_or("Unhandled");
                let m = doc
                    .get("errorMessage")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                eprintln!("function error: {t}: {m}");
                return Ok(ExitCode::from(1));
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.write_all(b"\n")?;
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Logs {
            name,
            follow,
            request_id,
        } => {
            let client = Client::new(global)?;
            let mut since = 0i64;
            loop {
                let mut req = client
                    .http()
                    .get(client.url(&format!("/v1/functions/{name}/logs")))
                    .query(&[("since", since.to_string())]);
                if let Some(id) = &request_id {
                    req = req.query(&[("request_id", id)]);
                }
                let doc = client.json(req, "logs")?;
                let mut out = std::io::stdout().lock();
                for e in doc["logs"].as_array().into_iter().flatten() {
                    out.write_all(e["log"].as_str().unwrap_or_default().as_bytes())?;
                }
                out.flush()?;
                since = doc["next"].as_i64().unwrap_or(since);
                if !follow {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        FnCommand::Url {
            name,
            auth,
            cors_origins,
        } => {
            let client = Client::new(global)?;
            let (function, qualifier) = match name.split_once(':') {
                Some((f, q)) => (f.to_owned(), Some(q.to_owned())),
                None => (name.clone(), None),
            };
            let mut body = json!({ "AuthType": auth.lambda_name() });
            if !cors_origins.is_empty() {
                body["Cors"] = json!({ "AllowOrigins": cors_origins, "AllowMethods": ["*"] });
            }
            let path = format!("/2021-10-31/functions/{function}/url");
            let with_qualifier = |req: reqwest::blocking::RequestBuilder| match &qualifier {
                Some(q) => req.query(&[("Qualifier", q)]),
                None => req,
            };
            let resp = with_qualifier(client.http().post(client.url(&path)))
                .json(&body)
                .send()
                .context("contacting the server")?;
            // A URL that exists already gets the settings given.
            let resp = if resp.status() == reqwest::StatusCode::CONFLICT {
                with_qualifier(client.http().put(client.url(&path)))
                    .json(&body)
                    .send()
                    .context("contacting the server")?
            } else {
                resp
            };
            let status = resp.status();
            let bytes = resp.bytes()?;
            if !status.is_success() {
                bail!("url failed: {}", api_error(status, &bytes));
            }
            let doc: serde_json::Value =
                serde_json::from_slice(&bytes).context("the server's answer is not JSON")?;
            if global.output == crate::Output::Json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("{}", doc["FunctionUrl"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Ls => {
            let client = Client::new(global)?;
            let doc = client.json(client.http().get(client.url("/v1/functions")), "list")?;
            if global.output == crate::Output::Json {
                println!("{}", serde_json::to_string_pretty(&doc["functions"])?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<32} {:<9} {:<24} {:>6} {:>7}  URL",
                "NAME", "RUNTIME", "HANDLER", "MEMORY", "TIMEOUT"
            );
            for f in doc["functions"].as_array().into_iter().flatten() {
                // A container image's function: the image stands where runtime and handler do.
                let (runtime, handler) = match f["image"]["uri"].as_str() {
                    Some(uri) => ("image", uri),
                    None => (
                        f["runtime"].as_str().unwrap_or_default(),
                        f["handler"].as_str().unwrap_or_default(),
                    ),
                };
                println!(
                    "{:<32} {:<9} {:<24} {:>6} {:>7}  {}",
                    f["name"].as_str().unwrap_or_default(),
                    runtime,
                    handler,
                    f["memory_mib"],
                    f["timeout_s"],
                    f["url"].as_str().unwrap_or("-"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Rm { name } => {
            let client = Client::new(global)?;
            let resp = client
                .http()
                .delete(client.url(&format!("/v1/functions/{name}")))
                .send()
                .context("contacting the server")?;
            let status = resp.status();
            if !status.is_success() {
                let bytes = resp.bytes()?;
                bail!("rm failed: {}", api_error(status, &bytes));
            }
            println!("deleted {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Checks an `--egress` rule before anything is uploaded.
fn parse_egress(rule: &str) -> Result<String, String> {
    rule.parse::<ignition_net::EgressRule>()
        .map(|r| r.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_parse() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), String::new()));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn data_must_be_json() {
        assert_eq!(read_data(None).unwrap(), b"{}");
        assert_eq!(read_data(Some(r#"{"a":1}"#)).unwrap(), br#"{"a":1}"#);
        assert!(read_data(Some("{nope")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("e.json");
        std::fs::write(&f, "[1,2]").unwrap();
        assert_eq!(
            read_data(Some(&format!("@{}", f.display()))).unwrap(),
            b"[1,2]"
        );
        assert!(read_data(Some("@/nonexistent/file")).is_err());
    }

    #[test]
    fn cli_parses_the_documented_commands() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "ignition",
            "fn",
            "deploy",
            "hello",
            "--runtime",
            "python3",
            "--handler",
            "app.handler",
            "--code",
            "examples/hello-python",
            "--memory",
            "256",
            "--timeout",
            "5",
            "--env",
            "A=1",
            "--env",
            "B=2",
        ])
        .unwrap();
        match cli.command {
            crate::Command::Function(FnCommand::Deploy {
                name,
                memory,
                timeout,
                env,
                ..
            }) => {
                assert_eq!(name, "hello");
                assert_eq!((memory, timeout), (256, 5));
                assert_eq!(env.len(), 2);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(crate::Cli::try_parse_from(["ignition", "fn", "deploy", "x"]).is_err());
        assert!(crate::Cli::try_parse_from(["ignition", "server", "--accel", "xen"]).is_err());
        assert!(
            crate::Cli::try_parse_from(["ignition", "fn", "invoke", "x", "--data", "{}"]).is_ok()
        );
    }
}
