//! [`FunctionId`]: a function's identity, its tenant and its name; and [`Target`]: a function
//! with the qualifier an invocation names (a version number or an alias).
//!
//! Names are per tenant. The store keys a function by one string: the name alone for the
//! default tenant (so single-tenant data directories read as they always did), `TENANT.NAME`
//! for any other; a name never contains `.`, so the split is unambiguous. A target is
//! `TENANT.NAME:QUALIFIER` (a name never contains `:` either).

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

/// A function and, when an invocation names one, its qualifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The function.
    pub function: FunctionId,
    /// A version number or an alias; `None`: `$LATEST`.
    pub qualifier: Option<String>,
}

impl Target {
    /// The stored form split: (`[TENANT.]NAME`, `QUALIFIER`).
    pub fn split_stored(target: &str) -> (&str, Option<&str>) {
        match target.split_once(':') {
            Some((function, q)) => (function, Some(q)),
            None => (target, None),
        }
    }

    /// The target a stored `[TENANT.]NAME[:QUALIFIER]` names.
    pub fn from_stored(target: &str) -> Self {
        let (function, qualifier) = Self::split_stored(target);
        Self {
            function: FunctionId::from_stored(function),
            qualifier: qualifier.map(str::to_owned),
        }
    }

    /// The stored form.
    pub fn stored(&self) -> String {
        match &self.qualifier {
            Some(q) => format!("{}:{q}", self.function.stored()),
            None => self.function.stored(),
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

    #[test]
    fn targets_round_trip_with_and_without_a_qualifier() {
        for stored in ["f", "f:3", "acme.f", "acme.f:live", "acme.f:$LATEST"] {
            assert_eq!(Target::from_stored(stored).stored(), stored);
        }
        let t = Target::from_stored("acme.f:2");
        assert_eq!(t.function, FunctionId::new("acme", "f"));
        assert_eq!(t.qualifier.as_deref(), Some("2"));
        assert_eq!(Target::split_stored("acme.f:2"), ("acme.f", Some("2")));
    }
}
