//! The store's hot operations on both backends in one run, SQLite (a file, as a single node
//! keeps it) against PostgreSQL (a throwaway local server): asynchronous events enqueued and
//! claimed per second, and function reads per second (from the node's cache on PostgreSQL).
//! Prints a table with the ratio PostgreSQL / SQLite.
//!
//! `cargo run --release -p ignition-store --example store_bench [EVENTS, default 2000]`
//! (needs Debian's postgresql; run as root it runs the server as the postgres user).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ignition_store::{Attempt, FunctionConfig, NewEvent, Runtime, Store};

fn config() -> FunctionConfig {
    FunctionConfig {
        name: "bench".into(),
        runtime: Runtime::Python3,
        runtime_name: String::new(),
        handler: "app.handler".into(),
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

/// Operations per second of each measured operation.
fn measure(store: &Store, events: usize) -> [f64; 3] {
    store.put_function(&config(), b"code").unwrap();
    let t = Instant::now();
    for i in 0..events {
        let e = NewEvent {
            request_id: format!("e{i}"),
            function: "bench".into(),
            payload: br#"{"n": 1}"#.to_vec(),
            max_attempts: 3,
            max_age_s: None,
        };
        store.enqueue_event_within(&e, u64::MAX, None).unwrap();
    }
    let enqueue = events as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut claimed = 0;
    while claimed < events {
        let batch = store
            .claim_due_events(i64::MAX - 1, 16, "bench", i64::MAX)
            .unwrap();
        assert!(!batch.is_empty());
        for e in &batch {
            store
                .finish_event(&e.request_id, "bench", &Attempt::Succeeded)
                .unwrap();
        }
        claimed += batch.len();
    }
    let claim = events as f64 / t.elapsed().as_secs_f64();
    let reads = events * 5;
    let t = Instant::now();
    for _ in 0..reads {
        assert!(store.get_function("bench").unwrap().is_some());
    }
    let read = reads as f64 / t.elapsed().as_secs_f64();
    [enqueue, claim, read]
}

fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .map_or(2000, |n| n.parse().expect("EVENTS is a number"));
    let dir = tempfile::tempdir().unwrap();
    let sqlite = measure(&Store::open(dir.path()).unwrap(), events);
    let pg = ignition_pg_test::PgServer::start().unwrap();
    let shared = Store::connect(&pg.url()).unwrap();
    // The node's cache listens before it is used.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let postgres = measure(&shared, events);
    println!("{events} events, {} function reads, one thread", events * 5);
    println!("| operation | SQLite /s | PostgreSQL /s | PostgreSQL / SQLite |");
    println!("|---|---|---|---|");
    for (i, what) in [
        "enqueue an event",
        "claim and finish an event",
        "read a function (invoke path)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {what} | {:.0} | {:.0} | {:.2} |",
            sqlite[i],
            postgres[i],
            postgres[i] / sqlite[i]
        );
    }
}
