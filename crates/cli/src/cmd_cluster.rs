//! `ignition cluster certs`: the certificates for mutual TLS between the nodes of a cluster.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// What a node knows of its cluster: its slots and queue, its live peers, and what it has
    /// lent, offered, stolen and reclaimed.
    Status {
        /// Print the node's `cluster` object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Makes a cluster CA and a certificate and key for each node, naming the node
    /// (`ca.pem`, `ca-key.pem`, `NODE.pem`, `NODE-key.pem`); start each server with
    /// `--node-id NODE --cluster-ca ca.pem --cluster-cert NODE.pem --cluster-key
    /// NODE-key.pem`. Keep `ca-key.pem` away from the nodes: it makes members.
    Certs {
        /// Where to write them (created if missing; existing files are not overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// A node id (repeatable): 1 to 100 letters, digits, '-', '_' and '.'.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
    },
}

pub(crate) fn run(cmd: ClusterCommand, global: &crate::GlobalArgs) -> Result<ExitCode> {
    match cmd {
        ClusterCommand::Certs { dir, nodes } => certs(&dir, &nodes)?,
        ClusterCommand::Status { json } => status(global, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn status(global: &crate::GlobalArgs, json: bool) -> Result<()> {
    let json = json || global.output == crate::Output::Json;
    let client = crate::client::Client::new(global)?;
    let stats = client.json(client.http().get(client.url("/v1/stats")), "status")?;
    let c = &stats["cluster"];
    if json {
        println!("{c}");
        return Ok(());
    }
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let members: Vec<&str> = c["members"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    println!(
        "node {}: {} of {} slots busy, {} queued",
        c["node"].as_str().unwrap_or("?"),
        n("busy"),
        n("slots"),
        n("queued")
    );
    if members.is_empty() {
        println!("peers: none (not in a cluster, or alone in it)");
    } else {
        println!("peers ({}): {}", members.len(), members.join(", "));
    }
    println!(
        "accepted {}, ran here {}, ran for others {}; lent {} (offered {}), returned {}, reclaimed {}, abandoned {}; stole {}, probes {}",
        n("accepted"),
        n("ran_local"),
        n("ran_stolen"),
        n("lent"),
        n("offered"),
        n("returned"),
        n("reclaimed"),
        n("abandoned"),
        n("stolen"),
        n("probes")
    );
    Ok(())
}

fn certs(dir: &Path, nodes: &[String]) -> Result<()> {
    let made = ignition_cluster::make_certs(nodes)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(dir, "ca.pem", made.ca.as_bytes(), 0o644)?;
    write(dir, "ca-key.pem", made.ca_key.as_bytes(), 0o600)?;
    for (node, cert, key) in &made.nodes {
        write(dir, &format!("{node}.pem"), cert.as_bytes(), 0o644)?;
        write(dir, &format!("{node}-key.pem"), key.as_bytes(), 0o600)?;
    }
    println!(
        "wrote ca.pem, ca-key.pem and a certificate and key for {} node(s) to {}",
        nodes.len(),
        dir.display()
    );
    Ok(())
}

fn write(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<()> {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("writing {} (it must not exist yet)", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}
