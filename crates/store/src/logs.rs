//! Per-function operational records: reserved concurrency, and invocation logs: each invocation's output (Lambda's `START`/`END`/`REPORT` lines around the
//! function's stdout and stderr), bounded per invocation ([`MAX_LOG_BYTES`], the tail kept) and
//! per function (the newest [`KEEP_LOGS`] invocations).

use rusqlite::params;

use crate::sqlite::{now, Store, StoreError};

/// Bytes kept of one invocation's log (its end).
pub const MAX_LOG_BYTES: usize = 64 * 1024;
/// Invocations whose logs are kept per function.
pub const KEEP_LOGS: u32 = 500;

/// One invocation's log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogEntry {
    /// Increases with every entry of the node; `?since=` this to follow.
    pub seq: i64,
    /// The invocation.
    pub request_id: String,
    /// When it finished (Unix seconds).
    pub at: i64,
    /// The log text.
    pub log: String,
}

impl Store {
    /// Keeps the log of `request_id`, dropping the function's oldest beyond [`KEEP_LOGS`].
    pub fn append_log(
        &self,
        function: &str,
        request_id: &str,
        log: &[u8],
    ) -> Result<(), StoreError> {
        let tail = &log[log.len().saturating_sub(MAX_LOG_BYTES)..];
        let text = String::from_utf8_lossy(tail);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO logs (function, request_id, at, log) VALUES (?1, ?2, ?3, ?4)",
            params![function, request_id, now(), text],
        )?;
        tx.execute(
            "DELETE FROM logs WHERE function = ?1 AND seq NOT IN
               (SELECT seq FROM logs WHERE function = ?1 ORDER BY seq DESC LIMIT ?2)",
            params![function, KEEP_LOGS],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The function's logs after `since` (oldest first), at most `limit`; or the one of
    /// `request_id`.
    pub fn logs(
        &self,
        function: &str,
        since: i64,
        request_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, request_id, at, log FROM logs
             WHERE function = ?1 AND seq > ?2 AND (?3 IS NULL OR request_id = ?3)
             ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![function, since, request_id, limit], |r| {
            Ok(LogEntry {
                seq: r.get(0)?,
                request_id: r.get(1)?,
                at: r.get(2)?,
                log: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets (or, with `None`, removes) a function's reserved concurrency.
    pub fn set_reserved_concurrency(
        &self,
        function: &str,
        reserved: Option<u32>,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        match reserved {
            Some(r) => conn.execute(
                "INSERT OR REPLACE INTO reserved_concurrency (function, reserved) VALUES (?1, ?2)",
                params![function, r],
            )?,
            None => conn.execute(
                "DELETE FROM reserved_concurrency WHERE function = ?1",
                params![function],
            )?,
        };
        Ok(())
    }

    /// Every reservation.
    pub fn reserved_concurrency(
        &self,
    ) -> Result<std::collections::HashMap<String, u32>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT function, reserved FROM reserved_concurrency")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes a function's logs (with the function).
    pub fn delete_logs(&self, function: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM logs WHERE function = ?1", params![function])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_per_invocation_and_followed_by_seq() {
        let s = Store::in_memory().unwrap();
        s.append_log("f", "r1", b"first\n").unwrap();
        let big = vec![b'x'; MAX_LOG_BYTES + 10];
        s.append_log("f", "r2", &big).unwrap();
        s.append_log("g", "r3", b"other\n").unwrap();
        let all = s.logs("f", 0, None, 100).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].log, "first\n");
        assert_eq!(all[1].log.len(), MAX_LOG_BYTES, "the tail is kept");
        let after = s.logs("f", all[0].seq, None, 100).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(s.logs("f", 0, Some("r1"), 100).unwrap()[0].request_id, "r1");
        s.delete_logs("f").unwrap();
        assert!(s.logs("f", 0, None, 100).unwrap().is_empty());
        assert_eq!(s.logs("g", 0, None, 100).unwrap().len(), 1);
    }
}
