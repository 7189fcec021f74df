//! The web console's sign-in sessions: a random token in an HttpOnly cookie, bound to the
//! access key that signed in and to a token that state-changing requests must echo (CSRF).
//!
//! Only the token's SHA-256 is stored, so a copy of the database opens no session. A session
//! ends at its expiry, when it is signed out, or when its key is deleted (it is found through
//! the key). Sessions live in the store, so a cluster sharing a store shares them.

use rand::distributions::{Alphanumeric, DistString};

use crate::credentials::AccessKey;
use crate::sql::vals;
use crate::store::{now, sha256_hex, Store, StoreError};

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
        self.transaction(|db| {
            db.execute(
                "DELETE FROM console_sessions WHERE expires_at <= $1",
                &vals![t],
            )?;
            // The oldest past `max - 1` go, to make room for this one.
            let held = db
                .query_one("SELECT COUNT(*) FROM console_sessions", &[])?
                .int(0)?;
            let excess = held - (max - 1);
            if excess > 0 {
                db.execute(
                    "DELETE FROM console_sessions WHERE token_sha256 IN (
                        SELECT token_sha256 FROM console_sessions ORDER BY seq LIMIT $1)",
                    &vals![excess],
                )?;
            }
            db.execute(
                "INSERT INTO console_sessions (token_sha256, access_key_id, csrf, expires_at, created_at, seq)
                 VALUES ($1, $2, $3, $4, $5,
                         (SELECT COALESCE(MAX(seq), 0) + 1 FROM console_sessions))",
                &vals![sha256_hex(token.as_bytes()), access_key_id, &csrf, expires_at, t],
            )
        })?;
        Ok(NewSession {
            token,
            csrf,
            expires_at,
        })
    }

    /// The live session whose cookie is `token`: not expired, its key still there.
    pub fn session(&self, token: &str) -> Result<Option<Session>, StoreError> {
        self.with(|db| {
            db.query_opt(
                "SELECT c.access_key_id, c.secret, c.tenant, s.csrf, s.expires_at
                 FROM console_sessions s JOIN credentials c ON c.access_key_id = s.access_key_id
                 WHERE s.token_sha256 = $1 AND s.expires_at > $2",
                &vals![sha256_hex(token.as_bytes()), now()],
            )?
            .map(|r| {
                Ok(Session {
                    key: AccessKey {
                        access_key_id: r.text(0)?,
                        secret_access_key: r.text(1)?,
                        tenant: r.text(2)?,
                    },
                    csrf: r.text(3)?,
                    expires_at: r.int(4)?,
                })
            })
            .transpose()
        })
    }

    /// Ends the session whose cookie is `token`; whether there was one.
    pub fn close_session(&self, token: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM console_sessions WHERE token_sha256 = $1",
                &vals![sha256_hex(token.as_bytes())],
            )
        })
        .map(|n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lasts_until_it_expires_is_closed_or_loses_its_key() {
        for (_, s) in crate::testing::stores() {
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
    }

    #[test]
    fn the_token_itself_is_not_stored() {
        for (_, s) in crate::testing::stores() {
            let k = s.create_key("acme").unwrap();
            let open = s.open_session(&k.access_key_id, 3600).unwrap();
            let stored = s
                .with(|db| db.query_one("SELECT token_sha256 FROM console_sessions", &[]))
                .unwrap()
                .text(0)
                .unwrap();
            assert_ne!(stored, open.token);
            assert_eq!(stored, sha256_hex(open.token.as_bytes()));
        }
    }

    #[test]
    fn sessions_are_bounded() {
        for (backend, s) in crate::testing::stores() {
            let k = s.create_key("acme").unwrap();
            let first = s.open_session_within(&k.access_key_id, 3600, 10).unwrap();
            let mut last = None;
            for _ in 0..10 {
                last = Some(s.open_session_within(&k.access_key_id, 3600, 10).unwrap());
            }
            let n = s
                .with(|db| db.query_one("SELECT COUNT(*) FROM console_sessions", &[]))
                .unwrap()
                .int(0)
                .unwrap();
            assert_eq!(n, 10, "{backend}");
            assert_eq!(s.session(&first.token).unwrap(), None, "the oldest went");
            assert!(s.session(&last.unwrap().token).unwrap().is_some());
        }
    }
}
