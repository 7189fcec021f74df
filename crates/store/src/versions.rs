//! Published versions (immutable snapshots of a function's configuration and code) and aliases
//! (names pointing at a version). A version keeps its code bundle alive after `$LATEST` moves
//! on; deleting the function deletes its versions and aliases.

use crate::bundles::{gc_bundle, layer_hashes};
use crate::cache::function_scope;
use crate::model::{FunctionConfig, FunctionRecord};
use crate::sql::{vals, Row, Sql};
use crate::store::{now, Store, StoreError};

/// An alias.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alias {
    /// Its name.
    pub name: String,
    /// The version it points at.
    pub version: u32,
    /// Free text.
    pub description: String,
    /// A second version that takes a share of the alias's invocations (Lambda's
    /// `RoutingConfig.AdditionalVersionWeights`).
    pub routing: Option<Routing>,
}

/// A weighted second version of an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Routing {
    /// The version.
    pub version: u32,
    /// Its share of the invocations, in millionths.
    pub ppm: u32,
}

/// An alias from a row whose columns from `first` are name, version, description,
/// routing_version, routing_ppm.
fn alias_from(r: &Row, first: usize) -> Result<Alias, StoreError> {
    let number = |i: usize| -> Result<Option<u32>, StoreError> {
        r.opt_int(i)?
            .map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("alias column {i}"))))
            .transpose()
    };
    let version = number(first + 1)?.ok_or_else(|| StoreError::Corrupt("an alias".into()))?;
    Ok(Alias {
        name: r.text(first)?,
        version,
        description: r.text(first + 2)?,
        routing: number(first + 3)?
            .zip(number(first + 4)?)
            .map(|(version, ppm)| Routing { version, ppm }),
    })
}

fn version_number(r: &Row, i: usize) -> Result<u32, StoreError> {
    u32::try_from(r.int(i)?).map_err(|_| StoreError::Corrupt("a version number".into()))
}

const ALIAS_COLUMNS: &str = "name, version, description, routing_version, routing_ppm";

/// Checks an alias name: 1-128 of letters, digits, `-` and `_`, not all digits.
pub fn validate_alias(name: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.chars().all(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "alias name {name:?} must be 1-128 of letters, digits, '-' and '_', not only digits"
        ))
    }
}

/// The bundles version `n` of `function` refers to (its code's, its layers'), if it exists.
fn version_bundles(
    db: &mut dyn Sql,
    function: &str,
    n: u32,
) -> Result<Option<Vec<String>>, StoreError> {
    db.query_opt(
        "SELECT code_sha256, config FROM versions WHERE function = $1 AND version = $2",
        &vals![function, n],
    )?
    .map(|r| {
        Ok(std::iter::once(r.text(0)?)
            .chain(layer_hashes(&r.text(1)?))
            .collect())
    })
    .transpose()
}

fn decode(function: &str, config: &str) -> Result<FunctionConfig, StoreError> {
    serde_json::from_str(config).map_err(|_| StoreError::Corrupt(function.to_owned()))
}

impl Store {
    /// Publishes `$LATEST` of `function` as a new version, unless the newest version already
    /// has the same code and configuration (then that one is returned, as Lambda does).
    /// With `max_versions`, a new version that would make more is refused
    /// ([`StoreError::QuotaExceeded`]). Publishing is serialized per function across every
    /// node of a shared store: two nodes publishing at once get different numbers.
    pub fn publish_version(
        &self,
        function: &str,
        max_versions: Option<u64>,
    ) -> Result<Option<(u32, FunctionRecord)>, StoreError> {
        self.transaction(|db| {
            crate::functions::serialize_function(db, function)?;
            db.notify(&function_scope(function))?;
            let Some(latest) = crate::functions::get_function_in(db, function)? else {
                return Ok(None);
            };
            let config = serde_json::to_string(&latest.config)
                .map_err(|_| StoreError::Corrupt(function.to_owned()))?;
            let newest = db.query_opt(
                "SELECT version, config, code_sha256 FROM versions WHERE function = $1
                 ORDER BY version DESC LIMIT 1",
                &vals![function],
            )?;
            if let Some(r) = &newest {
                if r.text(1)? == config && r.text(2)? == latest.code_sha256 {
                    return Ok(Some((version_number(r, 0)?, latest)));
                }
            }
            if let Some(max) = max_versions {
                let count = db
                    .query_one(
                        "SELECT COUNT(*) FROM versions WHERE function = $1",
                        &vals![function],
                    )?
                    .int(0)?;
                if u64::try_from(count).unwrap_or(0) >= max {
                    return Err(StoreError::QuotaExceeded {
                        quota: crate::quotas::Quota::Versions,
                        limit: max,
                    });
                }
            }
            let n = match &newest {
                Some(r) => version_number(r, 0)? + 1,
                None => 1,
            };
            db.execute(
                "INSERT INTO versions (function, version, config, code_sha256, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &vals![function, n, &config, &latest.code_sha256, now()],
            )?;
            Ok(Some((n, latest)))
        })
    }

    /// Version `n` of `function`.
    pub fn get_version(
        &self,
        function: &str,
        n: u32,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        self.cached(&function_scope(function), &format!("v:{n}"), |db| {
            db.query_opt(
                "SELECT v.config, v.code_sha256, b.size, v.created_at FROM versions v
                 JOIN bundles b ON b.sha256 = v.code_sha256
                 WHERE v.function = $1 AND v.version = $2",
                &vals![function, n],
            )?
            .map(|r| {
                let at = r.int(3)?;
                Ok(FunctionRecord {
                    config: decode(function, &r.text(0)?)?,
                    code_sha256: r.text(1)?,
                    code_size: u64::try_from(r.int(2)?).unwrap_or(0),
                    created_at: at,
                    updated_at: at,
                })
            })
            .transpose()
        })
    }

    /// The version numbers of `function`, oldest first.
    pub fn list_versions(&self, function: &str) -> Result<Vec<u32>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT version FROM versions WHERE function = $1 ORDER BY version",
                &vals![function],
            )?
            .iter()
            .map(|r| version_number(r, 0))
            .collect()
        })
    }

    /// Creates (`create`) or updates an alias of `function`. `Ok(false)`: it exists (create) or
    /// does not (update).
    pub fn put_alias(
        &self,
        function: &str,
        alias: &Alias,
        create: bool,
    ) -> Result<bool, StoreError> {
        validate_alias(&alias.name).map_err(StoreError::Invalid)?;
        let sql = if create {
            "INSERT INTO aliases (function, name, version, description, routing_version, routing_ppm)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
        } else {
            "UPDATE aliases SET version = $3, description = $4, routing_version = $5, routing_ppm = $6
             WHERE function = $1 AND name = $2"
        };
        self.transaction(|db| {
            db.notify(&function_scope(function))?;
            db.execute(
                sql,
                &vals![
                    function,
                    &alias.name,
                    alias.version,
                    &alias.description,
                    alias.routing.map(|r| r.version),
                    alias.routing.map(|r| r.ppm)
                ],
            )
        })
        .map(|n| n > 0)
    }

    /// An alias of `function`.
    pub fn get_alias(&self, function: &str, name: &str) -> Result<Option<Alias>, StoreError> {
        self.cached(&function_scope(function), &format!("a:{name}"), |db| {
            db.query_opt(
                &format!("SELECT {ALIAS_COLUMNS} FROM aliases WHERE function = $1 AND name = $2"),
                &vals![function, name],
            )?
            .map(|r| alias_from(&r, 0))
            .transpose()
        })
    }

    /// The aliases of `function`, by name.
    pub fn list_aliases(&self, function: &str) -> Result<Vec<Alias>, StoreError> {
        self.with(|db| {
            db.query(
                &format!("SELECT {ALIAS_COLUMNS} FROM aliases WHERE function = $1 ORDER BY name"),
                &vals![function],
            )?
            .iter()
            .map(|r| alias_from(r, 0))
            .collect()
        })
    }

    /// Deletes version `n` of `function` (and its code if nothing else uses it); whether it
    /// existed.
    pub fn delete_version(&self, function: &str, n: u32) -> Result<bool, StoreError> {
        self.transaction(|db| {
            db.notify(&function_scope(function))?;
            let Some(old) = version_bundles(db, function, n)? else {
                return Ok(false);
            };
            db.execute(
                "DELETE FROM versions WHERE function = $1 AND version = $2",
                &vals![function, n],
            )?;
            for h in old {
                gc_bundle(db, &h)?;
            }
            Ok(true)
        })
    }

    /// Deletes an alias, and its function URL with it; whether it existed.
    pub fn delete_alias(&self, function: &str, name: &str) -> Result<bool, StoreError> {
        self.transaction(|db| {
            db.notify(&function_scope(function))?;
            let n = db.execute(
                "DELETE FROM aliases WHERE function = $1 AND name = $2",
                &vals![function, name],
            )?;
            crate::urls::delete_urls(
                db,
                "function = $1 AND qualifier = $2",
                &vals![function, name],
            )?;
            Ok(n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(handler: &str) -> FunctionConfig {
        FunctionConfig {
            name: "f".into(),
            runtime: crate::Runtime::Python3,
            runtime_name: String::new(),
            handler: handler.into(),
            memory_mib: 128,
            timeout_s: 3,
            env: Default::default(),
            reuse: false,
            egress: Vec::new(),
            description: String::new(),
            layers: Vec::new(),
            image: None,
        }
    }

    #[test]
    fn a_deleted_version_takes_its_code_with_it() {
        for (_, s) in crate::testing::stores() {
            s.put_function(&config("a.x"), b"first code").unwrap();
            let (n, first) = s.publish_version("f", None).unwrap().unwrap();
            s.put_function(&config("a.x"), b"second code").unwrap();
            assert_eq!(
                s.get_bundle(&first.code_sha256).unwrap().unwrap(),
                b"first code",
                "the version keeps its code after $LATEST moved on"
            );
            assert!(s.delete_version("f", n).unwrap());
            assert!(!s.delete_version("f", n).unwrap());
            assert!(
                s.get_bundle(&first.code_sha256).unwrap().is_none(),
                "its code went with it"
            );
        }
    }

    #[test]
    fn versions_are_immutable_and_keep_their_code() {
        for (_, s) in crate::testing::stores() {
            assert!(s.publish_version("f", None).unwrap().is_none());
            s.put_function(&config("a.one"), b"v1 code").unwrap();
            let (n, _) = s.publish_version("f", None).unwrap().unwrap();
            assert_eq!(n, 1);
            assert_eq!(
                s.publish_version("f", None).unwrap().unwrap().0,
                1,
                "nothing changed"
            );
            s.put_function(&config("a.two"), b"v2 code").unwrap();
            assert_eq!(s.publish_version("f", None).unwrap().unwrap().0, 2);
            s.put_function(&config("a.three"), b"v3 code").unwrap();
            let v1 = s.get_version("f", 1).unwrap().unwrap();
            assert_eq!(v1.config.handler, "a.one");
            assert_eq!(
                s.get_bundle(&v1.code_sha256).unwrap().unwrap(),
                b"v1 code",
                "kept alive"
            );
            assert_eq!(s.list_versions("f").unwrap(), vec![1, 2]);

            let alias = Alias {
                name: "live".into(),
                version: 1,
                description: String::new(),
                routing: None,
            };
            assert!(s.put_alias("f", &alias, true).unwrap());
            assert!(!s.put_alias("f", &alias, true).unwrap(), "exists");
            assert!(s
                .put_alias(
                    "f",
                    &Alias {
                        version: 2,
                        ..alias.clone()
                    },
                    false
                )
                .unwrap());
            assert_eq!(s.get_alias("f", "live").unwrap().unwrap().version, 2);
            assert!(s
                .put_alias(
                    "f",
                    &Alias {
                        name: "123".into(),
                        ..alias
                    },
                    true
                )
                .is_err());

            assert!(s.delete_function("f").unwrap());
            assert!(s.list_versions("f").unwrap().is_empty());
            assert!(s.list_aliases("f").unwrap().is_empty());
            assert_eq!(
                s.bundle_count().unwrap(),
                0,
                "every version's bundle went with the function"
            );
        }
    }

    #[test]
    fn an_aliass_weighted_version_is_kept() {
        for (_, s) in crate::testing::stores() {
            let mut alias = Alias {
                name: "live".into(),
                version: 1,
                description: String::new(),
                routing: Some(Routing {
                    version: 2,
                    ppm: 200_000,
                }),
            };
            assert!(s.put_alias("f", &alias, true).unwrap());
            assert_eq!(s.get_alias("f", "live").unwrap().unwrap(), alias);
            alias.routing = None;
            assert!(s.put_alias("f", &alias, false).unwrap());
            assert_eq!(s.list_aliases("f").unwrap(), [alias]);
        }
    }

    /// Two nodes publishing versions of one function at the same time get different numbers.
    #[test]
    fn nodes_publishing_at_once_get_different_numbers() {
        for (backend, a, b, _dir) in crate::testing::two_nodes() {
            let mut numbers = Vec::new();
            for i in 0..10 {
                // Each round changes the code, so that both publishes make a version.
                a.put_function(&config("a.x"), format!("code {i} a").as_bytes())
                    .unwrap();
                let (na, nb) = std::thread::scope(|sc| {
                    let ha = sc.spawn(|| a.publish_version("f", None).unwrap().unwrap().0);
                    let hb = sc.spawn(|| {
                        b.put_function(&config("a.x"), format!("code {i} b").as_bytes())
                            .unwrap();
                        b.publish_version("f", None).unwrap().unwrap().0
                    });
                    (ha.join().unwrap(), hb.join().unwrap())
                });
                numbers.extend([na, nb]);
            }
            let listed = a.list_versions("f").unwrap();
            let mut distinct = numbers.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct, listed, "{backend}: {numbers:?}");
        }
    }
}
