//! Per-function operational records: reserved concurrency, and invocation logs: each invocation's output (Lambda's `START`/`END`/`REPORT` lines around the
//! function's stdout and stderr), bounded per invocation ([`MAX_LOG_BYTES`], the tail kept) and
//! per function (the newest [`KEEP_LOGS`] invocations).

use crate::sql::vals;
use crate::store::{now, Store, StoreError};

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
        self.append_logs(&[(function, request_id, log)])
    }

    /// Keeps each (function, request id, log) of `logs` in one transaction, in order (a
    /// request id's log replaces the one it had), dropping each function's oldest beyond
    /// [`KEEP_LOGS`].
    pub fn append_logs(&self, logs: &[(&str, &str, &[u8])]) -> Result<(), StoreError> {
        let at = now();
        self.transaction(|db| {
            let mut functions = std::collections::BTreeSet::new();
            for &(function, request_id, log) in logs {
                let tail = &log[log.len().saturating_sub(MAX_LOG_BYTES)..];
                // PostgreSQL's text holds no NUL; a function's output may (it is the
                // function's).
                let text = String::from_utf8_lossy(tail).replace('\0', "\u{FFFD}");
                db.execute("DELETE FROM logs WHERE request_id = $1", &vals![request_id])?;
                db.execute(
                    "INSERT INTO logs (function, request_id, at, log) VALUES ($1, $2, $3, $4)",
                    &vals![function, request_id, at, text],
                )?;
                functions.insert(function);
            }
            for function in functions {
                db.execute(
                    "DELETE FROM logs WHERE function = $1 AND seq NOT IN
                       (SELECT seq FROM logs WHERE function = $1 ORDER BY seq DESC LIMIT $2)",
                    &vals![function, KEEP_LOGS],
                )?;
            }
            Ok(())
        })
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
        self.with(|db| {
            db.query(
                "SELECT seq, request_id, at, log FROM logs
                 WHERE function = $1 AND seq > $2 AND (CAST($3 AS TEXT) IS NULL OR request_id = $3)
                 ORDER BY seq LIMIT $4",
                &vals![function, since, request_id, limit],
            )?
            .iter()
            .map(|r| {
                Ok(LogEntry {
                    seq: r.int(0)?,
                    request_id: r.text(1)?,
                    at: r.int(2)?,
                    log: r.text(3)?,
                })
            })
            .collect()
        })
    }

    /// Removes a function's logs (with the function).
    pub fn delete_logs(&self, function: &str) -> Result<(), StoreError> {
        self.with(|db| db.execute("DELETE FROM logs WHERE function = $1", &vals![function]))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_per_invocation_and_followed_by_seq() {
        for (_, s) in crate::testing::stores() {
            logs_on(&s);
        }
    }

    fn logs_on(s: &Store) {
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

        // A function's output is its own: a NUL in it is kept as a replacement character.
        s.append_log("h", "r4", b"a\0b").unwrap();
        assert_eq!(s.logs("h", 0, None, 1).unwrap()[0].log, "a\u{FFFD}b");
        // The same request logged again is one entry, the newer.
        s.append_log("h", "r4", b"again").unwrap();
        let h = s.logs("h", 0, None, 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].log, "again");
        // A batch is kept in order, each function trimmed to its last KEEP_LOGS.
        let ids: Vec<String> = (0..KEEP_LOGS + 3).map(|i| format!("b{i}")).collect();
        let mut batch: Vec<(&str, &str, &[u8])> = ids
            .iter()
            .map(|id| ("k", id.as_str(), id.as_bytes()))
            .collect();
        batch.push(("h", "r4", b"third"));
        s.append_logs(&batch).unwrap();
        let k = s.logs("k", 0, None, 1000).unwrap();
        assert_eq!(k.len(), KEEP_LOGS as usize);
        assert_eq!(k.last().unwrap().log, format!("b{}", KEEP_LOGS + 2));
        assert_eq!(s.logs("h", 0, None, 10).unwrap()[0].log, "third");
    }
}
