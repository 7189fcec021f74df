//! Functions' tags (Lambda's TagResource, UntagResource, ListTags): key-value pairs per
//! function, deleted with it.

use std::collections::BTreeMap;

use rusqlite::params;

use crate::sqlite::{Store, StoreError};

/// Tags a function may have (Lambda's limit).
pub const MAX_TAGS: usize = 50;

impl Store {
    /// The tags of `function`.
    pub fn tags(&self, function: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key, value FROM tags WHERE function = ?1")?;
        let rows = stmt.query_map(params![function], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds or replaces `tags` on `function`, unless it would then have more than
    /// [`MAX_TAGS`]: then nothing is written.
    pub fn tag(&self, function: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (k, v) in tags {
            tx.execute(
                "INSERT INTO tags (function, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (function, key) DO UPDATE SET value = excluded.value",
                params![function, k, v],
            )?;
        }
        let n: i64 = tx.query_row(
            "SELECT COUNT(*) FROM tags WHERE function = ?1",
            params![function],
            |r| r.get(0),
        )?;
        if usize::try_from(n).unwrap_or(usize::MAX) > MAX_TAGS {
            return Err(StoreError::Invalid(format!(
                "a function has at most {MAX_TAGS} tags"
            )));
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes the tags `keys` from `function` (keys it does not have are ignored).
    pub fn untag(&self, function: &str, keys: &[String]) -> Result<(), StoreError> {
        let conn = self.conn();
        for k in keys {
            conn.execute(
                "DELETE FROM tags WHERE function = ?1 AND key = ?2",
                params![function, k],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_set_replaced_removed_and_bounded() {
        let s = Store::in_memory().unwrap();
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
