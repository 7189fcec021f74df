//! `ignition cluster certs`: the certificates for mutual TLS between the nodes of a cluster.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// What a node knows of its cluster: its slots and queue, its live peers, and what it has
    /// lent, offered, stolen and reclaimed.
    Status {
        /// Print the node's `cluster` object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Makes a cluster CA and a certificate and key for each node (`ca.pem`, `ca-key.pem`,
    /// `NODE.pem`, `NODE-key.pem`); start each server with `--cluster-ca ca.pem
    /// --cluster-cert NODE.pem --cluster-key NODE-key.pem`. Keep `ca-key.pem` away from the
    /// nodes: it makes members.
    Certs {
        /// Where to write them (created if missing; existing files are not overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// A node id (repeatable).
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
    for n in nodes {
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("node id {n:?}: use letters, digits, '-' and '_'");
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ignition cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    write(dir, "ca.pem", ca.pem().as_bytes(), 0o644)?;
    write(dir, "ca-key.pem", ca_key.serialize_pem().as_bytes(), 0o600)?;
    for node in nodes {
        // Every node carries the one cluster name; its id goes in the subject.
        let mut p = CertificateParams::new(vec![ignition_cluster::TLS_SERVER_NAME.to_owned()])?;
        p.distinguished_name.push(DnType::CommonName, node.as_str());
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca, &ca_key)?;
        write(dir, &format!("{node}.pem"), cert.pem().as_bytes(), 0o644)?;
        write(
            dir,
            &format!("{node}-key.pem"),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
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
