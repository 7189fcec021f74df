//! Functions' asynchronous invocation settings (Lambda's `FunctionEventInvokeConfig`), per
//! function and qualifier, kept as the API wrote them (JSON) and deleted with the function.

use rusqlite::{params, OptionalExtension};

use crate::sqlite::{now, Store, StoreError};

/// One stored setting: its qualifier (`None`: `$LATEST`), the API's JSON, when it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInvokeConfig {
    /// The version or alias it is for; `None`: the unqualified function.
    pub qualifier: Option<String>,
    /// The settings, as the API wrote them.
    pub json: String,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Store {
    /// Sets (replacing) the settings of `function` at `qualifier`.
    pub fn put_event_invoke_config(
        &self,
        function: &str,
        qualifier: Option<&str>,
        json: &str,
    ) -> Result<EventInvokeConfig, StoreError> {
        let t = now();
        self.conn().execute(
            "INSERT INTO event_invoke_configs (function, qualifier, config, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (function, qualifier) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
            params![function, qualifier.unwrap_or(""), json, t],
        )?;
        Ok(EventInvokeConfig {
            qualifier: qualifier.map(str::to_owned),
            json: json.to_owned(),
            updated_at: t,
        })
    }

    /// The settings of `function` at `qualifier`.
    pub fn event_invoke_config(
        &self,
        function: &str,
        qualifier: Option<&str>,
    ) -> Result<Option<EventInvokeConfig>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT config, updated_at FROM event_invoke_configs WHERE function = ?1 AND qualifier = ?2",
                params![function, qualifier.unwrap_or("")],
                |r| {
                    Ok(EventInvokeConfig {
                        qualifier: qualifier.map(str::to_owned),
                        json: r.get(0)?,
                        updated_at: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every setting of `function`, unqualified first.
    pub fn event_invoke_configs(
        &self,
        function: &str,
    ) -> Result<Vec<EventInvokeConfig>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT qualifier, config, updated_at FROM event_invoke_configs WHERE function = ?1 ORDER BY qualifier",
        )?;
        let rows = stmt.query_map(params![function], |r| {
            let q: String = r.get(0)?;
            Ok(EventInvokeConfig {
                qualifier: (!q.is_empty()).then_some(q),
                json: r.get(1)?,
                updated_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the settings of `function` at `qualifier`; whether there were any.
    pub fn delete_event_invoke_config(
        &self,
        function: &str,
        qualifier: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "DELETE FROM event_invoke_configs WHERE function = ?1 AND qualifier = ?2",
            params![function, qualifier.unwrap_or("")],
        )? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_per_qualifier_are_kept_replaced_and_deleted() {
        let s = Store::in_memory().unwrap();
        s.put_event_invoke_config("f", None, r#"{"a":1}"#).unwrap();
        s.put_event_invoke_config("f", Some("live"), r#"{"b":2}"#)
            .unwrap();
        s.put_event_invoke_config("f", None, r#"{"a":3}"#).unwrap();
        assert_eq!(
            s.event_invoke_config("f", None).unwrap().unwrap().json,
            r#"{"a":3}"#
        );
        let all = s.event_invoke_configs("f").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].qualifier.as_deref(), Some("live"));
        assert!(s.delete_event_invoke_config("f", Some("live")).unwrap());
        assert!(!s.delete_event_invoke_config("f", Some("live")).unwrap());
        assert!(s.event_invoke_config("f", Some("live")).unwrap().is_none());
    }
}
