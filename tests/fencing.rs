//! Fencing tokens: strictly increasing per name across lockers, on one
//! instance (counter moved inside the acquire script) and on three (majority
//! read, then majority raise).

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::sync::Mutex;
use valkeylock::{Locker, LockerOptions};

async fn increasing(urls: Vec<String>, majority: usize) {
    let opts = LockerOptions::new(urls)
        .with_key_majority(majority)
        .with_fencing(true);
    let name = unique("fence");
    // (token, order) as seen inside the critical section.
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let locker = Locker::connect(opts.clone()).await.unwrap();
        let (name, seen) = (name.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let g = locker.lock(&name).await.unwrap();
                let t = g.fencing_token();
                seen.lock().await.push(t);
                let _ = g.release().await;
            }
            locker.close().await;
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    let seen = seen.lock().await;
    assert_eq!(seen.len(), 100);
    assert!(seen[0] >= 1);
    for w in seen.windows(2) {
        assert!(
            w[1] > w[0],
            "fencing tokens not strictly increasing: {w:?} in {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance() {
    init_tracing();
    let server = ValkeyServer::start();
    increasing(vec![server.url()], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances() {
    init_tracing();
    let servers: Vec<_> = (0..3).map(|_| ValkeyServer::start()).collect();
    increasing(servers.iter().map(|s| s.url()).collect(), 2).await;
}

#[tokio::test]
async fn off_means_zero_and_no_counter() {
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    let name = unique("nofence");
    let g = locker.lock(&name).await.unwrap();
    assert_eq!(g.fencing_token(), 0);
    let admin = server.admin().await;
    let n: i64 = fred::prelude::KeysInterface::exists(&admin, format!("valkeylock:fence:{name}"))
        .await
        .unwrap();
    assert_eq!(n, 0);
    let _ = g.release().await;
    locker.close().await;
}

/// The counter survives a restart of the instance from its data (AOF with
/// fsync always): tokens keep increasing across it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_restart_from_data() {
    init_tracing();
    let mut server = ValkeyServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let opts = LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_fencing(true);
    let name = unique("fence-restart");
    let locker = Locker::connect(opts.clone()).await.unwrap();
    let mut last = 0;
    for _ in 0..5 {
        let g = locker.lock(&name).await.unwrap();
        assert!(g.fencing_token() > last);
        last = g.fencing_token();
        let _ = g.release().await;
    }
    locker.close().await;
    server.restart();
    let locker = Locker::connect(opts).await.unwrap();
    let g = locker.lock(&name).await.unwrap();
    assert!(
        g.fencing_token() > last,
        "token {} after a restart from data, {last} before",
        g.fencing_token()
    );
    let _ = g.release().await;
    locker.close().await;
}
