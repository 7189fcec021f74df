//! The function registry, the same on every node: each node keeps the functions in its own
//! store and says, by gossip, which version of each it holds; a node that sees a newer version
//! elsewhere fetches it (configuration, then code by hash) and stores it.
//!
//! A version is `(stamp, digest)`: the stamp is the time of the change in milliseconds at the
//! node where it was made, the digest a hash of the configuration and the code's hash, and a
//! deletion a version with no digest. The highest `(stamp, digest)` wins everywhere (last
//! writer wins; the digest breaks ties, so every node picks the same). Every node advertises
//! the version it holds, so what a node deployed outlives that node.
//!
//! Local changes are found by comparing the store with what was last advertised, twice a
//! second, so the API's handlers need not know about the cluster. Only `$LATEST` is replicated:
//! published versions, aliases and access keys stay on the node where they were made.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ignition_store::{FunctionConfig, FunctionRecord, Store};

use crate::membership::Peer;
use crate::node::Node;
use crate::peers::call;
use crate::{pb, ClusterError};

const PREFIX: &str = "fn:";
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
    let records = blocking(&node.store, Store::list_functions).await?;
    let mut present = std::collections::HashSet::new();
    for r in &records {
        present.insert(r.config.name.clone());
        let d = digest(&r.config, &r.code_sha256);
        if held.get(&r.config.name).and_then(|v| v.digest.as_ref()) != Some(&d) {
            // At start-up a record is as old as its write, so a node that was down does not
            // override what changed meanwhile; later, a change is as old as this round.
            let stamp_ms = if first {
                u64::try_from(r.updated_at)
                    .unwrap_or(0)
                    .saturating_mul(1000)
            } else {
                now_ms()
            };
            held.insert(
                r.config.name.clone(),
                Version {
                    stamp_ms,
                    digest: Some(d),
                },
            );
        }
    }
    for (name, v) in held.iter_mut() {
        if v.digest.is_some() && !present.contains(name) {
            *v = Version {
                stamp_ms: now_ms(),
                digest: None,
            };
        }
    }
    // 2. The newest version of each function anywhere, and who has it.
    let advertised = m.values(PREFIX).await;
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
        for (key, value) in kvs {
            let (Some(name), Some(v)) = (key.strip_prefix(PREFIX), Version::decode(&value)) else {
                continue;
            };
            match newest.get(name) {
                Some((best, _)) if *best >= v => {}
                _ => {
                    newest.insert(name.to_owned(), (v, peer.clone()));
                }
            }
        }
    }
    // 3. Adopt what is newer than what this node holds.
    for (name, (v, peer)) in newest {
        if held.get(&name).is_some_and(|mine| *mine >= v) {
            continue;
        }
        let same_content = held.get(&name).map(|h| &h.digest) == Some(&v.digest);
        if !same_content {
            match &v.digest {
                None => {
                    // Gossip is a hint: the deletion is applied only once the node that
                    // advertised it confirms it over the (authenticated) cluster channel.
                    let Some(endpoint) = endpoints.get(&peer) else {
                        continue;
                    };
                    if !confirms(node, endpoint, &name, &v).await {
                        tracing::warn!(function = %name, from = %peer, "a deletion advertised by gossip was not confirmed; ignored");
                        continue;
                    }
                    let n = name.clone();
                    blocking(&node.store, move |s| s.delete_function(&n)).await?;
                    node.worker.invalidate(&name).await;
                    tracing::info!(function = %name, from = %peer, "replicated a deletion");
                }
                Some(d) => {
                    let Some(endpoint) = endpoints.get(&peer) else {
                        continue;
                    };
                    let from = Peer {
                        id: peer.clone(),
                        endpoint: endpoint.clone(),
                    };
                    match fetch(node, &from, &name, d).await {
                        Ok(record) => {
                            node.worker.invalidate(&name).await;
                            tracing::info!(function = %name, from = %peer, code = %record.code_sha256, "replicated a function");
                        }
                        Err(e) => {
                            tracing::warn!(function = %name, from = %peer, error = %e, "cannot replicate a function");
                            continue;
                        }
                    }
                }
            }
        }
        held.insert(name, v);
    }
    // 4. Advertise what this node holds.
    for (name, v) in held.iter() {
        m.set(&format!("{PREFIX}{name}"), &v.encode()).await;
    }
    Ok(())
}

/// Whether the node at `endpoint` holds version `v` of `name`.
async fn confirms(node: &Arc<Node>, endpoint: &str, name: &str, v: &Version) -> bool {
    let Ok(mut client) = node.clients.get(endpoint) else {
        return false;
    };
    let reply = call(
        endpoint,
        "get version",
        FETCH_TIMEOUT,
        client.get_version(pb::FunctionRequest {
            name: name.to_owned(),
        }),
    )
    .await;
    reply.is_ok_and(|r| Version::decode(&r.version).as_ref() == Some(v))
}

/// Fetches `name` from `from` and stores it, if it is the content `digest` names.
async fn fetch(
    node: &Arc<Node>,
    from: &Peer,
    name: &str,
    want: &str,
) -> Result<FunctionRecord, ClusterError> {
    let mut client = node.clients.get(&from.endpoint)?;
    let reply = call(
        &from.endpoint,
        "get function",
        FETCH_TIMEOUT,
        client.get_function(pb::FunctionRequest {
            name: name.to_owned(),
        }),
    )
    .await?;
    let config: FunctionConfig = serde_json::from_str(&reply.config_json)
        .map_err(|e| ClusterError::Peer(format!("{}: {name}'s configuration: {e}", from.id)))?;
    if config.name != name || digest(&config, &reply.code_sha256) != want {
        // It changed again since it was advertised; a later round gets the newer one.
        return Err(ClusterError::Peer(format!(
            "{}: {name} is no longer the advertised version",
            from.id
        )));
    }
    config
        .validate()
        .map_err(|e| ClusterError::Peer(format!("{}: {name}: {e}", from.id)))?;
    let code = node.bundle(from, &reply.code_sha256).await?;
    blocking(&node.store, move |s| s.put_function(&config, &code)).await
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
