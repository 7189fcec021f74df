//! Access keys: an access key id and a secret, bound to a tenant. AWS SDKs sign requests with
//! them (Signature V4, which needs the secret itself on the server, as AWS keeps it); the CLI
//! sends them as a bearer token. Created by the operator (`ignition key create`).

use crate::cache::key_scope;
use crate::sql::{vals, Row};
use crate::store::{now, Store, StoreError};
use rand::distributions::{Alphanumeric, DistString};

/// What the tenant column holds for an operator's key: no tenant can have this name (tenants
/// are `[a-z0-9]`), so it never reaches a tenant's functions.
pub const OPERATOR: &str = ":operator";

/// One access key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessKey {
    /// `AKIG...`, 20 characters.
    pub access_key_id: String,
    /// 40 characters.
    pub secret_access_key: String,
    /// Whose functions it reaches ([`OPERATOR`] for an operator's key).
    pub tenant: String,
}

impl AccessKey {
    /// Whether this is an operator's key: node-wide endpoints, no tenant's functions.
    pub fn is_operator(&self) -> bool {
        self.tenant == OPERATOR
    }
}

/// Checks a tenant name: 1 to 16 of `[a-z0-9]`; `runtime` is reserved.
pub fn validate_tenant(tenant: &str) -> Result<(), String> {
    let ok = (1..=16).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err(format!("tenant {tenant:?} must be 1 to 16 of [a-z0-9]"));
    }
    if tenant == "runtime" {
        return Err("tenant \"runtime\" is reserved".to_owned());
    }
    Ok(())
}

impl Store {
    /// Creates a key for `tenant`.
    pub fn create_key(&self, tenant: &str) -> Result<AccessKey, StoreError> {
        validate_tenant(tenant).map_err(StoreError::Invalid)?;
        self.insert_key(tenant)
    }

    /// Creates an operator's key.
    pub fn create_operator_key(&self) -> Result<AccessKey, StoreError> {
        self.insert_key(OPERATOR)
    }

    fn insert_key(&self, tenant: &str) -> Result<AccessKey, StoreError> {
        let mut rng = rand::thread_rng();
        let key = AccessKey {
            access_key_id: format!(
                "AKIG{}",
                Alphanumeric.sample_string(&mut rng, 16).to_uppercase()
            ),
            secret_access_key: Alphanumeric.sample_string(&mut rng, 40),
            tenant: tenant.to_owned(),
        };
        self.transaction(|db| {
            db.notify(&key_scope(&key.access_key_id))?;
            db.execute(
                "INSERT INTO credentials (access_key_id, secret, tenant, created_at) VALUES ($1, $2, $3, $4)",
                &vals![&key.access_key_id, &key.secret_access_key, &key.tenant, now()],
            )
        })?;
        Ok(key)
    }

    /// The key `access_key_id`, if it exists.
    pub fn key(&self, access_key_id: &str) -> Result<Option<AccessKey>, StoreError> {
        self.cached(&key_scope(access_key_id), "key", |db| {
            db.query_opt(
                "SELECT access_key_id, secret, tenant FROM credentials WHERE access_key_id = $1",
                &vals![access_key_id],
            )?
            .map(|r| key_from(&r))
            .transpose()
        })
    }

    /// Every key with its creation time (Unix seconds), by id.
    pub fn list_keys(&self) -> Result<Vec<(AccessKey, i64)>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT access_key_id, secret, tenant, created_at FROM credentials ORDER BY access_key_id",
                &[],
            )?
            .iter()
            .map(|r| Ok((key_from(r)?, r.int(3)?)))
            .collect()
        })
    }

    /// Deletes a key; whether it existed.
    pub fn delete_key(&self, access_key_id: &str) -> Result<bool, StoreError> {
        self.transaction(|db| {
            db.notify(&key_scope(access_key_id))?;
            db.execute(
                "DELETE FROM credentials WHERE access_key_id = $1",
                &vals![access_key_id],
            )
        })
        .map(|n| n > 0)
    }
}

fn key_from(r: &Row) -> Result<AccessKey, StoreError> {
    Ok(AccessKey {
        access_key_id: r.text(0)?,
        secret_access_key: r.text(1)?,
        tenant: r.text(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_found_and_removed() {
        for (_, s) in crate::testing::stores() {
            keys_on(&s);
        }
    }

    fn keys_on(s: &Store) {
        let k = s.create_key("acme").unwrap();
        assert_eq!(k.access_key_id.len(), 20);
        assert_eq!(k.secret_access_key.len(), 40);
        assert_eq!(s.key(&k.access_key_id).unwrap(), Some(k.clone()));
        assert!(s.delete_key(&k.access_key_id).unwrap());
        assert_eq!(s.key(&k.access_key_id).unwrap(), None);
        assert!(!s.delete_key(&k.access_key_id).unwrap());
        assert!(s.list_keys().unwrap().is_empty());
        let op = s.create_operator_key().unwrap();
        assert!(op.is_operator());
        assert_eq!(s.list_keys().unwrap()[0].0, op);
        assert!(s.create_key("Bad Tenant").is_err());
        assert!(s.create_key("runtime").is_err());
    }
}
