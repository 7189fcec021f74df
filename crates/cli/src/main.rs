//! `ignition`: the one binary. Server, client and image builder.

mod bench_plot;
mod bench_stats;
mod client;
mod cmd_bench;
mod cmd_cluster;
mod cmd_doctor;
mod cmd_fn;
mod cmd_image;
mod cmd_key;
mod cmd_server;
mod locate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Ignition: serverless functions in microVMs.
#[derive(Debug, Parser)]
#[command(name = "ignition", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the HTTP API, the store and the microVM workers.
    Server(Box<cmd_server::ServerArgs>),
    /// Manage and invoke functions on a server.
    #[command(name = "fn", subcommand)]
    Function(cmd_fn::FnCommand),
    /// Measure cold starts through the API: VMM floor, boot, restore, warm pool; then under load.
    Bench(cmd_bench::BenchArgs),
    /// Inspect the host: KVM (measured), QEMU, Firecracker, networking, cgroups.
    Doctor(cmd_doctor::DoctorArgs),
    /// Build or inspect the guest image.
    #[command(subcommand)]
    Image(cmd_image::ImageCommand),
    /// Manage access keys (operators: works on the data directory directly).
    #[command(subcommand)]
    Key(cmd_key::KeyCommand),
    /// Cluster set-up: certificates for mutual TLS between nodes.
    #[command(subcommand)]
    Cluster(cmd_cluster::ClusterCommand),
}

/// Options shared by commands that use the image cache.
#[derive(Debug, Clone, clap::Args)]
struct CacheArgs {
    /// Directory for the guest image, shared by every server on the host.
    #[arg(long, env = "IGNITION_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// The statically linked guest agent (default: found next to this binary).
    #[arg(long, env = "IGNITION_AGENT")]
    agent: Option<PathBuf>,
}

impl CacheArgs {
    fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(ignition_image::default_cache_dir)
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IGNITION_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => cmd_server::run(*args),
        Command::Function(cmd) => cmd_fn::run(cmd),
        Command::Image(cmd) => cmd_image::run(cmd),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Doctor(args) => cmd_doctor::run(args),
        Command::Key(cmd) => cmd_key::run(cmd),
        Command::Cluster(cmd) => cmd_cluster::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
