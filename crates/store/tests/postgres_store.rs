//! The PostgreSQL store against a real server (a throwaway one per test, started by
//! `ignition-pg-test`): migrations applied once under the advisory lock, a newer schema refused,
//! bad URLs and unreachable servers reported clearly, a lost connection made again, and each
//! node's cache: kept current by notifications, and answering while the server is down.
#![cfg(feature = "pg-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ignition_pg_test::PgServer;
use ignition_store::{pg, Store, StoreError};

fn server() -> PgServer {
    PgServer::start().unwrap_or_else(|e| panic!("throwaway PostgreSQL: {e}"))
}

fn client(server: &PgServer) -> postgres::Client {
    postgres::Client::connect(&server.url(), postgres::NoTls).unwrap()
}

fn tables(client: &mut postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_new_database_gets_the_whole_schema_and_its_version() {
    let server = server();
    let store = Store::connect(&server.url()).unwrap();
    assert_eq!(store.schema_version().unwrap(), pg::schema_version());
    // Every table the embedded store has, the shared one has too.
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let sqlite = rusqlite::Connection::open(dir.path().join("ignition.db")).unwrap();
    let mut embedded: Vec<String> = sqlite
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    embedded.sort();
    assert!(embedded.len() > 10, "{embedded:?}");
    let shared = tables(&mut client(&server));
    for table in &embedded {
        assert!(shared.contains(table), "{table} is not in {shared:?}");
    }
    // Opening again applies nothing twice.
    drop(store);
    let again = Store::connect(&server.url()).unwrap();
    assert_eq!(again.schema_version().unwrap(), pg::schema_version());
}

#[test]
fn nodes_starting_together_migrate_once() {
    let server = server();
    let url = server.url();
    let opened: Vec<Result<Store, StoreError>> = std::thread::scope(|s| {
        let starts: Vec<_> = (0..8).map(|_| s.spawn(|| Store::connect(&url))).collect();
        starts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for store in &opened {
        let store = store.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.schema_version().unwrap(), pg::schema_version());
    }
    let rows: i64 = client(&server)
        .query_one("SELECT count(*) FROM ignition_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let server = server();
    drop(Store::connect(&server.url()).unwrap());
    let newer = pg::schema_version() + 1;
    let mut c = client(&server);
    c.execute("UPDATE ignition_schema SET version = $1", &[&newer])
        .unwrap();
    c.batch_execute("CREATE TABLE from_the_future (x INT)")
        .unwrap();
    let before = tables(&mut c);
    let err = Store::connect(&server.url()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found, known } if found == newer && known == pg::schema_version()),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this Ignition knows"),
        "{err}"
    );
    assert_eq!(tables(&mut c), before);
    let version: i64 = c
        .query_one("SELECT version FROM ignition_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, newer);
}

#[test]
fn bad_urls_and_unreachable_servers_are_clear_errors() {
    for url in ["mysql://u@h/db", "postgres://u@h:notaport/db", ""] {
        let err = Store::connect(url).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{url}: {err}");
    }
    // A password in a URL that does not parse is not repeated in the error.
    let err = Store::connect("postgres://u:hunter2@h:99999999/db").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");

    // A server that has gone away: an error saying so, within the connect timeout.
    let mut server = server();
    let url = server.url();
    server.stop();
    let started = std::time::Instant::now();
    let err = Store::connect(&url).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Postgres {
                doing: "connecting",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // And once it is back, the store opens without anything else done.
    server.restart().unwrap();
    let store = Store::connect(&url).unwrap();
    let key = store.create_key("acme").unwrap();

    // A store whose server goes away answers errors, and carries on when it returns, on the
    // same Store: no restart of the node.
    server.stop();
    let err = store.key(&key.access_key_id).unwrap_err();
    assert!(
        matches!(err, StoreError::Postgres { .. } | StoreError::Unavailable),
        "{err}"
    );
    server.restart().unwrap();
    // Within a second of a failed attempt the store does not try again; then it does.
    eventually("the store answers again", || {
        store.key(&key.access_key_id).ok() == Some(Some(key.clone()))
    });
}

fn config(name: &str, handler: &str) -> ignition_store::FunctionConfig {
    ignition_store::FunctionConfig {
        name: name.into(),
        runtime: ignition_store::Runtime::Python3,
        runtime_name: String::new(),
        handler: handler.into(),
        memory_mib: 128,
        timeout_s: 3,
        env: Default::default(),
        reuse: false,
        egress: Vec::new(),
        description: String::new(),
        layers: Vec::new(),
        image: None,
    }
}

/// Waits until `check` holds, for at most 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_nodes_cache_follows_writes_made_at_another_node() {
    let server = server();
    let a = Store::connect(&server.url()).unwrap();
    let b = Store::connect(&server.url()).unwrap();
    // Both listeners up (a node's cache is used only while it is).
    eventually("a's cache is listening", || {
        a.get_function("f").unwrap();
        a.cached_values() > 0
    });

    b.put_function(&config("f", "one.handler"), b"one").unwrap();
    // a may have cached "no such function": the notification drops it.
    eventually("a sees b's deploy", || {
        a.get_function("f").unwrap().map(|r| r.config.handler) == Some("one.handler".into())
    });
    b.put_function(&config("f", "two.handler"), b"two").unwrap();
    eventually("a sees b's update", || {
        a.get_function("f").unwrap().unwrap().config.handler == "two.handler"
    });
    // A node reads its own write at once.
    a.put_function(&config("f", "three.handler"), b"three")
        .unwrap();
    assert_eq!(
        a.get_function("f").unwrap().unwrap().config.handler,
        "three.handler"
    );
    let key = b.create_key("acme").unwrap();
    eventually("a knows b's key", || {
        a.key(&key.access_key_id).unwrap().is_some()
    });
    assert!(b.delete_key(&key.access_key_id).unwrap());
    eventually("a forgets b's deleted key", || {
        a.key(&key.access_key_id).unwrap().is_none()
    });
    assert!(b.delete_function("f").unwrap());
    eventually("a sees the delete", || {
        a.get_function("f").unwrap().is_none()
    });
}

#[test]
fn while_the_server_is_down_cached_reads_answer_and_writes_fail_fast() {
    let mut server = server();
    let url = server.url();
    let a = Store::connect(&url).unwrap();
    a.put_function(&config("f", "a.handler"), b"code").unwrap();
    let key = a.create_key("acme").unwrap();
    eventually("a's cache holds the function and the key", || {
        a.get_function("f").unwrap().is_some()
            && a.key(&key.access_key_id).unwrap().is_some()
            && a.cached_values() >= 2
    });

    server.stop();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(
            a.get_function("f").unwrap().unwrap().config.handler,
            "a.handler"
        );
        assert_eq!(a.key(&key.access_key_id).unwrap(), Some(key.clone()));
        let err = a.put_function(&config("g", "b.handler"), b"x").unwrap_err();
        assert!(
            matches!(err, StoreError::Postgres { .. } | StoreError::Unavailable),
            "{err}"
        );
        // Nothing waits for a connection timeout.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // What was never cached cannot be answered.
    assert!(a.get_function("never-read").is_err());

    server.restart().unwrap();
    eventually("a writes again", || {
        a.put_function(&config("g", "b.handler"), b"x").is_ok()
    });
    assert!(a.get_function("g").unwrap().is_some());
}

/// A primary with a streaming standby, the store given both hosts: the primary killed and the
/// standby promoted, the same Store reads what was written and writes again, and its cache
/// listens to the new primary.
#[test]
fn a_primarys_failover_is_followed_without_a_restart() {
    let mut primary = server();
    let standby = primary.standby().unwrap();
    let url = primary.failover_url(&standby);
    let store = Store::connect(&url).unwrap();
    store
        .put_function(&config("f", "before.handler"), b"code")
        .unwrap();
    let key = store.create_key("acme").unwrap();
    // Replicated before the primary goes (the standby is read-only: it is not the one used).
    let mut on_standby = postgres::Client::connect(&standby.url(), postgres::NoTls).unwrap();
    eventually("the standby has the writes", || {
        on_standby
            .query_one("SELECT count(*) FROM credentials", &[])
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    });

    primary.stop();
    standby.promote().unwrap();
    eventually("writes go to the promoted standby", || {
        store
            .put_function(&config("g", "after.handler"), b"more")
            .is_ok()
    });
    assert_eq!(
        store.get_function("f").unwrap().unwrap().config.handler,
        "before.handler"
    );
    assert_eq!(store.key(&key.access_key_id).unwrap(), Some(key));
    // The cache listens to the new primary: a change made there by another client reaches it.
    let other = Store::connect(&url).unwrap();
    other
        .put_function(&config("g", "changed.handler"), b"more")
        .unwrap();
    eventually("the cache follows the new primary", || {
        store.get_function("g").unwrap().unwrap().config.handler == "changed.handler"
    });
}
