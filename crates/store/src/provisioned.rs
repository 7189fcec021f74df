//! Provisioned concurrency (Lambda's `PutProvisionedConcurrencyConfig`): warm slots a version
//! or alias keeps whatever the demand, kept here so that a restarted node provisions them
//! again; deleted with the function.

use crate::sql::vals;
use crate::store::{now, Store, StoreError};

/// One setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The stored function.
    pub function: String,
    /// The version or alias.
    pub qualifier: String,
    /// Slots asked for.
    pub slots: u32,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Store {
    /// Sets the slots `function` at `qualifier` keeps.
    pub fn put_provisioned(
        &self,
        function: &str,
        qualifier: &str,
        slots: u32,
    ) -> Result<Provisioned, StoreError> {
        let t = now();
        self.with(|db| {
            db.execute(
                "INSERT INTO provisioned (function, qualifier, slots, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (function, qualifier) DO UPDATE SET slots = excluded.slots, updated_at = excluded.updated_at",
                &vals![function, qualifier, slots, t],
            )
        })?;
        Ok(Provisioned {
            function: function.to_owned(),
            qualifier: qualifier.to_owned(),
            slots,
            updated_at: t,
        })
    }

    /// Every setting (`function`: of that function only).
    pub fn provisioned(&self, function: Option<&str>) -> Result<Vec<Provisioned>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT function, qualifier, slots, updated_at FROM provisioned
                 WHERE CAST($1 AS TEXT) IS NULL OR function = $1 ORDER BY function, qualifier",
                &vals![function],
            )?
            .iter()
            .map(|r| {
                Ok(Provisioned {
                    function: r.text(0)?,
                    qualifier: r.text(1)?,
                    slots: u32::try_from(r.int(2)?).map_err(|_| {
                        StoreError::Corrupt(format!(
                            "provisioned slots of {}",
                            r.text(0).unwrap_or_default()
                        ))
                    })?,
                    updated_at: r.int(3)?,
                })
            })
            .collect()
        })
    }

    /// Deletes a setting; whether there was one.
    pub fn delete_provisioned(&self, function: &str, qualifier: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM provisioned WHERE function = $1 AND qualifier = $2",
                &vals![function, qualifier],
            )
        })
        .map(|n| n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_kept_per_qualifier() {
        for (_, s) in crate::testing::stores() {
            settings_on(&s);
        }
    }

    fn settings_on(s: &Store) {
        s.put_provisioned("f", "live", 2).unwrap();
        s.put_provisioned("f", "live", 3).unwrap();
        s.put_provisioned("g", "1", 1).unwrap();
        let f = s.provisioned(Some("f")).unwrap();
        assert_eq!((f.len(), f[0].slots), (1, 3));
        assert_eq!(s.provisioned(None).unwrap().len(), 2);
        assert!(s.delete_provisioned("f", "live").unwrap());
        assert!(!s.delete_provisioned("f", "live").unwrap());
    }
}
