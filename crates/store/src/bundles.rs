//! Code bundles: each stored once per content hash (SHA-256 of the canonical tar), so that
//! redeploying the same code costs nothing and a function's record names exactly the code it
//! runs. A bundle nothing refers to any more is removed in the transaction that dropped the
//! last reference.
//!
//! On SQLite a bundle is one row. On PostgreSQL it is split into rows of [`CHUNK`] bytes: a
//! value is read and written whole, and nodes fetch a bundle once and cache it by its hash.

use crate::sql::{vals, Dialect, Sql};
use crate::store::{Store, StoreError};

/// Bytes per row of a bundle on PostgreSQL.
const CHUNK: usize = 1024 * 1024;

/// Stores `code` under `hash` unless it is there already.
pub(crate) fn put_bundle(
    db: &mut dyn Sql,
    hash: &str,
    code: &[u8],
    at: i64,
) -> Result<(), StoreError> {
    let size = i64::try_from(code.len()).unwrap_or(i64::MAX);
    match db.dialect() {
        Dialect::Sqlite => {
            db.execute(
                "INSERT INTO bundles (sha256, size, data, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &vals![hash, size, code, at],
            )?;
        }
        Dialect::Postgres => {
            let inserted = db.execute(
                "INSERT INTO bundles (sha256, size, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &vals![hash, size, at],
            )?;
            if inserted == 1 {
                for (seq, chunk) in (0i64..).zip(code.chunks(CHUNK)) {
                    db.execute(
                        "INSERT INTO bundle_chunks (sha256, seq, data) VALUES ($1, $2, $3)",
                        &vals![hash, seq, chunk],
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The bundle `hash`, if stored.
pub(crate) fn read_bundle(db: &mut dyn Sql, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
    match db.dialect() {
        Dialect::Sqlite => db
            .query_opt("SELECT data FROM bundles WHERE sha256 = $1", &vals![hash])?
            .map(|r| r.bytes(0))
            .transpose(),
        Dialect::Postgres => {
            let Some(size) = db
                .query_opt("SELECT size FROM bundles WHERE sha256 = $1", &vals![hash])?
                .map(|r| r.int(0))
                .transpose()?
            else {
                return Ok(None);
            };
            let mut code = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            for r in db.query(
                "SELECT data FROM bundle_chunks WHERE sha256 = $1 ORDER BY seq",
                &vals![hash],
            )? {
                code.extend_from_slice(&r.bytes(0)?);
            }
            if i64::try_from(code.len()).ok() != Some(size) {
                return Err(StoreError::Corrupt(format!("bundle {hash}")));
            }
            Ok(Some(code))
        }
    }
}

/// Drops the bundle `hash` unless a function, a version or a layer version still refers to
/// it (functions and versions name their layers' bundles in their JSON: a hash is 64 hex
/// digits, which nothing else in it can contain).
pub(crate) fn gc_bundle(db: &mut dyn Sql, hash: &str) -> Result<(), StoreError> {
    db.execute(
        "DELETE FROM bundles WHERE sha256 = $1
         AND NOT EXISTS (SELECT 1 FROM functions
                         WHERE code_sha256 = $1 OR layers LIKE '%' || CAST($1 AS TEXT) || '%')
         AND NOT EXISTS (SELECT 1 FROM versions
                         WHERE code_sha256 = $1 OR config LIKE '%' || CAST($1 AS TEXT) || '%')
         AND NOT EXISTS (SELECT 1 FROM layer_versions WHERE code_sha256 = $1)",
        &vals![hash],
    )?;
    Ok(())
}

/// The bundles of the layers in a stored `layers` column or version configuration.
pub(crate) fn layer_hashes(json: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Layers {
        #[serde(default)]
        layers: Vec<crate::model::LayerRef>,
    }
    serde_json::from_str::<Vec<crate::model::LayerRef>>(json)
        .or_else(|_| serde_json::from_str::<Layers>(json).map(|l| l.layers))
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.code_sha256)
        .collect()
}

impl Store {
    /// A bundle's canonical tar by hash.
    pub fn get_bundle(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|db| read_bundle(db, sha256))
    }

    /// Number of stored bundles.
    pub fn bundle_count(&self) -> Result<u64, StoreError> {
        let n = self.with(|db| db.query_one("SELECT COUNT(*) FROM bundles", &[])?.int(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_stored_once_read_back_whole_and_collected() {
        for (backend, s) in crate::testing::stores() {
            // Over several chunks, the last one short.
            let code: Vec<u8> = (0..(2 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
            let hash = crate::sha256_hex(&code);
            s.transaction(|db| {
                put_bundle(db, &hash, &code, 1)?;
                put_bundle(db, &hash, &code, 2)
            })
            .unwrap();
            assert_eq!(s.bundle_count().unwrap(), 1, "{backend}");
            assert_eq!(s.get_bundle(&hash).unwrap().unwrap(), code, "{backend}");
            assert_eq!(s.get_bundle(&"0".repeat(64)).unwrap(), None);
            s.transaction(|db| gc_bundle(db, &hash)).unwrap();
            assert_eq!(s.get_bundle(&hash).unwrap(), None, "nothing refers to it");
            assert_eq!(s.bundle_count().unwrap(), 0);
            // An empty bundle is a bundle too.
            let empty = crate::sha256_hex(b"");
            s.transaction(|db| put_bundle(db, &empty, b"", 1)).unwrap();
            assert_eq!(s.get_bundle(&empty).unwrap(), Some(Vec::new()));
        }
    }
}
