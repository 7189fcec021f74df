//! Functions: each `$LATEST` configuration with the hash of its code bundle. Replacing or
//! deleting a function collects the bundles (its code's, its layers') nothing else uses.

use crate::bundles::{gc_bundle, layer_hashes, put_bundle};
use crate::cache::function_scope;
use crate::model::{FunctionConfig, FunctionRecord, Runtime};
use crate::sql::{vals, Row, Sql};
use crate::store::{now, sha256_hex, Store, StoreError};

const SELECT: &str = "SELECT f.name, f.runtime, f.handler, f.memory_mib, f.timeout_s, f.env,
    f.code_sha256, b.size, f.created_at, f.updated_at, f.reuse, f.egress, f.description, f.layers, f.image
    FROM functions f JOIN bundles b ON b.sha256 = f.code_sha256";

impl Store {
    /// Creates or replaces a function with its code, atomically.
    pub fn put_function(
        &self,
        config: &FunctionConfig,
        code_tar: &[u8],
    ) -> Result<FunctionRecord, StoreError> {
        self.transaction(|db| put_function_in(db, config, code_tar))
    }

    /// One function.
    pub fn get_function(&self, name: &str) -> Result<Option<FunctionRecord>, StoreError> {
        self.cached(&function_scope(name), "latest", |db| {
            get_function_in(db, name)
        })
    }

    /// All functions, by name.
    pub fn list_functions(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        self.with(|db| {
            db.query(&format!("{SELECT} ORDER BY f.name"), &[])?
                .iter()
                .map(record_from)
                .collect()
        })
    }

    /// Deletes a function with its versions, aliases, URLs, tags, policies and settings;
    /// `false` if there was none.
    pub fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        self.transaction(|db| {
            serialize_function(db, name)?;
            db.notify(&function_scope(name))?;
            let Some(latest) = db.query_opt(
                "SELECT code_sha256, layers FROM functions WHERE name = $1",
                &vals![name],
            )?
            else {
                return Ok(false);
            };
            let mut hashes = vec![latest.text(0)?];
            hashes.extend(layer_hashes(&latest.text(1)?));
            for r in db.query(
                "SELECT code_sha256, config FROM versions WHERE function = $1",
                &vals![name],
            )? {
                hashes.push(r.text(0)?);
                hashes.extend(layer_hashes(&r.text(1)?));
            }
            hashes.sort();
            hashes.dedup();
            db.execute("DELETE FROM functions WHERE name = $1", &vals![name])?;
            crate::urls::delete_urls(db, "function = $1", &vals![name])?;
            for table in [
                "versions",
                "aliases",
                "tags",
                "policies",
                "provisioned",
                "event_invoke_configs",
            ] {
                db.execute(
                    &format!("DELETE FROM {table} WHERE function = $1"),
                    &vals![name],
                )?;
            }
            for h in hashes {
                gc_bundle(db, &h)?;
            }
            Ok(true)
        })
    }
}

/// Serializes the rest of the transaction with every other write of function `name` (on every
/// node of a shared store): what one reads of it stays true until it commits.
pub(crate) fn serialize_function(db: &mut dyn Sql, name: &str) -> Result<(), StoreError> {
    db.serialize(&format!("function:{name}"))
}

/// [`Store::get_function`] inside the caller's transaction.
pub(crate) fn get_function_in(
    db: &mut dyn Sql,
    name: &str,
) -> Result<Option<FunctionRecord>, StoreError> {
    db.query_opt(&format!("{SELECT} WHERE f.name = $1"), &vals![name])?
        .map(|r| record_from(&r))
        .transpose()
}

/// [`Store::put_function`] inside the caller's transaction (so that it can check first).
pub(crate) fn put_function_in(
    db: &mut dyn Sql,
    config: &FunctionConfig,
    code_tar: &[u8],
) -> Result<FunctionRecord, StoreError> {
    let corrupt = |_| StoreError::Corrupt(config.name.clone());
    let hash = sha256_hex(code_tar);
    let env = serde_json::to_string(&config.env).map_err(corrupt)?;
    let egress = serde_json::to_string(&config.egress).map_err(corrupt)?;
    let layers = serde_json::to_string(&config.layers).map_err(corrupt)?;
    let image = config
        .image
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(corrupt)?;
    let t = now();
    serialize_function(db, &config.name)?;
    db.notify(&function_scope(&config.name))?;
    let previous = db.query_opt(
        "SELECT code_sha256, created_at, layers FROM functions WHERE name = $1",
        &vals![&config.name],
    )?;
    put_bundle(db, &hash, code_tar, t)?;
    let created_at = match &previous {
        Some(r) => r.int(1)?,
        None => t,
    };
    // What the function was made with; a name the runtime parses back from.
    let runtime = if config.runtime_name.is_empty() {
        config.runtime.as_str()
    } else {
        config.runtime_name.as_str()
    };
    db.execute(
        "INSERT INTO functions
         (name, runtime, handler, memory_mib, timeout_s, env, code_sha256, created_at, updated_at, reuse, egress, description, layers, image)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (name) DO UPDATE SET
           runtime = excluded.runtime, handler = excluded.handler,
           memory_mib = excluded.memory_mib, timeout_s = excluded.timeout_s, env = excluded.env,
           code_sha256 = excluded.code_sha256, created_at = excluded.created_at,
           updated_at = excluded.updated_at, reuse = excluded.reuse, egress = excluded.egress,
           description = excluded.description, layers = excluded.layers, image = excluded.image",
        &vals![
            &config.name,
            runtime,
            &config.handler,
            config.memory_mib,
            config.timeout_s,
            env,
            &hash,
            created_at,
            t,
            config.reuse,
            egress,
            &config.description,
            layers,
            image
        ],
    )?;
    if let Some(previous) = previous {
        gc_bundle(db, &previous.text(0)?)?;
        for h in layer_hashes(&previous.text(2)?) {
            gc_bundle(db, &h)?;
        }
    }
    Ok(FunctionRecord {
        config: config.clone(),
        code_sha256: hash,
        code_size: code_tar.len() as u64,
        created_at,
        updated_at: t,
    })
}

fn record_from(r: &Row) -> Result<FunctionRecord, StoreError> {
    let name = r.text(0)?;
    let runtime_name = r.text(1)?;
    let image = r.opt_text(14)?;
    let (Ok(runtime), Ok(env), Ok(egress), Ok(layers), Ok(image)) = (
        Runtime::parse(&runtime_name),
        serde_json::from_str(&r.text(5)?),
        serde_json::from_str(&r.text(11)?),
        serde_json::from_str(&r.text(13)?),
        image.as_deref().map(serde_json::from_str).transpose(),
    ) else {
        return Err(StoreError::Corrupt(name));
    };
    let small = |i| u32::try_from(r.int(i)?).map_err(|_| StoreError::Corrupt(name.clone()));
    Ok(FunctionRecord {
        config: FunctionConfig {
            runtime,
            runtime_name,
            handler: r.text(2)?,
            memory_mib: small(3)?,
            timeout_s: small(4)?,
            env,
            reuse: r.int(10)? != 0,
            egress,
            description: r.text(12)?,
            layers,
            image,
            name: name.clone(),
        },
        code_sha256: r.text(6)?,
        code_size: u64::try_from(r.int(7)?).unwrap_or(0),
        created_at: r.int(8)?,
        updated_at: r.int(9)?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config(name: &str) -> FunctionConfig {
        FunctionConfig {
            name: name.into(),
            runtime: Runtime::Python3,
            runtime_name: "python3.11".into(),
            handler: "app.handler".into(),
            memory_mib: 128,
            timeout_s: 3,
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            reuse: name == "b",
            egress: vec!["198.18.0.0/15:443/tcp".parse().unwrap()],
            description: format!("about {name}"),
            layers: Vec::new(),
            image: None,
        }
    }

    #[test]
    fn an_image_function_keeps_its_pinned_image_in_latest_and_in_versions() {
        for (_, s) in crate::testing::stores() {
            let image = ignition_types::FunctionImage {
                uri: "127.0.0.1:5000/hello:1".into(),
                resolved_uri: format!("127.0.0.1:5000/hello@sha256:{}", "b".repeat(64)),
                digest: format!("sha256:{}", "b".repeat(64)),
                run: ignition_types::ImageRunConfig {
                    entrypoint: vec!["/entry".into()],
                    ..Default::default()
                },
                overrides: ignition_types::ImageOverrides {
                    command: Some(vec!["app.handler".into()]),
                    ..Default::default()
                },
            };
            let c = FunctionConfig {
                handler: String::new(),
                runtime: Runtime::Provided,
                runtime_name: String::new(),
                image: Some(image.clone()),
                ..config("img")
            };
            s.put_function(&c, b"").unwrap();
            assert_eq!(
                s.get_function("img").unwrap().unwrap().config.image,
                Some(image.clone())
            );
            let (n, _) = s.publish_version("img", None).unwrap().unwrap();
            let v = s.get_version("img", n).unwrap().unwrap();
            assert_eq!(v.config.image, Some(image.clone()));
            // A bad digest, a relative working directory, layers: each refused by name.
            for bad in [
                ignition_types::FunctionImage {
                    digest: "sha256:xyz".into(),
                    ..image.clone()
                },
                ignition_types::FunctionImage {
                    overrides: ignition_types::ImageOverrides {
                        working_directory: Some("rel".into()),
                        ..Default::default()
                    },
                    ..image.clone()
                },
            ] {
                let c = FunctionConfig {
                    image: Some(bad),
                    ..c.clone()
                };
                assert!(c.validate().is_err());
            }
            let with_layers = FunctionConfig {
                layers: vec![crate::model::LayerRef {
                    arn: "arn:aws:lambda:local:000000000000:layer:l:1".into(),
                    code_sha256: "c".repeat(64),
                    code_size: 1,
                }],
                ..c.clone()
            };
            assert!(with_layers
                .validate()
                .unwrap_err()
                .to_string()
                .contains("layers"));
        }
    }

    #[test]
    fn put_get_list_delete() {
        for (_, s) in crate::testing::stores() {
            let rec = s.put_function(&config("b"), b"code-b").unwrap();
            s.put_function(&config("a"), b"code-a").unwrap();
            assert_eq!(rec.code_sha256, sha256_hex(b"code-b"));
            let got = s.get_function("b").unwrap().unwrap();
            assert_eq!(got.config, config("b"));
            assert_eq!(got.code_size, 6);
            assert_eq!(s.get_bundle(&got.code_sha256).unwrap().unwrap(), b"code-b");
            let names: Vec<_> = s
                .list_functions()
                .unwrap()
                .into_iter()
                .map(|r| r.config.name)
                .collect();
            assert_eq!(names, ["a", "b"]);
            assert!(s.delete_function("b").unwrap());
            assert!(!s.delete_function("b").unwrap());
            assert!(s.get_function("b").unwrap().is_none());
            assert!(
                s.get_bundle(&rec.code_sha256).unwrap().is_none(),
                "unreferenced bundle removed"
            );
        }
    }

    #[test]
    fn bundles_are_shared_by_hash_and_collected_on_update() {
        for (_, s) in crate::testing::stores() {
            s.put_function(&config("a"), b"same").unwrap();
            s.put_function(&config("b"), b"same").unwrap();
            assert_eq!(s.bundle_count().unwrap(), 1);
            let first = s.get_function("a").unwrap().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            s.put_function(&config("a"), b"new code").unwrap();
            assert_eq!(s.bundle_count().unwrap(), 2, "old bundle still used by b");
            let updated = s.get_function("a").unwrap().unwrap();
            assert_eq!(
                updated.created_at, first.created_at,
                "update keeps creation time"
            );
            s.put_function(&config("b"), b"new code").unwrap();
            assert_eq!(s.bundle_count().unwrap(), 1, "old bundle collected");
        }
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path())
            .unwrap()
            .put_function(&config("a"), b"x")
            .unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get_function("a").unwrap().unwrap().config, config("a"));
    }
}
