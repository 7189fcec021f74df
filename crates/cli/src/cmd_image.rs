//! `ignition image ...`

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::{locate, CacheArgs};

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Build the guest image (kernel, initramfs with the agent, root filesystem) if missing or
    /// stale, and print where it is.
    Build {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Print the current image without building.
    Show {
        #[command(flatten)]
        cache: CacheArgs,
    },
}

pub(crate) fn run(cmd: ImageCommand) -> Result<ExitCode> {
    let image = match cmd {
        ImageCommand::Build { cache } => {
            let agent = locate::agent(cache.agent.as_deref())?;
            ignition_image::build(&ignition_image::BuildOptions {
                cache_dir: cache.cache_dir(),
                agent,
            })
            .context("building the guest image")?
        }
        ImageCommand::Show { cache } => ignition_image::load_current(&cache.cache_dir())?,
    };
    println!("{}", serde_json::to_string_pretty(&image)?);
    Ok(ExitCode::SUCCESS)
}
