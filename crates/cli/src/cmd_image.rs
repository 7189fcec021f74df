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
    /// Print the current image, and the runtimes it runs, without building.
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
    let mut doc = serde_json::to_value(&image)?;
    if let Some(fields) = doc.as_object_mut() {
        // Lambda's names, as `fn deploy --runtime` and CreateFunction take them.
        let runtimes = ignition_types::SUPPORTED_RUNTIMES
            .iter()
            .filter(|r| r.contains('.'))
            .collect::<Vec<_>>();
        fields.insert("runtimes".into(), serde_json::json!(runtimes));
    }
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}
