//! `ignition fn ...`
use std::process::ExitCode;
#[derive(Debug, clap::Subcommand)]
pub(crate) enum FnCommand { Ls }
pub(crate) fn run(_c: FnCommand) -> anyhow::Result<ExitCode> { anyhow::bail!("todo") }
