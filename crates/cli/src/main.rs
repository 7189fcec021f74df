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
mod cmd_schedule;
mod cmd_server;
mod layered;
mod locate;
mod logging;
mod service;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as _, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Ignition: serverless functions in microVMs.
#[derive(Debug, Parser)]
#[command(name = "ignition", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options of the client commands, accepted before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GlobalArgs {
    /// The server's URL (default: the local server, http://127.0.0.1:7070).
    #[arg(long, env = "IGNITION_URL", global = true)]
    pub(crate) url: Option<String>,
    /// A CA certificate (PEM) to trust for an `https://` --url, besides the system's.
    #[arg(long, env = "IGNITION_CA_CERT", global = true, value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// How listings are printed.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the HTTP API, the store and the microVM workers.
    Server(Box<cmd_server::ServerArgs>),
    /// Manage and invoke functions on a server.
    #[command(name = "fn", subcommand)]
    Function(cmd_fn::FnCommand),
    /// Run functions on a schedule (EventBridge Scheduler's rate, cron and at expressions).
    #[command(subcommand)]
    Schedule(cmd_schedule::ScheduleCommand),
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
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), made from this command's definition.
    Man,
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

/// The whole command line, with `ignition server`'s environment variables and (with
/// `--config`) its configuration file applied (see [`layered`]).
fn parse() -> Result<Cli, (String, ExitCode)> {
    let cmd = Cli::command().mut_subcommand("server", layered::with_env);
    let args: Vec<OsString> = std::env::args_os().collect();
    let matches = cmd
        .clone()
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| e.exit());
    let matches = match matches.subcommand() {
        Some(("server", sub)) => match sub.get_one::<PathBuf>("config") {
            Some(file) => {
                let server = layered::with_env(cmd_server::ServerArgs::augment_args(
                    clap::Command::new("server"),
                ));
                let args = layered::with_file_settings(&server, sub, file, args)
                    .map_err(|e| (format!("error: {e}"), ExitCode::from(2)))?;
                cmd.try_get_matches_from(&args).unwrap_or_else(|e| e.exit())
            }
            None => matches,
        },
        _ => matches,
    };
    Cli::from_arg_matches(&matches).map_err(|e| (e.to_string(), ExitCode::from(2)))
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err((message, code)) => {
            eprintln!("{message}");
            return code;
        }
    };
    let log_format = match &cli.command {
        Command::Server(args) => args.log_format,
        _ => logging::LogFormat::Text,
    };
    logging::init(log_format);
    let global = cli.global;
    let result = match cli.command {
        Command::Server(args) => cmd_server::run(*args),
        Command::Function(cmd) => cmd_fn::run(cmd, &global),
        Command::Schedule(cmd) => cmd_schedule::run(cmd, &global),
        Command::Image(cmd) => cmd_image::run(cmd),
        Command::Bench(args) => cmd_bench::run(args, &global),
        Command::Doctor(args) => cmd_doctor::run(args),
        Command::Key(cmd) => cmd_key::run(cmd),
        Command::Cluster(cmd) => cmd_cluster::run(cmd, &global),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ignition",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
