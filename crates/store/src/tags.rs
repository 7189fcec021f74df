//! Functions' tags (Lambda's TagResource, UntagResource, ListTags): key-value pairs per
//! function, deleted with it.

use std::collections::BTreeMap;

use crate::sql::vals;
use crate::store::{Store, StoreError};

/// Tags a function may have (Lambda's limit).
pub const MAX_TAGS: usize = 50;

impl Store {
    /// The tags of `function`.
    pub fn tags(&self, function: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT key, value FROM tags WHERE function = $1",
                &vals![function],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect()
        })
    }

    /// Adds or replaces `tags` on `function`, unless it would then have more than
    /// [`MAX_TAGS`]: then nothing is written.
    pub fn tag(&self, function: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
        self.transaction(|db| {
            for (k, v) in tags {
                db.execute(
                    "INSERT INTO tags (function, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (function, key) DO UPDATE SET value = excluded.value",
                    &vals![function, k, v],
                )?;
            }
            let n = db
                .query_one(
                    "SELECT COUNT(*) FROM tags WHERE function = $1",
                    &vals![function],
                )?
                .int(0)?;
            if usize::try_from(n).unwrap_or(usize::MAX) > MAX_TAGS {
                return Err(StoreError::Invalid(format!(
                    "a function has at most {MAX_TAGS} tags"
                )));
            }
            Ok(())
        })
    }

    /// Removes the tags `keys` from `function` (keys it does not have are ignored).
    pub fn untag(&self, function: &str, keys: &[String]) -> Result<(), StoreError> {
        self.transaction(|db| {
            for k in keys {
                db.execute(
                    "DELETE FROM tags WHERE function = $1 AND key = $2",
                    &vals![function, k],
                )?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_set_replaced_removed_and_bounded() {
        for (_, s) in crate::testing::stores() {
            tags_on(&s);
        }
    }

    fn tags_on(s: &Store) {
        let t = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        s.tag("f", &t(&[("team", "a"), ("env", "dev")])).unwrap();
        s.tag("f", &t(&[("env", "prod")])).unwrap();
        assert_eq!(s.tags("f").unwrap(), t(&[("env", "prod"), ("team", "a")]));
        s.untag("f", &["team".into(), "nope".into()]).unwrap();
        assert_eq!(s.tags("f").unwrap(), t(&[("env", "prod")]));
        let many: BTreeMap<String, String> = (0..MAX_TAGS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(s.tag("f", &many).is_err(), "51 with env");
        assert_eq!(s.tags("f").unwrap().len(), 1, "nothing written");
    }
}
