//! [`FunctionId`]: a function's identity, its tenant and its name.
//!
//! Names are per tenant. The store keys a function by one string: the name alone for the
//! default tenant (so single-tenant data directories read as they always did), `TENANT.NAME`
//! for any other; a name never contains `.`, so the split is unambiguous.

/// The tenant of `--dev` mode and of functions stored without a tenant.
pub const DEFAULT_TENANT: &str = "default";

/// Whose function, by which name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionId {
    /// The owning tenant.
    pub tenant: String,
    /// The function's name within its tenant.
    pub name: String,
}

impl FunctionId {
    /// `name` of `tenant`.
    pub fn new(tenant: &str, name: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The store's key for this function.
    pub fn stored(&self) -> String {
        if self.tenant == DEFAULT_TENANT {
            self.name.clone()
        } else {
            format!("{}.{}", self.tenant, self.name)
        }
    }

    /// The function a store key names.
    pub fn from_stored(stored: &str) -> Self {
        match stored.split_once('.') {
            Some((tenant, name)) => Self::new(tenant, name),
            None => Self::new(DEFAULT_TENANT, stored),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_round_trip_and_the_default_tenant_keeps_bare_names() {
        for (tenant, name, key) in [("default", "f", "f"), ("acme", "f", "acme.f")] {
            let id = FunctionId::new(tenant, name);
            assert_eq!(id.stored(), key);
            assert_eq!(FunctionId::from_stored(key), id);
        }
    }
}
