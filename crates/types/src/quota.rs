//! A tenant's quotas: how much of a node one tenant may hold or use. The operator sets the
//! defaults (server flags) and may set any of them per tenant.

use serde::{Deserialize, Serialize};

/// A tenant's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantQuotas {
    /// Functions.
    pub functions: u64,
    /// Published versions per function.
    pub versions: u64,
    /// Code stored, over all of its functions and versions (each bundle counted once), MiB.
    pub code_mib: u64,
    /// Asynchronous invocations queued or running.
    pub queued_events: u64,
    /// Invocations at once.
    pub concurrency: u64,
}

impl Default for TenantQuotas {
    fn default() -> Self {
        Self {
            functions: 500,
            versions: 100,
            code_mib: 2048,
            queued_events: 1000,
            concurrency: 1000,
        }
    }
}

/// What an operator set for one tenant: each quota given replaces the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaOverrides {
    /// Functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<u64>,
    /// Published versions per function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<u64>,
    /// Code stored, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_mib: Option<u64>,
    /// Asynchronous invocations queued or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_events: Option<u64>,
    /// Invocations at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
}

impl QuotaOverrides {
    /// The quotas in force: these over `defaults`.
    pub fn over(&self, defaults: &TenantQuotas) -> TenantQuotas {
        TenantQuotas {
            functions: self.functions.unwrap_or(defaults.functions),
            versions: self.versions.unwrap_or(defaults.versions),
            code_mib: self.code_mib.unwrap_or(defaults.code_mib),
            queued_events: self.queued_events.unwrap_or(defaults.queued_events),
            concurrency: self.concurrency.unwrap_or(defaults.concurrency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_set() {
        let d = TenantQuotas::default();
        let o = QuotaOverrides {
            functions: Some(3),
            ..QuotaOverrides::default()
        };
        assert_eq!(o.over(&d).functions, 3);
        assert_eq!(o.over(&d).versions, d.versions);
        assert_eq!(QuotaOverrides::default().over(&d), d);
    }
}
