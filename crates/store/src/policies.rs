//! Functions' resource policies (Lambda's AddPermission, RemovePermission, GetPolicy): one
//! statement per statement id, per function and qualifier (`""` for the function itself),
//! deleted with the function. The statements are kept as the API wrote them (JSON).

use crate::cache::function_scope;
use crate::sql::vals;
use crate::store::{Store, StoreError};

/// The most bytes of statements one function and qualifier may hold (Lambda's policy limit).
pub const MAX_POLICY_BYTES: usize = 20 * 1024;

/// What [`Store::add_permission`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The statement is in the policy.
    Added,
    /// The policy has a statement with that id already; nothing was written.
    Exists,
}

impl Store {
    /// Adds `statement` as `sid` to the policy of `function` at `qualifier`, unless the policy
    /// would then pass [`MAX_POLICY_BYTES`] (nothing is written then).
    pub fn add_permission(
        &self,
        function: &str,
        qualifier: &str,
        sid: &str,
        statement: &str,
    ) -> Result<Added, StoreError> {
        self.transaction(|db| {
            db.serialize("policies")?;
            db.notify(&function_scope(function))?;
            let exists = db
                .query_opt(
                    "SELECT 1 FROM policies WHERE function = $1 AND qualifier = $2 AND sid = $3",
                    &vals![function, qualifier, sid],
                )?
                .is_some();
            if exists {
                return Ok(Added::Exists);
            }
            let held = db
                .query_one(
                    "SELECT CAST(COALESCE(SUM(LENGTH(statement)), 0) AS BIGINT) FROM policies
                     WHERE function = $1 AND qualifier = $2",
                    &vals![function, qualifier],
                )?
                .int(0)?;
            if usize::try_from(held).unwrap_or(usize::MAX) + statement.len() > MAX_POLICY_BYTES {
                return Err(StoreError::Invalid(format!(
                    "a function's policy holds at most {MAX_POLICY_BYTES} bytes of statements"
                )));
            }
            db.execute(
                "INSERT INTO policies (function, qualifier, sid, statement, seq)
                 VALUES ($1, $2, $3, $4,
                         (SELECT COALESCE(MAX(seq), 0) + 1 FROM policies WHERE function = $1 AND qualifier = $2))",
                &vals![function, qualifier, sid, statement],
            )?;
            Ok(Added::Added)
        })
    }

    /// Removes statement `sid` from the policy of `function` at `qualifier`; whether it was
    /// there.
    pub fn remove_permission(
        &self,
        function: &str,
        qualifier: &str,
        sid: &str,
    ) -> Result<bool, StoreError> {
        self.transaction(|db| {
            db.notify(&function_scope(function))?;
            db.execute(
                "DELETE FROM policies WHERE function = $1 AND qualifier = $2 AND sid = $3",
                &vals![function, qualifier, sid],
            )
        })
        .map(|n| n > 0)
    }

    /// The statements of the policy of `function` at `qualifier`, in the order they were added.
    pub fn policy(&self, function: &str, qualifier: &str) -> Result<Vec<String>, StoreError> {
        self.cached(&function_scope(function), &format!("p:{qualifier}"), |db| {
            db.query(
                "SELECT statement FROM policies WHERE function = $1 AND qualifier = $2 ORDER BY seq",
                &vals![function, qualifier],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_added_once_removed_bounded_and_per_qualifier() {
        for (_, s) in crate::testing::stores() {
            statements_on(&s);
        }
    }

    fn statements_on(s: &Store) {
        assert_eq!(s.add_permission("f", "", "a", "{1}").unwrap(), Added::Added);
        assert_eq!(
            s.add_permission("f", "", "a", "{2}").unwrap(),
            Added::Exists
        );
        assert_eq!(
            s.add_permission("f", "live", "a", "{3}").unwrap(),
            Added::Added
        );
        s.add_permission("f", "", "b", "{4}").unwrap();
        assert_eq!(s.policy("f", "").unwrap(), ["{1}", "{4}"]);
        assert_eq!(s.policy("f", "live").unwrap(), ["{3}"]);
        assert!(s.remove_permission("f", "", "a").unwrap());
        assert!(!s.remove_permission("f", "", "a").unwrap());
        assert_eq!(s.policy("f", "").unwrap(), ["{4}"]);
        let big = "x".repeat(MAX_POLICY_BYTES);
        assert!(matches!(
            s.add_permission("f", "", "big", &big),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(s.policy("f", "").unwrap(), ["{4}"], "nothing written");
    }
}
