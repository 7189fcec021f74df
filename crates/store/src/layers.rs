//! Layers: named, numbered, immutable bundles that a tenant publishes once and adds to its
//! functions (the guest sees them under `/opt`). A layer version's code is a bundle like a
//! function's, stored once per hash and dropped when nothing refers to it any more. Version
//! numbers only grow: a deleted version's number is never given again, as on Lambda.

use serde::{Deserialize, Serialize};

use crate::bundles::{gc_bundle, put_bundle};
use crate::quotas::of_tenant;
use crate::sql::{vals, Row};
use crate::store::{now, sha256_hex, Store, StoreError};
use ignition_types::TenantQuotas;

/// What describes a layer version besides its code (Lambda's fields, as sent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Free text, at most 256 characters.
    #[serde(default)]
    pub description: String,
    /// Runtimes the publisher says the layer works with (informational, and a filter of the
    /// lists).
    #[serde(default)]
    pub compatible_runtimes: Vec<String>,
    /// Architectures likewise.
    #[serde(default)]
    pub compatible_architectures: Vec<String>,
    /// The layer's license, free text.
    #[serde(default)]
    pub license_info: String,
}

/// A stored layer version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerVersion {
    /// The layer's stored name (`TENANT.NAME`, or `NAME` for the default tenant).
    pub name: String,
    /// Its number, from 1.
    pub version: u32,
    /// Its description and compatibility.
    pub meta: LayerMeta,
    /// SHA-256 of its canonical tar, hex.
    pub code_sha256: String,
    /// Size of that tar in bytes.
    pub code_size: u64,
    /// Unix seconds.
    pub created_at: i64,
}

/// Checks a layer's name as Lambda does: 1 to 140 of letters, digits, `-` and `_`.
pub fn validate_layer_name(name: &str) -> Result<(), String> {
    let ok = (1..=140).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "layer name {name:?} must be 1 to 140 letters, digits, '-' and '_'"
        ))
    }
}

const COLUMNS: &str =
    "l.name, l.version, l.meta, l.code_sha256, b.size, l.created_at FROM layer_versions l \
     JOIN bundles b ON b.sha256 = l.code_sha256";

fn layer_from(r: &Row) -> Result<LayerVersion, StoreError> {
    let name = r.text(0)?;
    let Ok(meta) = serde_json::from_str(&r.text(2)?) else {
        return Err(StoreError::Corrupt(format!("layer {name}")));
    };
    let version =
        u32::try_from(r.int(1)?).map_err(|_| StoreError::Corrupt(format!("layer {name}")))?;
    Ok(LayerVersion {
        name,
        version,
        meta,
        code_sha256: r.text(3)?,
        code_size: u64::try_from(r.int(4)?).unwrap_or(0),
        created_at: r.int(5)?,
    })
}

impl Store {
    /// Publishes `code_tar` as the next version of layer `name` (stored name) unless the
    /// tenant's code would then pass `quotas` ([`StoreError::QuotaExceeded`], nothing written).
    pub fn publish_layer_version(
        &self,
        name: &str,
        meta: &LayerMeta,
        code_tar: &[u8],
        quotas: &TenantQuotas,
    ) -> Result<LayerVersion, StoreError> {
        let tenant = ignition_types::FunctionId::from_stored(name).tenant;
        let hash = sha256_hex(code_tar);
        let text = serde_json::to_string(meta)
            .map_err(|_| StoreError::Corrupt(format!("layer {name}")))?;
        let t = now();
        let version = self.transaction(|db| {
            crate::quotas::serialize_tenant(db, &tenant)?;
            crate::quotas::check_code_quota(db, &tenant, "", &hash, code_tar.len(), quotas)?;
            let last = db
                .query_opt(
                    "SELECT last_version FROM layers WHERE name = $1",
                    &vals![name],
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0);
            let version = u32::try_from(last + 1)
                .map_err(|_| StoreError::Corrupt(format!("layer {name}")))?;
            db.execute(
                "INSERT INTO layers (name, last_version) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version",
                &vals![name, version],
            )?;
            put_bundle(db, &hash, code_tar, t)?;
            db.execute(
                "INSERT INTO layer_versions (name, version, meta, code_sha256, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &vals![name, version, &text, &hash, t],
            )?;
            Ok(version)
        })?;
        Ok(LayerVersion {
            name: name.to_owned(),
            version,
            meta: meta.clone(),
            code_sha256: hash,
            code_size: code_tar.len() as u64,
            created_at: t,
        })
    }

    /// Version `version` of layer `name`.
    pub fn layer_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<LayerVersion>, StoreError> {
        self.with(|db| {
            db.query_opt(
                &format!("SELECT {COLUMNS} WHERE l.name = $1 AND l.version = $2"),
                &vals![name, version],
            )?
            .map(|r| layer_from(&r))
            .transpose()
        })
    }

    /// The versions of layer `name`, newest first.
    pub fn layer_versions(&self, name: &str) -> Result<Vec<LayerVersion>, StoreError> {
        self.with(|db| {
            db.query(
                &format!("SELECT {COLUMNS} WHERE l.name = $1 ORDER BY l.version DESC"),
                &vals![name],
            )?
            .iter()
            .map(layer_from)
            .collect()
        })
    }

    /// Every version of every one of `tenant`'s layers: by name, each layer's newest first.
    pub fn tenant_layer_versions(&self, tenant: &str) -> Result<Vec<LayerVersion>, StoreError> {
        self.with(|db| {
            db.query(
                &format!(
                    "SELECT {COLUMNS} WHERE {} ORDER BY l.name, l.version DESC",
                    of_tenant("l.name", 1)
                ),
                &vals![tenant],
            )?
            .iter()
            .map(layer_from)
            .collect()
        })
    }

    /// Deletes version `version` of layer `name` (its bundle too, unless a function still uses
    /// it); whether it existed.
    pub fn delete_layer_version(&self, name: &str, version: u32) -> Result<bool, StoreError> {
        self.transaction(|db| {
            let Some(hash) = db
                .query_opt(
                    "SELECT code_sha256 FROM layer_versions WHERE name = $1 AND version = $2",
                    &vals![name, version],
                )?
                .map(|r| r.text(0))
                .transpose()?
            else {
                return Ok(false);
            };
            db.execute(
                "DELETE FROM layer_versions WHERE name = $1 AND version = $2",
                &vals![name, version],
            )?;
            gc_bundle(db, &hash)?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FunctionConfig, LayerRef, Runtime};

    fn config(name: &str, layers: Vec<LayerRef>) -> FunctionConfig {
        FunctionConfig {
            name: name.into(),
            runtime: Runtime::Python3,
            runtime_name: String::new(),
            handler: "a.b".into(),
            memory_mib: 128,
            timeout_s: 3,
            env: Default::default(),
            reuse: false,
            egress: Vec::new(),
            description: String::new(),
            layers,
            image: None,
        }
    }

    fn reference(v: &LayerVersion) -> LayerRef {
        LayerRef {
            arn: format!(
                "arn:aws:lambda:local:000000000000:layer:{}:{}",
                v.name, v.version
            ),
            code_sha256: v.code_sha256.clone(),
            code_size: v.code_size,
        }
    }

    #[test]
    fn versions_only_grow_and_lists_are_per_tenant() {
        for (_, s) in crate::testing::stores() {
            let q = TenantQuotas::default();
            let meta = LayerMeta {
                description: "deps".into(),
                compatible_runtimes: vec!["python3.11".into()],
                ..LayerMeta::default()
            };
            let v1 = s.publish_layer_version("deps", &meta, b"one", &q).unwrap();
            let v2 = s.publish_layer_version("deps", &meta, b"two", &q).unwrap();
            assert_eq!((v1.version, v2.version), (1, 2));
            assert!(s.delete_layer_version("deps", 2).unwrap());
            assert!(!s.delete_layer_version("deps", 2).unwrap());
            let v3 = s
                .publish_layer_version("deps", &meta, b"three", &q)
                .unwrap();
            assert_eq!(
                v3.version, 3,
                "a deleted version's number is not given again"
            );
            s.publish_layer_version("acme.deps", &meta, b"x", &q)
                .unwrap();
            let mine: Vec<_> = s
                .tenant_layer_versions(ignition_types::DEFAULT_TENANT)
                .unwrap()
                .into_iter()
                .map(|v| (v.name, v.version))
                .collect();
            assert_eq!(mine, vec![("deps".to_owned(), 3), ("deps".to_owned(), 1)]);
            let versions: Vec<u32> = s
                .layer_versions("deps")
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect();
            assert_eq!(versions, vec![3, 1]);
            assert_eq!(s.layer_version("deps", 1).unwrap().unwrap().meta, meta);
            assert!(s.layer_version("deps", 2).unwrap().is_none());
        }
    }

    #[test]
    fn a_layer_bundle_lives_while_a_layer_version_or_a_function_refers_to_it() {
        for (_, s) in crate::testing::stores() {
            let q = TenantQuotas::default();
            let v = s
                .publish_layer_version("deps", &LayerMeta::default(), b"layer-code", &q)
                .unwrap();
            s.put_function(&config("f", vec![reference(&v)]), b"fn-code")
                .unwrap();
            assert_eq!(
                s.get_function("f").unwrap().unwrap().config.layers,
                vec![reference(&v)]
            );
            s.publish_version("f", None).unwrap();
            assert!(s.delete_layer_version("deps", 1).unwrap());
            assert!(
                s.get_bundle(&v.code_sha256).unwrap().is_some(),
                "a function still uses it"
            );
            // $LATEST drops the layer; version 1 still has it.
            s.put_function(&config("f", Vec::new()), b"fn-code")
                .unwrap();
            assert!(s.get_bundle(&v.code_sha256).unwrap().is_some());
            assert!(s.delete_version("f", 1).unwrap());
            assert!(
                s.get_bundle(&v.code_sha256).unwrap().is_none(),
                "nothing refers to it any more"
            );
            // Deleting a function collects its layers' bundles too.
            let v = s
                .publish_layer_version("deps", &LayerMeta::default(), b"again", &q)
                .unwrap();
            s.put_function(&config("g", vec![reference(&v)]), b"g")
                .unwrap();
            s.delete_layer_version("deps", v.version).unwrap();
            assert!(s.delete_function("g").unwrap());
            assert!(s.get_bundle(&v.code_sha256).unwrap().is_none());
        }
    }

    #[test]
    fn layers_count_against_the_tenants_code_quota() {
        for (_, s) in crate::testing::stores() {
            let q = TenantQuotas {
                code_mib: 1,
                ..TenantQuotas::default()
            };
            s.publish_layer_version("acme.a", &LayerMeta::default(), &[1u8; 700 * 1024], &q)
                .unwrap();
            let e = s
                .publish_layer_version("acme.b", &LayerMeta::default(), &[2u8; 700 * 1024], &q)
                .unwrap_err();
            assert!(matches!(e, StoreError::QuotaExceeded { .. }), "{e}");
            assert!(s.layer_versions("acme.b").unwrap().is_empty());
            let e = s
                .put_function_within(&config("acme.f", Vec::new()), &[3u8; 700 * 1024], &q)
                .unwrap_err();
            assert!(matches!(e, StoreError::QuotaExceeded { .. }), "{e}");
        }
    }

    #[test]
    fn layer_names_follow_lambdas_alphabet() {
        assert!(validate_layer_name("my-layer_1").is_ok());
        for bad in ["", "a.b", "a:b", "../x", &"a".repeat(141)] {
            assert!(validate_layer_name(bad).is_err(), "{bad:?}");
        }
    }
}
