//! CNI mode: each VM's namespace is given its interface by standard CNI plugins.
//!
//! Implements the runtime side of the CNI specification: a network configuration list (or a
//! single configuration) is read once; for a VM, each plugin binary from `CNI_PATH` is run
//! with `CNI_COMMAND=ADD` (then `DEL` in reverse order, or `CHECK`), `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` set, its configuration on stdin with `cniVersion`,
//! `name` and the previous plugin's result as `prevResult`; the last result says the VM's
//! address, gateway and DNS. Plugins are the operator's binaries: their output is still
//! size-bounded and must parse.
//!
//! The host's nftables rules key a VM's policy on the host end of its interface, so the
//! configuration must give each VM a routed link of its own (`ptp`): on a shared bridge VMs
//! would reach each other below the host's firewall, and such a configuration is refused.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::NetError;

/// Plugin output beyond this is refused.
const MAX_OUTPUT: usize = 1 << 20;

/// A CNI network configuration list and where its plugins are.
#[derive(Debug, Clone)]
pub struct CniConfig {
    name: String,
    version: String,
    plugins: Vec<Value>,
    bin_dirs: Vec<PathBuf>,
}

/// What a CNI `ADD` gave a VM.
#[derive(Debug, Clone)]
pub(crate) struct CniLink {
    /// The final result, passed back as `prevResult` on `DEL`.
    pub(crate) result: Value,
    /// The host end of the VM's link.
    pub(crate) host_if: String,
    pub(crate) address: Ipv4Addr,
    pub(crate) prefix_len: u8,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) dns: Vec<Ipv4Addr>,
}

fn err(what: impl Into<String>) -> NetError {
    NetError::Cni(what.into())
}

impl CniConfig {
    /// Reads a `.conflist` (or a single-plugin `.conf`) and checks that every plugin binary is
    /// in one of `bin_dirs`.
    pub fn load(path: &Path, bin_dirs: Vec<PathBuf>) -> Result<Self, NetError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("read {}: {e}", path.display())))?;
        let conf: Value = serde_json::from_str(&text)
            .map_err(|e| err(format!("{} is not JSON: {e}", path.display())))?;
        Self::from_value(&conf, bin_dirs).map_err(|e| err(format!("{}: {e}", path.display())))
    }

    fn from_value(conf: &Value, bin_dirs: Vec<PathBuf>) -> Result<Self, NetError> {
        let field = |k: &str| {
            conf.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| err(format!("missing string field {k:?}")))
        };
        let (name, version) = (field("name")?, field("cniVersion")?);
        let plugins = match conf.get("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list.clone(),
            Some(_) => return Err(err("\"plugins\" must be a non-empty list")),
            None => vec![conf.clone()],
        };
        let cfg = Self {
            name,
            version,
            plugins,
            bin_dirs,
        };
        for p in &cfg.plugins {
            let kind = p
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| err("a plugin has no \"type\""))?;
            cfg.binary(kind)?;
            if kind == "bridge" {
                return Err(err(
                    "the bridge plugin puts VMs on one L2 segment, below the host's firewall; \
                     use a routed plugin such as ptp",
                ));
            }
        }
        Ok(cfg)
    }

    fn binary(&self, kind: &str) -> Result<PathBuf, NetError> {
        if kind.is_empty() || kind.contains('/') {
            return Err(err(format!("bad plugin type {kind:?}")));
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| err(format!("plugin {kind:?} not found in {:?}", self.bin_dirs)))
    }

    fn stdin_for(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        if let Value::Object(m) = &mut conf {
            m.insert("cniVersion".into(), json!(self.version));
            m.insert("name".into(), json!(self.name));
            if let Some(prev) = prev {
                m.insert("prevResult".into(), prev.clone());
            }
        }
        conf
    }

    fn run(
        &self,
        command: &str,
        plugin: &Value,
        prev: Option<&Value>,
        id: &str,
        netns: &str,
    ) -> Result<Option<Value>, NetError> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let bin = self.binary(kind)?;
        let path =
            std::env::join_paths(&self.bin_dirs).map_err(|e| err(format!("CNI_PATH: {e}")))?;
        let mut child = Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("run {}: {e}", bin.display())))?;
        let input = self.stdin_for(plugin, prev).to_string();
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| err(format!("write to {kind}: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| err(format!("wait for {kind}: {e}")))?;
        if out.stdout.len() > MAX_OUTPUT {
            return Err(err(format!(
                "{kind} {command}: output over {MAX_OUTPUT} bytes"
            )));
        }
        if !out.status.success() {
            let why = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.get("msg").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
            return Err(err(format!(
                "{kind} {command} failed ({}): {why}",
                out.status
            )));
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| err(format!("{kind} {command}: result is not JSON: {e}")))
    }

    /// Runs `ADD` through the chain for the namespace at `netns`.
    pub(crate) fn add(&self, id: &str, netns: &str) -> Result<CniLink, NetError> {
        let mut prev: Option<Value> = None;
        for (i, plugin) in self.plugins.iter().enumerate() {
            match self.run("ADD", plugin, prev.as_ref(), id, netns) {
                Ok(Some(r)) => prev = Some(r),
                Ok(None) => {}
                Err(e) => {
                    // Undo what the plugins before this one did.
                    for p in self.plugins[..i].iter().rev() {
                        let _ = self.run("DEL", p, prev.as_ref(), id, netns);
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.ok_or_else(|| err("the plugins returned no result"))?;
        match parse_result(&result) {
            Ok(link) => Ok(link),
            Err(e) => {
                let _ = self.del(id, netns, &result);
                Err(e)
            }
        }
    }

    /// Runs `CHECK` through the chain.
    pub(crate) fn check(&self, id: &str, netns: &str, result: &Value) -> Result<(), NetError> {
        for plugin in &self.plugins {
            self.run("CHECK", plugin, Some(result), id, netns)?;
        }
        Ok(())
    }

    /// Runs `DEL` through the chain in reverse; every plugin is asked even if one fails.
    pub(crate) fn del(&self, id: &str, netns: &str, result: &Value) -> Result<(), NetError> {
        let mut first_error = None;
        for plugin in self.plugins.iter().rev() {
            if let Err(e) = self.run("DEL", plugin, Some(result), id, netns) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The VM's IPv4 address, gateway and host interface from a CNI result (spec 0.4 or 1.0).
pub(crate) fn parse_result(result: &Value) -> Result<CniLink, NetError> {
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| err("the result has no \"ips\""))?;
    let (cidr, gateway) = ips
        .iter()
        .find_map(|ip| {
            let addr = ip.get("address")?.as_str()?;
            let (a, p) = addr.split_once('/')?;
            let a: Ipv4Addr = a.parse().ok()?;
            let p: u8 = p.parse().ok().filter(|p| *p <= 32)?;
            let g: Ipv4Addr = ip.get("gateway")?.as_str()?.parse().ok()?;
            Some(((a, p), g))
        })
        .ok_or_else(|| err("the result has no IPv4 address with a gateway"))?;
    let interfaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let host_if = interfaces
        .iter()
        .find(|i| i.get("sandbox").is_none())
        .and_then(|i| i.get("name")?.as_str())
        .map(str::to_owned)
        .ok_or_else(|| err("the result names no host-side interface"))?;
    let dns = result
        .pointer("/dns/nameservers")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    Ok(CniLink {
        result: result.clone(),
        host_if,
        address: cidr.0,
        prefix_len: cidr.1,
        gateway,
        dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ptp_result_gives_the_guest_its_address_and_the_host_its_interface() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth1a2b3c4d", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/proc/1/fd/9"}
            ],
            "ips": [{"address": "10.99.0.5/24", "gateway": "10.99.0.1", "interface": 1}],
            "dns": {"nameservers": ["198.18.0.53", "not-an-ip"]}
        });
        let l = parse_result(&r).unwrap();
        assert_eq!(l.host_if, "veth1a2b3c4d");
        assert_eq!(
            (l.address, l.prefix_len),
            ("10.99.0.5".parse().unwrap(), 24)
        );
        assert_eq!(l.gateway, "10.99.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(l.dns, vec!["198.18.0.53".parse::<Ipv4Addr>().unwrap()]);
        assert!(parse_result(&json!({"ips": []})).is_err());
        assert!(parse_result(&json!({"ips": [{"address": "10.0.0.2/24"}]})).is_err());
    }

    #[test]
    fn configurations_are_checked_when_loaded() {
        let bins = vec![PathBuf::from("/nonexistent")];
        let e = |v: Value| {
            CniConfig::from_value(&v, bins.clone())
                .unwrap_err()
                .to_string()
        };
        assert!(e(json!({"cniVersion": "1.0.0"})).contains("\"name\""));
        assert!(
            e(json!({"name": "n", "cniVersion": "1.0.0", "plugins": []})).contains("non-empty")
        );
        assert!(
            e(json!({"name": "n", "cniVersion": "1.0.0", "type": "ptp"})).contains("not found")
        );
        assert!(
            e(json!({"name": "n", "cniVersion": "1.0.0", "type": "../x"}))
                .contains("bad plugin type")
        );
    }
}
