//! Published versions (immutable snapshots of a function's configuration and code) and aliases
//! (names pointing at a version). A version keeps its code bundle alive after `$LATEST` moves
//! on; deleting the function deletes its versions and aliases.

use rusqlite::{params, OptionalExtension};

use crate::model::{FunctionConfig, FunctionRecord};
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
fn alias_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Alias> {
    let routing_version: Option<u32> = r.get(first + 3)?;
    let routing_ppm: Option<u32> = r.get(first + 4)?;
    Ok(Alias {
        name: r.get(first)?,
        version: r.get(first + 1)?,
        description: r.get(first + 2)?,
        routing: routing_version
            .zip(routing_ppm)
            .map(|(version, ppm)| Routing { version, ppm }),
    })
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
    tx: &rusqlite::Transaction<'_>,
    function: &str,
    n: u32,
) -> Result<Option<Vec<String>>, StoreError> {
    let row: Option<(String, String)> = tx
        .query_row(
            "SELECT code_sha256, config FROM versions WHERE function = ?1 AND version = ?2",
            params![function, n],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map(|(code, config)| {
        std::iter::once(code)
            .chain(crate::sqlite::layer_hashes(&config))
            .collect()
    }))
}

fn decode(function: &str, config: &str) -> Result<FunctionConfig, StoreError> {
    serde_json::from_str(config).map_err(|_| StoreError::Corrupt(function.to_owned()))
}

impl Store {
    /// Publishes `$LATEST` of `function` as a new version, unless the newest version already
    /// has the same code and configuration (then that one is returned, as Lambda does).
    /// With `max_versions`, a new version that would make more is refused
    /// ([`StoreError::QuotaExceeded`]).
    pub fn publish_version(
        &self,
        function: &str,
        max_versions: Option<u64>,
    ) -> Result<Option<(u32, FunctionRecord)>, StoreError> {
        let Some(latest) = self.get_function(function)? else {
            return Ok(None);
        };
        let config = serde_json::to_string(&latest.config)
            .map_err(|_| StoreError::Corrupt(function.to_owned()))?;
        let mut conn = self.lite()?;
        let tx = conn.transaction()?;
        let newest: Option<(u32, String, String)> = tx
            .query_row(
                "SELECT version, config, code_sha256 FROM versions WHERE function = ?1
                 ORDER BY version DESC LIMIT 1",
                params![function],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((n, c, sha)) = &newest {
            if *c == config && *sha == latest.code_sha256 {
                tx.commit()?;
                return Ok(Some((*n, latest)));
            }
        }
        if let Some(max) = max_versions {
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM versions WHERE function = ?1",
                params![function],
                |r| r.get(0),
            )?;
            if u64::try_from(count).unwrap_or(0) >= max {
                return Err(StoreError::QuotaExceeded {
                    quota: crate::quotas::Quota::Versions,
                    limit: max,
                });
            }
        }
        let n = newest.map_or(1, |(n, _, _)| n + 1);
        tx.execute(
            "INSERT INTO versions (function, version, config, code_sha256, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![function, n, config, latest.code_sha256, now()],
        )?;
        tx.commit()?;
        Ok(Some((n, latest)))
    }

    /// Version `n` of `function`.
    pub fn get_version(
        &self,
        function: &str,
        n: u32,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        let conn = self.lite()?;
        let row: Option<(String, String, i64, i64)> = conn
            .query_row(
                "SELECT v.config, v.code_sha256, b.size, v.created_at FROM versions v
                 JOIN bundles b ON b.sha256 = v.code_sha256
                 WHERE v.function = ?1 AND v.version = ?2",
                params![function, n],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        row.map(|(config, sha, size, at)| {
            Ok(FunctionRecord {
                config: decode(function, &config)?,
                code_sha256: sha,
                code_size: u64::try_from(size).unwrap_or(0),
                created_at: at,
                updated_at: at,
            })
        })
        .transpose()
    }

    /// The version numbers of `function`, oldest first.
    pub fn list_versions(&self, function: &str) -> Result<Vec<u32>, StoreError> {
        let conn = self.lite()?;
        let mut stmt =
            conn.prepare("SELECT version FROM versions WHERE function = ?1 ORDER BY version")?;
        let rows = stmt.query_map(params![function], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
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
        let conn = self.lite()?;
        let sql = if create {
            "INSERT OR IGNORE INTO aliases (function, name, version, description, routing_version, routing_ppm)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        } else {
            "UPDATE aliases SET version = ?3, description = ?4, routing_version = ?5, routing_ppm = ?6
             WHERE function = ?1 AND name = ?2"
        };
        Ok(conn.execute(
            sql,
            params![
                function,
                alias.name,
                alias.version,
                alias.description,
                alias.routing.map(|r| r.version),
                alias.routing.map(|r| r.ppm)
            ],
        )? > 0)
    }

    /// An alias of `function`.
    pub fn get_alias(&self, function: &str, name: &str) -> Result<Option<Alias>, StoreError> {
        Ok(self
            .lite()?
            .query_row(
                &format!("SELECT {ALIAS_COLUMNS} FROM aliases WHERE function = ?1 AND name = ?2"),
                params![function, name],
                |r| alias_row(r, 0),
            )
            .optional()?)
    }

    /// The aliases of `function`, by name.
    pub fn list_aliases(&self, function: &str) -> Result<Vec<Alias>, StoreError> {
        let conn = self.lite()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {ALIAS_COLUMNS} FROM aliases WHERE function = ?1 ORDER BY name"
        ))?;
        let rows = stmt.query_map(params![function], |r| alias_row(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every published version of every function: (function, version, record), in one query
    /// (the cluster's registry reads this twice a second).
    pub fn all_versions(&self) -> Result<Vec<(String, u32, FunctionRecord)>, StoreError> {
        let conn = self.lite()?;
        let mut stmt = conn.prepare(
            "SELECT v.function, v.version, v.config, v.code_sha256, b.size, v.created_at
             FROM versions v JOIN bundles b ON b.sha256 = v.code_sha256
             ORDER BY v.function, v.version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (function, n, config, sha, size, at) = row?;
            let record = FunctionRecord {
                config: decode(&function, &config)?,
                code_sha256: sha,
                code_size: u64::try_from(size).unwrap_or(0),
                created_at: at,
                updated_at: at,
            };
            Ok((function, n, record))
        })
        .collect()
    }

    /// Stores version `n` of `function` as another node of the cluster published it, with its
    /// code; replaces what this node had under that number.
    pub fn put_version(
        &self,
        function: &str,
        n: u32,
        config: &FunctionConfig,
        code_tar: &[u8],
    ) -> Result<(), StoreError> {
        config
            .validate()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let hash = crate::sha256_hex(code_tar);
        let json =
            serde_json::to_string(config).map_err(|_| StoreError::Corrupt(function.to_owned()))?;
        let mut conn = self.lite()?;
        let tx = conn.transaction()?;
        let old = version_bundles(&tx, function, n)?;
        tx.execute(
            "INSERT OR IGNORE INTO bundles (sha256, size, data, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, code_tar.len() as i64, code_tar, now()],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO versions (function, version, config, code_sha256, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![function, n, json, hash, now()],
        )?;
        for h in old.into_iter().flatten() {
            crate::sqlite::gc_bundle(&tx, &h)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes version `n` of `function` (and its code if nothing else uses it); whether it
    /// existed.
    pub fn delete_version(&self, function: &str, n: u32) -> Result<bool, StoreError> {
        let mut conn = self.lite()?;
        let tx = conn.transaction()?;
        let Some(old) = version_bundles(&tx, function, n)? else {
            return Ok(false);
        };
        tx.execute(
            "DELETE FROM versions WHERE function = ?1 AND version = ?2",
            params![function, n],
        )?;
        for h in old {
            crate::sqlite::gc_bundle(&tx, &h)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Every alias of every function: (function, alias).
    pub fn all_aliases(&self) -> Result<Vec<(String, Alias)>, StoreError> {
        let conn = self.lite()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT function, {ALIAS_COLUMNS} FROM aliases ORDER BY function, name"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, alias_row(r, 1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates or replaces an alias (as another node of the cluster has it).
    pub fn replace_alias(&self, function: &str, alias: &Alias) -> Result<(), StoreError> {
        validate_alias(&alias.name).map_err(StoreError::Invalid)?;
        self.lite()?.execute(
            "INSERT OR REPLACE INTO aliases (function, name, version, description, routing_version, routing_ppm)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                function,
                alias.name,
                alias.version,
                alias.description,
                alias.routing.map(|r| r.version),
                alias.routing.map(|r| r.ppm)
            ],
        )?;
        Ok(())
    }

    /// Deletes an alias, and its function URL with it; whether it existed.
    pub fn delete_alias(&self, function: &str, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.lite()?;
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM aliases WHERE function = ?1 AND name = ?2",
            params![function, name],
        )?;
        tx.execute(
            "DELETE FROM function_urls WHERE function = ?1 AND qualifier = ?2",
            params![function, name],
        )?;
        tx.commit()?;
        Ok(n > 0)
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
    fn versions_and_aliases_made_elsewhere_are_stored_listed_and_removed() {
        let s = Store::in_memory().unwrap();
        s.put_version("f", 3, &config("a.x"), b"remote code")
            .unwrap();
        let all = s.all_versions().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].0.as_str(), all[0].1), ("f", 3));
        assert_eq!(
            s.get_bundle(&all[0].2.code_sha256).unwrap().unwrap(),
            b"remote code"
        );
        let alias = Alias {
            name: "live".into(),
            version: 3,
            description: "d".into(),
            routing: None,
        };
        s.replace_alias("f", &alias).unwrap();
        s.replace_alias("f", &alias).unwrap();
        assert_eq!(s.all_aliases().unwrap(), vec![("f".to_owned(), alias)]);
        let hash = all[0].2.code_sha256.clone();
        assert!(s.delete_version("f", 3).unwrap());
        assert!(!s.delete_version("f", 3).unwrap());
        assert!(
            s.get_bundle(&hash).unwrap().is_none(),
            "its code went with it"
        );
        let mut bad = config("a.x");
        bad.memory_mib = 1;
        assert!(s.put_version("f", 4, &bad, b"x").is_err());
    }

    #[test]
    fn versions_are_immutable_and_keep_their_code() {
        let s = Store::in_memory().unwrap();
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

    #[test]
    fn an_aliass_weighted_version_is_kept() {
        let s = Store::in_memory().unwrap();
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
        assert_eq!(s.list_aliases("f").unwrap(), [alias.clone()]);
        s.replace_alias("f", &alias).unwrap();
        assert_eq!(s.all_aliases().unwrap(), [("f".to_owned(), alias)]);
    }
}
