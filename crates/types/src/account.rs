//! Tenants' account ids: the twelve digits in every ARN a tenant sees, as an AWS account's.
//!
//! An account id is derived from the tenant's name, so every node of a cluster and every
//! restart agrees on it with nothing stored or replicated. The default tenant (`--dev` mode,
//! single-tenant data directories) keeps `000000000000`, the id its ARNs always carried.

use sha2::{Digest, Sha256};

use crate::DEFAULT_TENANT;

/// The default tenant's account id.
pub const DEFAULT_ACCOUNT_ID: &str = "000000000000";

/// `tenant`'s account id: twelve decimal digits.
pub fn account_id(tenant: &str) -> String {
    if tenant == DEFAULT_TENANT {
        return DEFAULT_ACCOUNT_ID.to_owned();
    }
    let digest = Sha256::new()
        .chain_update(b"ignition account id\0")
        .chain_update(tenant.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Never the default tenant's.
    let n = (u64::from_be_bytes(first) % 1_000_000_000_000).max(1);
    format!("{n:012}")
}

/// Whether `s` has an account id's form (twelve ASCII digits).
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_twelve_digits_stable_and_distinct() {
        assert_eq!(account_id(DEFAULT_TENANT), DEFAULT_ACCOUNT_ID);
        let a = account_id("alice");
        assert!(is_account_id(&a), "{a}");
        assert_eq!(a, account_id("alice"), "stable");
        assert_ne!(a, account_id("bob"));
        assert_ne!(a, DEFAULT_ACCOUNT_ID);
        // No two of many short names share one.
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|i| account_id(&format!("t{i}"))).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!is_account_id("12345678901") && !is_account_id("12345678901x"));
    }
}
