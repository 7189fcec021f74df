//! `ignition key create|rm`: access keys, made by the operator in the store the server uses
//! (the data directory's, or with `--store` the cluster's shared one); the running server reads
//! keys from that same store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Create an access key for a tenant, or an operator's key; prints it once, with the token
    /// for the CLI.
    Create {
        /// The tenant whose functions the key reaches (1-16 of [a-z0-9]).
        #[arg(
            long,
            required_unless_present = "operator",
            conflicts_with = "operator"
        )]
        tenant: Option<String>,
        /// An operator's key: node-wide endpoints (`/metrics`, `/v1/stats`, `/v1/floor`,
        /// `ignition cluster status`), no tenant's functions.
        #[arg(long)]
        operator: bool,
        /// The server's data directory.
        #[arg(long, env = "IGNITION_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The cluster's shared store, as the server's `--store` (instead of the data
        /// directory's).
        #[arg(long, env = "IGNITION_STORE", value_name = "URL")]
        store: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an access key.
    Rm {
        /// The access key id.
        access_key_id: String,
        /// The server's data directory.
        #[arg(long, env = "IGNITION_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The cluster's shared store, as the server's `--store`.
        #[arg(long, env = "IGNITION_STORE", value_name = "URL")]
        store: Option<String>,
    },
}

fn store(data_dir: Option<PathBuf>, url: Option<String>) -> Result<ignition_store::Store> {
    if let Some(url) = url {
        return ignition_store::Store::connect(&url).context("opening the shared store");
    }
    let dir = data_dir.unwrap_or_else(crate::cmd_server::default_data_dir);
    ignition_store::Store::open(&dir)
        .with_context(|| format!("opening the store in {}", dir.display()))
}

pub(crate) fn run(cmd: KeyCommand) -> Result<ExitCode> {
    match cmd {
        KeyCommand::Create {
            tenant,
            operator,
            data_dir,
            store: url,
            json,
        } => {
            let store = store(data_dir, url)?;
            let key = match (tenant, operator) {
                (Some(tenant), false) => store.create_key(&tenant)?,
                _ => store.create_operator_key()?,
            };
            let token = format!("{}:{}", key.access_key_id, key.secret_access_key);
            if json {
                let mut v = serde_json::to_value(&key)?;
                v["token"] = token.into();
                v["operator"] = key.is_operator().into();
                println!("{v}");
            } else {
                if key.is_operator() {
                    println!("role:              operator");
                } else {
                    println!("tenant:            {}", key.tenant);
                }
                println!("access key id:     {}", key.access_key_id);
                println!("secret access key: {}", key.secret_access_key);
                println!("CLI token:         IGNITION_TOKEN={token}");
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Rm {
            access_key_id,
            data_dir,
            store: url,
        } => {
            if store(data_dir, url)?.delete_key(&access_key_id)? {
                println!("deleted {access_key_id}");
                Ok(ExitCode::SUCCESS)
            } else {
                anyhow::bail!("no access key {access_key_id}")
            }
        }
    }
}
