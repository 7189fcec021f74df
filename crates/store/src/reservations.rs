//! Functions' reserved concurrency (PutFunctionConcurrency). Every node keeps all of them in
//! memory and reads them again often; on a shared store that read is the node's cache,
//! dropped by a notification when any node changes a reservation (scope
//! [`crate::cache::LIMITS`]), so a change reaches every node at once and costs nothing while
//! nothing changes.

use std::collections::HashMap;

use crate::cache::LIMITS;
use crate::sql::vals;
use crate::store::{Store, StoreError};

impl Store {
    /// Sets (or, with `None`, removes) a function's reserved concurrency.
    pub fn set_reserved_concurrency(
        &self,
        function: &str,
        reserved: Option<u32>,
    ) -> Result<(), StoreError> {
        self.with(|db| {
            db.notify(LIMITS)?;
            match reserved {
                Some(r) => db.execute(
                    "INSERT INTO reserved_concurrency (function, reserved) VALUES ($1, $2)
                     ON CONFLICT (function) DO UPDATE SET reserved = excluded.reserved",
                    &vals![function, r],
                ),
                None => db.execute(
                    "DELETE FROM reserved_concurrency WHERE function = $1",
                    &vals![function],
                ),
            }
        })?;
        Ok(())
    }

    /// Every reservation.
    pub fn reserved_concurrency(&self) -> Result<HashMap<String, u32>, StoreError> {
        self.cached(LIMITS, "reserved", |db| {
            db.query("SELECT function, reserved FROM reserved_concurrency", &[])?
                .iter()
                .map(|r| {
                    let function = r.text(0)?;
                    let reserved = u32::try_from(r.int(1)?)
                        .map_err(|_| StoreError::Corrupt(function.clone()))?;
                    Ok((function, reserved))
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reservation_set_at_one_node_is_read_at_the_other() {
        for (backend, a, b, _dir) in crate::testing::two_nodes() {
            assert!(b.reserved_concurrency().unwrap().is_empty(), "{backend}");
            a.set_reserved_concurrency("h", Some(2)).unwrap();
            a.set_reserved_concurrency("h", Some(3)).unwrap();
            assert_eq!(a.reserved_concurrency().unwrap().get("h"), Some(&3));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while b.reserved_concurrency().unwrap().get("h") != Some(&3) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{backend}: b never read it"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            a.set_reserved_concurrency("h", None).unwrap();
            while !b.reserved_concurrency().unwrap().is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{backend}: still at b"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
