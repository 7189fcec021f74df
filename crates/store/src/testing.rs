//! The stores a unit test runs against: an in-memory SQLite store always, and, with feature
//! `pg-tests`, a PostgreSQL store on a fresh database of the test process's throwaway server.
//! A part of the store written against [`crate::sql`] is tested on both with one test.

use crate::Store;

/// Every backend's store, each empty, with its name for messages.
pub(crate) fn stores() -> Vec<(&'static str, Store)> {
    #[allow(unused_mut)]
    let mut stores = vec![("sqlite", Store::in_memory().unwrap())];
    #[cfg(feature = "pg-tests")]
    {
        let server = ignition_pg_test::PgServer::shared()
            .unwrap_or_else(|e| panic!("throwaway PostgreSQL: {e}"));
        let url = server
            .fresh_database()
            .unwrap_or_else(|e| panic!("a fresh database: {e}"));
        stores.push(("postgres", Store::connect(&url).unwrap()));
    }
    stores
}

/// Two stores on one database, as two nodes would hold them: a SQLite file, and with feature
/// `pg-tests` a fresh PostgreSQL database. The directory (SQLite's) lives as long as the stores.
pub(crate) fn two_nodes() -> Vec<(&'static str, Store, Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    #[allow(unused_mut)]
    let mut pairs = vec![(
        "sqlite",
        Store::open(dir.path()).unwrap(),
        Store::open(dir.path()).unwrap(),
        Some(dir),
    )];
    #[cfg(feature = "pg-tests")]
    {
        let server = ignition_pg_test::PgServer::shared()
            .unwrap_or_else(|e| panic!("throwaway PostgreSQL: {e}"));
        let url = server
            .fresh_database()
            .unwrap_or_else(|e| panic!("a fresh database: {e}"));
        pairs.push((
            "postgres",
            Store::connect(&url).unwrap(),
            Store::connect(&url).unwrap(),
            None,
        ));
    }
    pairs
}
