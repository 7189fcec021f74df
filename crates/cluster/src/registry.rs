//! The registry, the same on every node: functions (`fn:NAME`) and access keys (`key:ID`).
//! Each node keeps them in its own store and says, by gossip, which version of each it holds; a
//! node that sees a newer version elsewhere fetches it over gRPC (a function's configuration,
//! then its code by hash; a key's tenant and secret) and stores it.
//!
//! A version is `(stamp, digest)`: the stamp is the time of the change in milliseconds at the
//! node where it was made, the digest a hash of the configuration and the code's hash, and a
//! deletion a version with no digest. The highest `(stamp, digest)` wins everywhere (last
//! writer wins; the digest breaks ties, so every node picks the same). Every node advertises
//! the version it holds, so what a node deployed outlives that node.
//!
//! Local changes are found by comparing the store with what was last advertised, twice a
//! second, so the API's handlers and `ignition key` need not know about the cluster. Gossip is
//! a hint: content comes only from the node that advertised it, over the cluster's gRPC (mutual
//! TLS when configured), and a deletion is applied once that node confirms it. Versions
//! (`ver:NAME@N`) and aliases (`alias:NAME:ALIAS`) replicate the same way; a version number is
//! assigned by the node that publishes it, so two nodes publishing one function's versions at
//! the same moment can both make `N`, and then the later wins.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ignition_store::{FunctionConfig, Store};

use crate::membership::Peer;
use crate::node::Node;
use crate::peers::call;
use crate::{pb, ClusterError};

/// What the registry replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `fn:NAME`: a function's `$LATEST`.
    Function,
    /// `ver:NAME@N`: a published version.
    Version,
    /// `alias:NAME:ALIAS`.
    Alias,
    /// `key:ID`: an access key.
    Key,
}

impl Kind {
    const ALL: [Self; 4] = [Self::Function, Self::Version, Self::Alias, Self::Key];

    fn prefix(self) -> &'static str {
        match self {
            Self::Function => "fn:",
            Self::Version => "ver:",
            Self::Alias => "alias:",
            Self::Key => "key:",
        }
    }

    fn of(entry: &str) -> Option<(Self, &str)> {
        Self::ALL
            .into_iter()
            .find_map(|k| entry.strip_prefix(k.prefix()).map(|name| (k, name)))
    }
}

/// Everything the registry holds here: entry (`fn:NAME`, `key:ID`) → (digest, written at, ms).
async fn local(node: &Arc<Node>) -> Result<Vec<(String, String, u64)>, ClusterError> {
    let functions = blocking(&node.store, Store::list_functions).await?;
    let keys = blocking(&node.store, Store::list_keys).await?;
    let versions = blocking(&node.store, Store::all_versions).await?;
    let aliases = blocking(&node.store, Store::all_aliases).await?;
    let ms = |secs: i64| u64::try_from(secs).unwrap_or(0).saturating_mul(1000);
    let mut out: Vec<(String, String, u64)> = functions
        .iter()
        .map(|r| {
            (
                format!("fn:{}", r.config.name),
                digest(&r.config, &r.code_sha256),
                ms(r.updated_at),
            )
        })
        .collect();
    out.extend(versions.iter().map(|(f, n, r)| {
        (
            format!("ver:{f}@{n}"),
            digest(&r.config, &r.code_sha256),
            ms(r.created_at),
        )
    }));
    // An alias carries no time of its own: a change found here is stamped when found.
    out.extend(
        aliases
            .iter()
            .map(|(f, a)| (format!("alias:{f}:{}", a.name), alias_digest(a), 0)),
    );
    out.extend(keys.iter().map(|(k, created)| {
        (
            format!("key:{}", k.access_key_id),
            key_digest(&k.tenant, &k.secret_access_key),
            ms(*created),
        )
    }));
    Ok(out)
}

fn alias_digest(a: &ignition_store::Alias) -> String {
    let routing = a
        .routing
        .map(|r| format!("{}:{}", r.version, r.ppm))
        .unwrap_or_default();
    ignition_store::sha256_hex(format!("{}\n{}\n{routing}", a.version, a.description).as_bytes())
}

/// `NAME@N` → (NAME, N).
fn version_of(name: &str) -> Option<(&str, u32)> {
    let (f, n) = name.rsplit_once('@')?;
    Some((f, n.parse().ok().filter(|n| *n > 0)?))
}

/// What identifies a key's content without revealing its secret (a 40-character random string).
fn key_digest(tenant: &str, secret: &str) -> String {
    ignition_store::sha256_hex(format!("{tenant}\n{secret}").as_bytes())
}
const TOMBSTONE: &str = "-";
const SCAN_EVERY: Duration = Duration::from_millis(500);
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// One function's version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version {
    stamp_ms: u64,
    /// `None`: deleted.
    digest: Option<String>,
}

impl Version {
    pub(crate) fn encode(&self) -> String {
        format!(
            "{}/{}",
            self.stamp_ms,
            self.digest.as_deref().unwrap_or(TOMBSTONE)
        )
    }

    fn decode(s: &str) -> Option<Self> {
        let (stamp, digest) = s.split_once('/')?;
        let stamp_ms = stamp.parse().ok()?;
        let digest = match digest {
            TOMBSTONE => None,
            d if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) => Some(d.to_owned()),
            _ => return None,
        };
        Some(Self { stamp_ms, digest })
    }
}

/// What identifies a function's content: its configuration and its code.
pub(crate) fn digest(config: &FunctionConfig, code_sha256: &str) -> String {
    let json = serde_json::to_string(config).unwrap_or_default();
    ignition_store::sha256_hex(format!("{json}\n{code_sha256}").as_bytes())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Keeps this node's registry in step with the cluster's, until the node stops.
pub(crate) async fn replicate(node: Arc<Node>) {
    let mut held: HashMap<String, Version> = HashMap::new();
    let mut first = true;
    loop {
        if node.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Err(e) = round(&node, &mut held, first).await {
            tracing::warn!(error = %e, "registry replication round failed");
        }
        first = false;
        node.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(&held);
        tokio::select! {
            () = tokio::time::sleep(SCAN_EVERY) => {}
            () = node.stop.notified() => return,
        }
    }
}

async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, ignition_store::StoreError> + Send + 'static,
) -> Result<T, ClusterError> {
    let s = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| ClusterError::Store(e.to_string()))?
        .map_err(|e| ClusterError::Store(e.to_string()))
}

async fn round(
    node: &Arc<Node>,
    held: &mut HashMap<String, Version>,
    first: bool,
) -> Result<(), ClusterError> {
    let Some(m) = node.membership.get() else {
        return Ok(());
    };
    // 1. What changed here since the last round.
    let entries = local(node).await?;
    let mut present = std::collections::HashSet::new();
    for (entry, d, written_ms) in entries {
        if held.get(&entry).and_then(|v| v.digest.as_ref()) != Some(&d) {
            // At start-up an entry is as old as its write, so a node that was down does not
            // override what changed meanwhile; later, a change is as old as this round.
            let stamp_ms = if first { written_ms } else { now_ms() };
            held.insert(
                entry.clone(),
                Version {
                    stamp_ms,
                    digest: Some(d),
                },
            );
        }
        present.insert(entry);
    }
    for (entry, v) in held.iter_mut() {
        if v.digest.is_some() && !present.contains(entry) {
            *v = Version {
                stamp_ms: now_ms(),
                digest: None,
            };
        }
    }
    // 2. The newest version of each entry anywhere, and who has it.
    let mut advertised = m.values(Kind::Function.prefix()).await;
    for kind in [Kind::Version, Kind::Alias, Kind::Key] {
        for (peer, kvs) in m.values(kind.prefix()).await {
            advertised.entry(peer).or_default().extend(kvs);
        }
    }
    let endpoints: HashMap<String, String> = m
        .peers()
        .await
        .into_iter()
        .map(|p| (p.id, p.endpoint))
        .collect();
    let mut newest: BTreeMap<String, (Version, String)> = BTreeMap::new();
    for (peer, kvs) in advertised {
        if peer == node.id {
            continue;
        }
        for (entry, value) in kvs {
            let (Some(_), Some(v)) = (Kind::of(&entry), Version::decode(&value)) else {
                continue;
            };
            match newest.get(&entry) {
                Some((best, _)) if *best >= v => {}
                _ => {
                    newest.insert(entry, (v, peer.clone()));
                }
            }
        }
    }
    // 3. Adopt what is newer than what this node holds.
    for (entry, (v, peer)) in newest {
        if held.get(&entry).is_some_and(|mine| *mine >= v) {
            continue;
        }
        let same_content = held.get(&entry).map(|h| &h.digest) == Some(&v.digest);
        if !same_content {
            let (Some((kind, name)), Some(endpoint)) = (Kind::of(&entry), endpoints.get(&peer))
            else {
                continue;
            };
            let from = Peer {
                id: peer.clone(),
                endpoint: endpoint.clone(),
            };
            let applied = match &v.digest {
                None => delete(node, &from, kind, name, &entry, &v).await,
                Some(d) => fetch(node, &from, kind, name, d).await,
            };
            if let Err(e) = applied {
                tracing::warn!(entry = %redact(&entry), from = %peer, error = %e, "cannot replicate");
                continue;
            }
            tracing::info!(entry = %redact(&entry), from = %peer, deleted = v.digest.is_none(), "replicated");
        }
        held.insert(entry, v);
    }
    // 4. Advertise what this node holds.
    for (entry, v) in held.iter() {
        m.set(entry, &v.encode()).await;
    }
    Ok(())
}

/// An entry's name for logs: a key's id is not a secret, but there is no need to spread it.
fn redact(entry: &str) -> &str {
    match Kind::of(entry) {
        Some((Kind::Key, _)) => "key:…",
        _ => entry,
    }
}

/// Applies a deletion of `entry` that `from` advertised, once `from` confirms it holds it.
async fn delete(
    node: &Arc<Node>,
    from: &Peer,
    kind: Kind,
    name: &str,
    entry: &str,
    v: &Version,
) -> Result<(), ClusterError> {
    let mut client = node.clients.get(&from.endpoint)?;
    let reply = call(
        &from.endpoint,
        "get version",
        FETCH_TIMEOUT,
        client.get_version(pb::VersionRequest {
            key: entry.to_owned(),
        }),
    )
    .await?;
    if Version::decode(&reply.version).as_ref() != Some(v) {
        return Err(ClusterError::Peer(format!(
            "{} does not confirm the deletion it advertised",
            from.id
        )));
    }
    let n = name.to_owned();
    match kind {
        Kind::Function => {
            blocking(&node.store, move |s| s.delete_function(&n)).await?;
            node.worker.forget_function(name).await;
        }
        Kind::Key => {
            blocking(&node.store, move |s| s.delete_key(&n)).await?;
        }
        Kind::Version => {
            let (f, v) = version_of(name).ok_or_else(|| bad_entry(entry))?;
            let f = f.to_owned();
            blocking(&node.store, move |s| s.delete_version(&f, v)).await?;
        }
        Kind::Alias => {
            let (f, a) = name.split_once(':').ok_or_else(|| bad_entry(entry))?;
            let (f, a) = (f.to_owned(), a.to_owned());
            blocking(&node.store, move |s| s.delete_alias(&f, &a)).await?;
        }
    }
    Ok(())
}

/// `function`'s `$LATEST` (`version` 0) or published `version` from `from`, configuration and
/// code, if it is the content `want` names.
async fn fetch_record(
    node: &Arc<Node>,
    from: &Peer,
    function: &str,
    version: u32,
    want: &str,
) -> Result<(FunctionConfig, Vec<u8>), ClusterError> {
    let mut client = node.clients.get(&from.endpoint)?;
    let request = client.get_function(pb::FunctionRequest {
        name: function.to_owned(),
        version,
    });
    let reply = call(&from.endpoint, "get function", FETCH_TIMEOUT, request).await?;
    let config: FunctionConfig = serde_json::from_str(&reply.config_json)
        .map_err(|e| ClusterError::Peer(format!("{}: {function}'s configuration: {e}", from.id)))?;
    // It may have changed again since it was advertised; a later round gets that.
    if config.name != function || digest(&config, &reply.code_sha256) != want {
        return Err(ClusterError::Peer(format!(
            "{}: {function} is no longer the advertised version",
            from.id
        )));
    }
    config
        .validate()
        .map_err(|e| ClusterError::Peer(format!("{}: {function}: {e}", from.id)))?;
    let code = node.bundle(from, &reply.code_sha256).await?;
    // The layers' bundles go into the store before the function that refers to them.
    for layer in &config.layers {
        let tar = node.bundle(from, &layer.code_sha256).await?;
        let store = Arc::clone(&node.store);
        tokio::task::spawn_blocking(move || store.put_bundle(&tar))
            .await
            .map_err(|e| ClusterError::Peer(format!("storing a layer: {e}")))?
            .map_err(|e| ClusterError::Store(e.to_string()))?;
    }
    Ok((config, code))
}

fn bad_entry(entry: &str) -> ClusterError {
    ClusterError::Peer(format!("malformed registry entry {entry:?}"))
}

/// Fetches `name` from `from` and stores it, if it is the content `want` names.
async fn fetch(
    node: &Arc<Node>,
    from: &Peer,
    kind: Kind,
    name: &str,
    want: &str,
) -> Result<(), ClusterError> {
    let stale = || {
        ClusterError::Peer(format!(
            "{}: {name} is no longer the advertised version",
            from.id
        ))
    };
    let mut client = node.clients.get(&from.endpoint)?;
    match kind {
        Kind::Function => {
            let (config, code) = fetch_record(node, from, name, 0, want).await?;
            blocking(&node.store, move |s| s.put_function(&config, &code)).await?;
            node.worker.invalidate(name).await;
        }
        Kind::Version => {
            let (f, v) = version_of(name).ok_or_else(|| bad_entry(name))?;
            let (config, code) = fetch_record(node, from, f, v, want).await?;
            let f = f.to_owned();
            blocking(&node.store, move |s| s.put_version(&f, v, &config, &code)).await?;
        }
        Kind::Alias => {
            let (f, a) = name.split_once(':').ok_or_else(|| bad_entry(name))?;
            let reply = call(
                &from.endpoint,
                "get alias",
                FETCH_TIMEOUT,
                client.get_alias(pb::AliasRequest {
                    function: f.to_owned(),
                    name: a.to_owned(),
                }),
            )
            .await?;
            let alias = ignition_store::Alias {
                name: a.to_owned(),
                version: reply.version,
                description: reply.description,
                routing: reply
                    .routing_version
                    .map(|version| ignition_store::Routing {
                        version,
                        ppm: reply.routing_ppm,
                    }),
            };
            if alias_digest(&alias) != want {
                return Err(stale());
            }
            let f = f.to_owned();
            blocking(&node.store, move |s| s.replace_alias(&f, &alias)).await?;
        }
        Kind::Key => {
            let reply = call(
                &from.endpoint,
                "get key",
                FETCH_TIMEOUT,
                client.get_key(pb::KeyRequest {
                    access_key_id: name.to_owned(),
                }),
            )
            .await?;
            if key_digest(&reply.tenant, &reply.secret_access_key) != want {
                return Err(stale());
            }
            let key = ignition_store::AccessKey {
                access_key_id: name.to_owned(),
                secret_access_key: reply.secret_access_key,
                tenant: reply.tenant,
            };
            blocking(&node.store, move |s| s.put_key(&key)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_stamp_then_digest_and_round_trip() {
        let a = Version {
            stamp_ms: 5,
            digest: Some("a".repeat(64)),
        };
        let b = Version {
            stamp_ms: 5,
            digest: Some("b".repeat(64)),
        };
        let gone = Version {
            stamp_ms: 6,
            digest: None,
        };
        assert!(a < b && b < gone);
        for v in [&a, &b, &gone] {
            assert_eq!(Version::decode(&v.encode()).as_ref(), Some(v));
        }
        for bad in ["", "5", "x/-", "5/abc", "5/../../etc"] {
            assert_eq!(Version::decode(bad), None, "{bad}");
        }
    }
}
