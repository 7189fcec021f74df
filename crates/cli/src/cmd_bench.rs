//! `ignition bench`: cold-start latency through the public API, every start mode in one run.
//!
//! - `floor`: the VMM's own start-up with no guest (`POST /v1/floor`), the floor of any cold
//!   start on this host;
//! - `boot`: a VM booted per invocation (the baseline);
//! - `restore`: a VM restored from the function's snapshot per invocation, pool bypassed;
//! - `pool`: a slot already restored and waiting (the benchmark waits for one before each
//!   request at concurrency 1).
//!
//! Then `restore` and `pool` again with `--concurrency` clients sending `--invocations` in all.
//! Latencies are the client's: request sent to response read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::bench_stats::{summarize, Summary};

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The function to invoke (deployed already).
    #[arg(long)]
    function: String,
    /// Clients at once in the loaded runs.
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Invocations in each loaded run.
    #[arg(long, default_value_t = 2000)]
    invocations: usize,
    /// Samples of each mode at concurrency 1 (`boot` takes at most 5).
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Warm slots kept while measuring idle slot memory.
    #[arg(long, default_value_t = 8)]
    memory_slots: usize,
    /// Measure only the warm-pool start at concurrency 1 (`--samples` each) of `--function` and
    /// then of this function, in this one run, with the node's resident memory after each: with
    /// the same code padded in one of them, the invoke cost against the code's size.
    #[arg(long, value_name = "FUNCTION")]
    compare: Option<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency distributions here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

struct Bench {
    base: String,
    function: String,
    http: reqwest::Client,
}

/// One invocation's outcome as the client saw it.
struct Sample {
    ms: f64,
    ok: bool,
}

impl Bench {
    async fn invoke(&self, mode: &str) -> Sample {
        let t = Instant::now();
        let r = self
            .http
            .post(format!(
                "{}/2015-03-31/functions/{}/invocations",
                self.base, self.function
            ))
            .header("x-ignition-start", mode)
            .body("{\"bench\":true}")
            .send()
            .await;
        let ok = match r {
            Ok(resp) => {
                let good = resp.status().is_success()
                    && resp.headers().get("x-amz-function-error").is_none();
                let started = resp
                    .headers()
                    .get("x-ignition-start")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = resp.bytes().await;
                good && body.is_ok() && started.as_deref() == Some(mode)
            }
            Err(_) => false,
        };
        Sample {
            ms: t.elapsed().as_secs_f64() * 1000.0,
            ok,
        }
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            bail!("GET {path}: {}", crate::client::api_error(status, &body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    async fn set_min_ready(&self, n: usize) -> Result<()> {
        let r = self
            .http
            .put(format!("{}/v1/functions/{}/pool", self.base, self.function))
            .json(&json!({ "min_ready": n }))
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            bail!(
                "setting the pool: {}",
                crate::client::api_error(status, &body)
            );
        }
        Ok(())
    }

    async fn pool(&self) -> Result<Value> {
        self.get_json(&format!("/v1/functions/{}/pool", self.function))
            .await
    }

    /// Waits until `n` slots are ready (or `limit` passes).
    async fn wait_ready(&self, n: usize, limit: Duration) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let p = self.pool().await?;
            let ready = p["pool"]["ready"].as_u64().unwrap_or(0);
            if ready >= n as u64 || Instant::now() > deadline {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn floor(&self) -> Result<f64> {
        let r = self
            .http
            .post(format!("{}/v1/floor", self.base))
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            bail!("floor probe: {}", crate::client::api_error(status, &body));
        }
        let v: Value = serde_json::from_slice(&body)?;
        v["floor_ms"]
            .as_f64()
            .context("floor probe answered without floor_ms")
    }
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_owned());
    pb
}

/// Raises the open-file limit to its hard limit: a thousand clients need a thousand sockets.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

pub(crate) fn run(args: BenchArgs, global: &crate::GlobalArgs) -> Result<ExitCode> {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ca = crate::client::ca_certificate(global)?;
    rt.block_on(bench(args, global.url.clone(), ca))
}

struct Loaded {
    summary: Summary,
    per_second: f64,
    errors: u64,
    samples: Vec<f64>,
}

async fn loaded(b: &Arc<Bench>, mode: &'static str, concurrency: usize, total: usize) -> Loaded {
    let pb = bar(total, &format!("{mode} x{concurrency}"));
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(total).max(1) {
        let (b, next, errors, pb) = (
            Arc::clone(b),
            Arc::clone(&next),
            Arc::clone(&errors),
            pb.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total as u64 {
                let s = b.invoke(mode).await;
                if !s.ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                mine.push(s.ms);
                pb.inc(1);
            }
            mine
        }));
    }
    let mut samples = Vec::with_capacity(total);
    for t in tasks {
        samples.extend(t.await.unwrap_or_default());
    }
    let secs = started.elapsed().as_secs_f64();
    pb.finish_with_message(format!("{:.1}/s", samples.len() as f64 / secs));
    Loaded {
        summary: summarize(&samples),
        per_second: samples.len() as f64 / secs,
        errors: errors.load(Ordering::Relaxed),
        samples,
    }
}

async fn sequential(
    b: &Bench,
    mode: &str,
    n: usize,
    before_each: Option<usize>,
) -> Result<(Vec<f64>, u64)> {
    let pb = bar(n, mode);
    let mut v = Vec::with_capacity(n);
    let mut errors = 0;
    for _ in 0..n {
        if let Some(k) = before_each {
            b.wait_ready(k, Duration::from_secs(120)).await?;
        }
        let s = b.invoke(mode).await;
        if !s.ok {
            errors += 1;
        }
        v.push(s.ms);
        pb.inc(1);
    }
    pb.finish();
    Ok((v, errors))
}

fn host_info() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({ "cpus": cpus, "kernel": kernel.trim(), "cpu_model": model })
}

async fn bench(
    args: BenchArgs,
    url: Option<String>,
    ca: Option<reqwest::Certificate>,
) -> Result<ExitCode> {
    let base = url
        .unwrap_or_else(|| format!("http://{}", crate::client::DEFAULT_LISTEN))
        .trim_end_matches('/')
        .to_owned();
    let mut http = reqwest::Client::builder();
    if let Some(ca) = ca {
        http = http.add_root_certificate(ca);
    }
    let http = http
        .default_headers(crate::client::auth_headers()?)
        .timeout(Duration::from_secs(1800))
        .pool_max_idle_per_host(args.concurrency.max(1))
        .build()?;
    let b = Arc::new(Bench {
        base,
        function: args.function.clone(),
        http,
    });
    b.get_json(&format!("/v1/functions/{}", b.function))
        .await
        .with_context(|| format!("function {} must be deployed first", b.function))?;
    if let Some(other) = &args.compare {
        return compare(&b, other, &args).await;
    }
    let n = args.samples.max(1);

    // The pool stays empty while the cold modes run.
    b.set_min_ready(0).await?;
    let mut floor = Vec::new();
    let pb = bar(n, "floor");
    for _ in 0..n {
        floor.push(b.floor().await?);
        pb.inc(1);
    }
    pb.finish();
    let (boot, e_boot) = sequential(&b, "boot", n.min(5), None).await?;
    // The first restore builds the snapshot if there is none; it is not a sample.
    let _ = b.invoke("restore").await;
    let (restore, e_restore) = sequential(&b, "restore", n, None).await?;
    b.set_min_ready(1).await?;
    let (pool, e_pool) = sequential(&b, "pool", n, Some(1)).await?;

    // Memory of idle warm slots.
    b.set_min_ready(args.memory_slots).await?;
    let p = b
        .wait_ready(args.memory_slots, Duration::from_secs(300))
        .await?;
    // Measured while all of them are up. What the pool charged each when it was made counts the
    // pages it now shares with the slots made after it as its own.
    let floats = |key: &str| -> Vec<f64> {
        p["pool"][key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let pss = floats("slot_pss_mib");
    let charged = floats("slot_charged_mib");
    let pss_mean = if pss.is_empty() {
        f64::NAN
    } else {
        pss.iter().sum::<f64>() / pss.len() as f64
    };
    b.set_min_ready(0).await?;

    let load_restore = loaded(&b, "restore", args.concurrency, args.invocations).await;
    let load_pool = loaded(&b, "pool", args.concurrency, args.invocations).await;
    b.set_min_ready(0).await?;

    let modes = [
        ("floor", summarize(&floor)),
        ("boot", summarize(&boot)),
        ("restore", summarize(&restore)),
        ("pool", summarize(&pool)),
    ];
    let errors = e_boot + e_restore + e_pool + load_restore.errors + load_pool.errors;
    let loaded_json = |l: &Loaded| {
        json!({
            "concurrency": args.concurrency, "n": l.summary.n, "p50_ms": l.summary.p50_ms,
            "p99_ms": l.summary.p99_ms, "per_second": l.per_second, "errors": l.errors,
        })
    };
    let (f50, r50, p50, b50) = (
        modes[0].1.p50_ms,
        modes[2].1.p50_ms,
        modes[3].1.p50_ms,
        modes[1].1.p50_ms,
    );
    let report = json!({
        "function": args.function,
        "modes": modes.iter().map(|(k, s)| (k.to_string(), serde_json::to_value(s).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
        "loaded": { "restore": loaded_json(&load_restore), "pool": loaded_json(&load_pool) },
        "ratios": {
            "restore_p50_over_floor_p50": r50 / f50,
            "pool_p50_over_floor_p50": p50 / f50,
            "boot_p50_over_restore_p50": b50 / r50,
            "pool_per_second_per_core": load_pool.per_second / host_info()["cpus"].as_f64().unwrap_or(1.0),
        },
        "memory": { "idle_slots": pss.len(), "slot_pss_mib_mean": pss_mean, "slot_pss_mib": pss, "slot_charged_mib": charged },
        "errors": errors,
        "host": host_info(),
    });

    println!(
        "\n{:<10} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "mode", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (k, s) in &modes {
        println!(
            "{k:<10} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            s.n, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
        );
    }
    println!(
        "\n{:<10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>7}",
        "loaded", "conc", "n", "p50 ms", "p99 ms", "per s", "errors"
    );
    for (k, l) in [("restore", &load_restore), ("pool", &load_pool)] {
        println!(
            "{k:<10} {:>6} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            args.concurrency,
            l.summary.n,
            l.summary.p50_ms,
            l.summary.p99_ms,
            l.per_second,
            l.errors
        );
    }
    println!(
        "\nrestore/floor {:.2}x   pool/floor {:.2}x   boot/restore {:.1}x   idle slot PSS {:.1} MiB (n={})   errors {errors}",
        r50 / f50, p50 / f50, b50 / r50, pss_mean, pss.len()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let series = vec![
            ("floor".to_owned(), floor),
            ("boot".to_owned(), boot),
            ("restore".to_owned(), restore),
            ("pool".to_owned(), pool),
            (
                format!("restore x{}", args.concurrency),
                load_restore.samples,
            ),
            (format!("pool x{}", args.concurrency), load_pool.samples),
        ];
        let svg = crate::bench_plot::cdf_svg(
            &format!("Ignition cold starts: {}", args.function),
            &series,
        );
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `--compare`: warm-pool invocations of two functions, one after the other, and the node's
/// resident memory after each (`/v1/stats`, an operator's).
async fn compare(b: &Bench, other: &str, args: &BenchArgs) -> Result<ExitCode> {
    let c = Bench {
        base: b.base.clone(),
        function: other.to_owned(),
        http: b.http.clone(),
    };
    c.get_json(&format!("/v1/functions/{other}"))
        .await
        .with_context(|| format!("function {other} must be deployed first"))?;
    let n = args.samples.max(1);
    let mut rows = Vec::new();
    for x in [b, &c] {
        x.set_min_ready(1).await?;
        // The first slot waits for the function's snapshot; the first invocation is not a sample.
        x.wait_ready(1, Duration::from_secs(300)).await?;
        let _ = x.invoke("pool").await;
        let (v, errors) = sequential(x, "pool", n, Some(1)).await?;
        x.set_min_ready(0).await?;
        let stats = b.get_json("/v1/stats").await?;
        let rss = stats["process"]["rss_mib"].as_f64().unwrap_or(f64::NAN);
        rows.push((x.function.clone(), summarize(&v), errors, rss));
    }
    println!(
        "\n{:<24} {:>6} {:>9} {:>9} {:>9} {:>12} {:>7}",
        "pool, concurrency 1", "n", "p50 ms", "p90 ms", "p99 ms", "node RSS MiB", "errors"
    );
    for (f, s, e, rss) in &rows {
        println!(
            "{f:<24} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>12.1} {e:>7}",
            s.n, s.p50_ms, s.p90_ms, s.p99_ms, rss
        );
    }
    let ratio = rows[1].1.p50_ms / rows[0].1.p50_ms;
    let rss_delta = rows[1].3 - rows[0].3;
    println!(
        "\n{other} / {}: p50 {ratio:.2}x   node RSS {rss_delta:+.1} MiB",
        b.function
    );
    let errors: u64 = rows.iter().map(|r| r.2).sum();
    if let Some(path) = &args.json {
        let report = json!({
            "mode": "pool",
            "concurrency": 1,
            "functions": rows.iter().map(|(f, s, e, rss)| json!({
                "function": f, "summary": s, "errors": e, "node_rss_mib_after": rss,
            })).collect::<Vec<_>>(),
            "p50_ratio": ratio,
            "node_rss_mib_delta": rss_delta,
            "host": host_info(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
