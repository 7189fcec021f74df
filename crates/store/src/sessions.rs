//! The web console's sign-in sessions: a random token in an HttpOnly cookie, bound to the
//! access key that signed in and to a token that state-changing requests must echo (CSRF).
//!
//! Only the token's SHA-256 is stored, so a copy of the database opens no session. A session
//! ends at its expiry, when it is signed out, or when its key is deleted (it is found through
//! the key). Sessions live in the store, so a cluster sharing a store shares them.

use rand::distributions::{Alphanumeric, DistString};
use rusqlite::{params, OptionalExtension};

use crate::credentials::AccessKey;
use crate::sqlite::{now, sha256_hex, Store, StoreError};

/// A session found by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The key it was opened with.
    pub key: AccessKey,
    /// What state-changing requests must carry in `x-ignition-csrf`.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A session just opened: the token goes into the cookie and nowhere else.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie's value.
    pub token: String,
    /// The CSRF token.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Most sessions kept: opening one past it drops the oldest (sign-ins cannot fill the disk).
const MAX_SESSIONS: i64 = 10_000;

impl Store {
    /// Opens a session for `access_key_id` that lasts `ttl_s` seconds.
    pub fn open_session(&self, access_key_id: &str, ttl_s: i64) -> Result<NewSession, StoreError> {
        self.open_session_within(access_key_id, ttl_s, MAX_SESSIONS)
    }

    fn open_session_within(
        &self,
        access_key_id: &str,
        ttl_s: i64,
        max: i64,
    ) -> Result<NewSession, StoreError> {
        let mut rng = rand::thread_rng();
        let token = Alphanumeric.sample_string(&mut rng, 43);
        let csrf = Alphanumeric.sample_string(&mut rng, 32);
        let t = now();
        let expires_at = t.saturating_add(ttl_s);
        let conn = self.conn();
        conn.execute(
            "DELETE FROM console_sessions WHERE expires_at <= ?1",
            params![t],
        )?;
        conn.execute(
            "DELETE FROM console_sessions WHERE token_sha256 IN (
                SELECT token_sha256 FROM console_sessions ORDER BY created_at DESC, rowid DESC
                LIMIT -1 OFFSET ?1)",
            params![max - 1],
        )?;
        conn.execute(
            "INSERT INTO console_sessions (token_sha256, access_key_id, csrf, expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![sha256_hex(token.as_bytes()), access_key_id, csrf, expires_at, t],
        )?;
        Ok(NewSession {
            token,
            csrf,
            expires_at,
        })
    }

    /// The live session whose cookie is `token`: not expired, its key still there.
    pub fn session(&self, token: &str) -> Result<Option<Session>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT c.access_key_id, c.secret, c.tenant, s.csrf, s.expires_at
                 FROM console_sessions s JOIN credentials c ON c.access_key_id = s.access_key_id
                 WHERE s.token_sha256 = ?1 AND s.expires_at > ?2",
                params![sha256_hex(token.as_bytes()), now()],
                |r| {
                    Ok(Session {
                        key: AccessKey {
                            access_key_id: r.get(0)?,
                            secret_access_key: r.get(1)?,
                            tenant: r.get(2)?,
                        },
                        csrf: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Ends the session whose cookie is `token`; whether there was one.
    pub fn close_session(&self, token: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "DELETE FROM console_sessions WHERE token_sha256 = ?1",
            params![sha256_hex(token.as_bytes())],
        )? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lasts_until_it_expires_is_closed_or_loses_its_key() {
        let s = Store::in_memory().unwrap();
        let k = s.create_key("acme").unwrap();
        let open = s.open_session(&k.access_key_id, 3600).unwrap();
        assert_eq!(open.token.len(), 43);
        let found = s.session(&open.token).unwrap().unwrap();
        assert_eq!(found.key, k);
        assert_eq!(found.csrf, open.csrf);
        assert_eq!(s.session("not-a-token").unwrap(), None);
        assert!(s.close_session(&open.token).unwrap());
        assert_eq!(s.session(&open.token).unwrap(), None);

        let expired = s.open_session(&k.access_key_id, -1).unwrap();
        assert_eq!(s.session(&expired.token).unwrap(), None, "expired");

        let open = s.open_session(&k.access_key_id, 3600).unwrap();
        s.delete_key(&k.access_key_id).unwrap();
        assert_eq!(s.session(&open.token).unwrap(), None, "its key is gone");
    }

    #[test]
    fn the_token_itself_is_not_stored() {
        let s = Store::in_memory().unwrap();
        let k = s.create_key("acme").unwrap();
        let open = s.open_session(&k.access_key_id, 3600).unwrap();
        let stored: String = s
            .conn()
            .query_row("SELECT token_sha256 FROM console_sessions", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_ne!(stored, open.token);
        assert_eq!(stored, sha256_hex(open.token.as_bytes()));
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Store::in_memory().unwrap();
        let k = s.create_key("acme").unwrap();
        let first = s.open_session_within(&k.access_key_id, 3600, 10).unwrap();
        for _ in 0..10 {
            s.open_session_within(&k.access_key_id, 3600, 10).unwrap();
        }
        let n: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM console_sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!(s.session(&first.token).unwrap(), None, "the oldest went");
    }
}
