//! Functions' asynchronous invocation settings (Lambda's `FunctionEventInvokeConfig`), per
//! function and qualifier, kept as the API wrote them (JSON) and deleted with the function.

use crate::sql::{vals, Row};
use crate::store::{now, Store, StoreError};

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
        self.with(|db| {
            db.execute(
                "INSERT INTO event_invoke_configs (function, qualifier, config, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (function, qualifier) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
                &vals![function, qualifier.unwrap_or(""), json, t],
            )
        })?;
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
        self.with(|db| {
            db.query_opt(
                "SELECT qualifier, config, updated_at FROM event_invoke_configs WHERE function = $1 AND qualifier = $2",
                &vals![function, qualifier.unwrap_or("")],
            )?
            .map(|r| config_from(&r))
            .transpose()
        })
    }

    /// Every setting of `function`, unqualified first.
    pub fn event_invoke_configs(
        &self,
        function: &str,
    ) -> Result<Vec<EventInvokeConfig>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT qualifier, config, updated_at FROM event_invoke_configs WHERE function = $1 ORDER BY qualifier",
                &vals![function],
            )?
            .iter()
            .map(config_from)
            .collect()
        })
    }

    /// Deletes the settings of `function` at `qualifier`; whether there were any.
    pub fn delete_event_invoke_config(
        &self,
        function: &str,
        qualifier: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM event_invoke_configs WHERE function = $1 AND qualifier = $2",
                &vals![function, qualifier.unwrap_or("")],
            )
        })
        .map(|n| n == 1)
    }
}

fn config_from(r: &Row) -> Result<EventInvokeConfig, StoreError> {
    let q = r.text(0)?;
    Ok(EventInvokeConfig {
        qualifier: (!q.is_empty()).then_some(q),
        json: r.text(1)?,
        updated_at: r.int(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_per_qualifier_are_kept_replaced_and_deleted() {
        for (_, s) in crate::testing::stores() {
            settings_on(&s);
        }
    }

    fn settings_on(s: &Store) {
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
