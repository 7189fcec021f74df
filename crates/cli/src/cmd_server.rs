//! `ignition server`
use std::process::ExitCode;
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {}
pub(crate) fn run(_a: ServerArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("todo") }
