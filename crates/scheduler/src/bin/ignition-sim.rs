//! `ignition-sim`: the scheduling policies on a simulated cluster (see `ignition_scheduler::sim`).
//!
//! `ignition-sim --nodes 10000 --load 0.9 --json` prints
//! `{"central": {"p50_ms": .., "p99_ms": .., ...}, "random": {...}, "steal": {...},
//! "steal_only": {...}}`: `steal` is the policy the servers run (stealing, and arrivals at a
//! saturated node offered to the freest of `d` peers); `steal_only` is stealing alone.

use anyhow::{bail, Result};
use clap::Parser;
use ignition_scheduler::policy::StealPolicy;
use ignition_scheduler::sim::{simulate, Config, Policy, Report};
use serde_json::json;

/// Simulate central, random and work-stealing placement on one arrival stream.
#[derive(Debug, Parser)]
#[command(name = "ignition-sim", version)]
struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Offered load (fraction of capacity, below 1).
    #[arg(long, default_value_t = 0.9)]
    load: f64,
    /// Slots per node.
    #[arg(long, default_value_t = 2)]
    slots: usize,
    /// Mean service time, ms (exponential).
    #[arg(long, default_value_t = 100.0)]
    service_ms: f64,
    /// One-way network delay, ms.
    #[arg(long, default_value_t = 0.5)]
    net_ms: f64,
    /// Peers probed per attempt (d).
    #[arg(long, default_value_t = 2)]
    probes: usize,
    /// Invocations per node.
    #[arg(long, default_value_t = 50)]
    tasks_per_node: usize,
    /// An idle node's pause after a fruitless probe round, ms; it doubles with each further
    /// fruitless round, up to --max-backoff-doublings times (the server's defaults).
    #[arg(long, default_value_t = 20.0)]
    retry_ms: f64,
    /// Probe rounds for an arrival at a saturated node before it queues there.
    #[arg(long, default_value_t = StealPolicy::default().placement_rounds)]
    placement_rounds: u32,
    /// How many times an idle node's pause may double.
    #[arg(long, default_value_t = StealPolicy::default().max_backoff_doublings)]
    max_backoff_doublings: u32,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Loads to sweep (comma-separated) instead of --load; prints one JSON object per load.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<f64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn run(args: &Args, load: f64) -> Result<[(&'static str, Report); 4]> {
    if !(0.0..1.0).contains(&load) || load <= 0.0 {
        bail!("--load must be in (0, 1), got {load}");
    }
    if args.nodes == 0 || args.slots == 0 || args.service_ms <= 0.0 || args.net_ms < 0.0 {
        bail!("--nodes and --slots must be positive, --service-ms positive, --net-ms not negative");
    }
    let cfg = Config {
        nodes: args.nodes,
        slots: args.slots,
        load,
        service_ms: args.service_ms,
        net_ms: args.net_ms,
        tasks: args.nodes * args.tasks_per_node.max(1),
        retry_ms: args.retry_ms,
        seed: args.seed,
    };
    let ours = StealPolicy {
        probes: args.probes,
        share_on_arrival: true,
        placement_rounds: args.placement_rounds,
        max_backoff_doublings: args.max_backoff_doublings,
    };
    let stealing_only = StealPolicy {
        share_on_arrival: false,
        ..ours
    };
    Ok([
        ("central", simulate(&cfg, Policy::Central)),
        ("random", simulate(&cfg, Policy::Random)),
        ("steal", simulate(&cfg, Policy::Steal(ours))),
        ("steal_only", simulate(&cfg, Policy::Steal(stealing_only))),
    ])
}

fn main() -> Result<()> {
    use std::io::Write;
    let args = Args::parse();
    // Written, not printed: a closed pipe (`| head`) ends the program with an error, not a panic.
    let mut out = std::io::stdout().lock();
    let loads = if args.sweep.is_empty() {
        vec![args.load]
    } else {
        args.sweep.clone()
    };
    for load in loads {
        let reports = run(&args, load)?;
        if args.json {
            let mut obj = serde_json::Map::new();
            obj.insert("nodes".into(), json!(args.nodes));
            obj.insert("load".into(), json!(load));
            for (name, r) in &reports {
                obj.insert((*name).into(), serde_json::to_value(r)?);
            }
            writeln!(out, "{}", serde_json::Value::Object(obj))?;
        } else {
            writeln!(out, "nodes {} load {load}", args.nodes)?;
            writeln!(
                out,
                "{:<10} {:>9} {:>9} {:>9} {:>10}",
                "policy", "p50 ms", "p99 ms", "mean ms", "msgs/task"
            )?;
            for (name, r) in &reports {
                writeln!(
                    out,
                    "{name:<10} {:>9.1} {:>9.1} {:>9.1} {:>10.2}",
                    r.p50_ms, r.p99_ms, r.mean_ms, r.messages_per_task
                )?;
            }
        }
    }
    Ok(())
}
