//! Tenants' quotas: what an operator set per tenant, what a tenant holds, and the writes that
//! check a quota in the same transaction that would pass it (two concurrent deploys cannot
//! together go over).
//!
//! A stored name is `TENANT.NAME`, or a bare name for the default tenant, so a tenant's rows
//! are found by that prefix.

use ignition_types::{QuotaOverrides, TenantQuotas, DEFAULT_TENANT};

use crate::model::{FunctionConfig, FunctionRecord};
use crate::sql::{vals, Sql};
use crate::store::{Store, StoreError};

/// Which quota a write would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Functions.
    Functions,
    /// Versions per function.
    Versions,
    /// Code stored, MiB.
    CodeMib,
    /// Asynchronous invocations queued or running.
    QueuedEvents,
}

impl Quota {
    /// Its server flag, which also names it in messages.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Functions => "--quota-functions",
            Self::Versions => "--quota-versions",
            Self::CodeMib => "--quota-code-mib",
            Self::QueuedEvents => "--quota-queued-events",
        }
    }
}

/// What a tenant holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TenantUsage {
    /// Functions.
    pub functions: u64,
    /// Bytes of code, over its functions and versions, each bundle once.
    pub code_bytes: u64,
    /// Asynchronous invocations queued or running.
    pub queued_events: u64,
}

/// SQL (see [`crate::sql`]) that is true when column `col` names a row of the tenant bound at
/// `${p}`.
pub(crate) fn of_tenant(col: &str, p: usize) -> String {
    format!(
        "(CASE WHEN CAST(${p} AS TEXT) = '{DEFAULT_TENANT}' THEN {col} NOT LIKE '%.%' \
         ELSE substr({col}, 1, length(CAST(${p} AS TEXT)) + 1) = CAST(${p} AS TEXT) || '.' END)"
    )
}

fn tenant_of(stored: &str) -> String {
    ignition_types::FunctionId::from_stored(stored).tenant
}

/// Bytes of the distinct bundles the tenant's functions (but `except`'s `$LATEST`), versions
/// and layer versions refer to, and whether `hash` is among them.
fn code_bytes(
    db: &mut dyn Sql,
    tenant: &str,
    except: &str,
    hash: &str,
) -> Result<(u64, bool), StoreError> {
    let sql = format!(
        "WITH used AS (
           SELECT code_sha256 AS h FROM functions WHERE {} AND name != $2
           UNION SELECT code_sha256 FROM versions WHERE {}
           UNION SELECT code_sha256 FROM layer_versions WHERE {})
         SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT),
                CAST(COALESCE(MAX(CASE WHEN b.sha256 = $3 THEN 1 ELSE 0 END), 0) AS BIGINT)
         FROM bundles b JOIN used ON used.h = b.sha256",
        of_tenant("name", 1),
        of_tenant("function", 1),
        of_tenant("name", 1)
    );
    let r = db.query_one(&sql, &vals![tenant, except, hash])?;
    Ok((u64::try_from(r.int(0)?).unwrap_or(0), r.int(1)? != 0))
}

/// Refuses a bundle of `size` bytes hashing to `hash` when, counted once with what the
/// tenant's code already holds (but `except`'s `$LATEST`), it would pass `quotas`. Call it in
/// the transaction that writes, after [`serialize_tenant`].
pub(crate) fn check_code_quota(
    db: &mut dyn Sql,
    tenant: &str,
    except: &str,
    hash: &str,
    size: usize,
    quotas: &TenantQuotas,
) -> Result<(), StoreError> {
    let (bytes, has) = code_bytes(db, tenant, except, hash)?;
    let after = if has { bytes } else { bytes + size as u64 };
    if after > quotas.code_mib.saturating_mul(1024 * 1024) {
        return Err(StoreError::QuotaExceeded {
            quota: Quota::CodeMib,
            limit: quotas.code_mib,
        });
    }
    Ok(())
}

/// Serializes the rest of the transaction with every other write checked against `tenant`'s
/// quotas, on every node of a shared store.
pub(crate) fn serialize_tenant(db: &mut dyn Sql, tenant: &str) -> Result<(), StoreError> {
    db.serialize(&format!("tenant:{tenant}"))
}

fn count(db: &mut dyn Sql, sql: &str, tenant: &str) -> Result<u64, StoreError> {
    Ok(u64::try_from(db.query_one(sql, &vals![tenant])?.int(0)?).unwrap_or(0))
}

impl Store {
    /// What an operator set for `tenant` (nothing: every default).
    pub fn quota_overrides(&self, tenant: &str) -> Result<QuotaOverrides, StoreError> {
        let text = self.with(|db| {
            db.query_opt(
                "SELECT overrides FROM tenant_quotas WHERE tenant = $1",
                &vals![tenant],
            )?
            .map(|r| r.text(0))
            .transpose()
        })?;
        text.map_or(Ok(QuotaOverrides::default()), |t| {
            serde_json::from_str(&t).map_err(|_| StoreError::Corrupt(format!("quotas of {tenant}")))
        })
    }

    /// Every tenant's overrides.
    pub fn all_quota_overrides(&self) -> Result<Vec<(String, QuotaOverrides)>, StoreError> {
        self.cached(crate::cache::LIMITS, "quotas", |db| {
            db.query(
                "SELECT tenant, overrides FROM tenant_quotas ORDER BY tenant",
                &[],
            )?
            .iter()
            .map(|r| {
                let tenant = r.text(0)?;
                let o = serde_json::from_str(&r.text(1)?)
                    .map_err(|_| StoreError::Corrupt(format!("quotas of {tenant}")))?;
                Ok((tenant, o))
            })
            .collect()
        })
    }

    /// Sets what an operator set for `tenant` (replacing what was set before).
    pub fn set_quota_overrides(
        &self,
        tenant: &str,
        overrides: &QuotaOverrides,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(overrides)
            .map_err(|_| StoreError::Corrupt(format!("quotas of {tenant}")))?;
        self.with(|db| {
            db.notify(crate::cache::LIMITS)?;
            db.execute(
                "INSERT INTO tenant_quotas (tenant, overrides) VALUES ($1, $2)
                 ON CONFLICT (tenant) DO UPDATE SET overrides = excluded.overrides",
                &vals![tenant, text],
            )
        })?;
        Ok(())
    }

    /// What `tenant` holds.
    pub fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage, StoreError> {
        self.with(|db| {
            let functions = count(
                db,
                &format!(
                    "SELECT COUNT(*) FROM functions WHERE {}",
                    of_tenant("name", 1)
                ),
                tenant,
            )?;
            let queued_events = count(
                db,
                &format!(
                    "SELECT COUNT(*) FROM events WHERE status IN ('queued', 'running') AND {}",
                    of_tenant("function", 1)
                ),
                tenant,
            )?;
            let (code_bytes, _) = code_bytes(db, tenant, "", "")?;
            Ok(TenantUsage {
                functions,
                code_bytes,
                queued_events,
            })
        })
    }

    /// [`Store::put_function`], unless it would take the function's tenant past `quotas`
    /// (functions, or code): then [`StoreError::QuotaExceeded`] and nothing is written.
    pub fn put_function_within(
        &self,
        config: &FunctionConfig,
        code_tar: &[u8],
        quotas: &TenantQuotas,
    ) -> Result<FunctionRecord, StoreError> {
        let tenant = tenant_of(&config.name);
        let hash = crate::store::sha256_hex(code_tar);
        // Checked and written in one transaction, serialized with the tenant's other writes.
        self.transaction(|db| {
            serialize_tenant(db, &tenant)?;
            let exists = db
                .query_opt(
                    "SELECT 1 FROM functions WHERE name = $1",
                    &vals![&config.name],
                )?
                .is_some();
            if !exists {
                let n = count(
                    db,
                    &format!(
                        "SELECT COUNT(*) FROM functions WHERE {}",
                        of_tenant("name", 1)
                    ),
                    &tenant,
                )?;
                if n >= quotas.functions {
                    return Err(StoreError::QuotaExceeded {
                        quota: Quota::Functions,
                        limit: quotas.functions,
                    });
                }
            }
            check_code_quota(db, &tenant, &config.name, &hash, code_tar.len(), quotas)?;
            crate::functions::put_function_in(db, config, code_tar)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> FunctionConfig {
        FunctionConfig {
            name: name.into(),
            runtime: crate::Runtime::Python3,
            runtime_name: String::new(),
            handler: "a.b".into(),
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
    fn usage_is_counted_per_tenant_and_quotas_refuse_before_writing() {
        for (_, s) in crate::testing::stores() {
            let q = TenantQuotas {
                functions: 2,
                code_mib: 1,
                ..TenantQuotas::default()
            };
            let half = vec![7u8; 600 * 1024];
            s.put_function_within(&config("acme.a"), &half, &q).unwrap();
            s.put_function_within(&config("acme.b"), &half, &q)
                .expect("the same bundle counts once");
            s.put_function_within(&config("plain"), &[1u8; 900 * 1024], &q)
                .expect("the default tenant is another tenant");
            let e = s
                .put_function_within(&config("acme.c"), b"x", &q)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    StoreError::QuotaExceeded {
                        quota: Quota::Functions,
                        limit: 2
                    }
                ),
                "{e}"
            );
            let e = s
                .put_function_within(&config("acme.a"), &[9u8; 600 * 1024], &q)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    StoreError::QuotaExceeded {
                        quota: Quota::CodeMib,
                        ..
                    }
                ),
                "b still holds the old bundle: {e}"
            );
            assert_eq!(
                s.get_function("acme.a").unwrap().unwrap().code_size,
                600 * 1024,
                "unchanged"
            );
            let u = s.tenant_usage("acme").unwrap();
            assert_eq!((u.functions, u.code_bytes), (2, 600 * 1024));
            let d = s.tenant_usage(DEFAULT_TENANT).unwrap();
            assert_eq!((d.functions, d.code_bytes), (1, 900 * 1024));
            assert!(s.enqueue_event("e1", "acme.a:1", b"{}", 1, 10).unwrap());
            assert_eq!(s.tenant_usage("acme").unwrap().queued_events, 1);
            assert_eq!(s.tenant_usage(DEFAULT_TENANT).unwrap().queued_events, 0);
        }
    }

    #[test]
    fn overrides_are_kept_per_tenant() {
        for (_, s) in crate::testing::stores() {
            assert_eq!(
                s.quota_overrides("acme").unwrap(),
                QuotaOverrides::default()
            );
            let o = QuotaOverrides {
                versions: Some(3),
                ..QuotaOverrides::default()
            };
            s.set_quota_overrides("acme", &o).unwrap();
            s.set_quota_overrides("acme", &o).unwrap();
            assert_eq!(s.quota_overrides("acme").unwrap(), o);
            assert_eq!(
                s.quota_overrides("other").unwrap(),
                QuotaOverrides::default()
            );
        }
    }

    #[test]
    fn versions_and_queued_events_stop_at_their_quotas() {
        for (_, s) in crate::testing::stores() {
            let mut c = config("acme.f");
            s.put_function(&c, b"v1").unwrap();
            assert_eq!(s.publish_version("acme.f", Some(2)).unwrap().unwrap().0, 1);
            c.timeout_s = 4;
            s.put_function(&c, b"v1").unwrap();
            assert_eq!(s.publish_version("acme.f", Some(2)).unwrap().unwrap().0, 2);
            assert_eq!(
                s.publish_version("acme.f", Some(2)).unwrap().unwrap().0,
                2,
                "nothing changed: the newest version, no new one"
            );
            c.timeout_s = 5;
            s.put_function(&c, b"v1").unwrap();
            let e = s.publish_version("acme.f", Some(2)).unwrap_err();
            assert!(
                matches!(
                    e,
                    StoreError::QuotaExceeded {
                        quota: Quota::Versions,
                        limit: 2
                    }
                ),
                "{e}"
            );

            let event = |id: &str, f: &str| crate::NewEvent {
                request_id: id.into(),
                function: f.into(),
                payload: b"{}".to_vec(),
                max_attempts: 1,
                max_age_s: None,
            };
            use crate::Enqueued::*;
            assert_eq!(
                s.enqueue_event_within(&event("1", "acme.f"), 10, Some(2))
                    .unwrap(),
                Stored
            );
            assert_eq!(
                s.enqueue_event_within(&event("2", "acme.f:1"), 10, Some(2))
                    .unwrap(),
                Stored
            );
            assert_eq!(
                s.enqueue_event_within(&event("3", "acme.f"), 10, Some(2))
                    .unwrap(),
                TenantFull
            );
            assert_eq!(
                s.enqueue_event_within(&event("4", "beta.f"), 10, Some(2))
                    .unwrap(),
                Stored,
                "another tenant's quota is its own"
            );
            assert_eq!(
                s.enqueue_event_within(&event("5", "f"), 3, Some(2))
                    .unwrap(),
                NodeFull
            );
        }
    }
}
