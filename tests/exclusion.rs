//! Mutual exclusion: several Lockers (separate connections) take turns on one
//! name, each doing a non-atomic read-modify-write of a shared value inside the
//! critical section. No update may be lost and no two holders may overlap.
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::time::{sleep, timeout, Instant};
use valkeylock::{Locker, LockerOptions};

const LOCKERS: usize = 8;
const ROUNDS: usize = 200;

#[derive(Default)]
struct Shared {
    value: Mutex<u64>,
    holders: AtomicUsize,
    max_holders: AtomicUsize,
    overlaps: AtomicUsize,
    not_held_inside: AtomicUsize,
}

async fn contend(servers: &[ValkeyServer], majority: usize) {
    init_tracing();
    let urls: Vec<String> = servers.iter().map(ValkeyServer::url).collect();
    let options = LockerOptions::new(urls).with_key_majority(majority);
    let name = unique("exclusion");
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(Locker::connect(options.clone()).await.expect("connect"));
    }
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, locker) in lockers.iter().enumerate() {
        let (locker, name, shared) = (locker.clone(), name.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS / LOCKERS {
                let guard = locker.lock(&name).await.expect("lock");
                let now = shared.holders.fetch_add(1, Ordering::SeqCst) + 1;
                shared.max_holders.fetch_max(now, Ordering::SeqCst);
                if now > 1 {
                    shared.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                if !guard.is_held() {
                    shared.not_held_inside.fetch_add(1, Ordering::SeqCst);
                }
                // Non-atomic read-modify-write, with a suspension in between.
                let read = *shared.value.lock().expect("mutex");
                tokio::task::yield_now().await;
                if i % 2 == 0 {
                    sleep(Duration::from_millis(1)).await;
                }
                *shared.value.lock().expect("mutex") = read + 1;
                if !guard.is_held() {
                    shared.not_held_inside.fetch_add(1, Ordering::SeqCst);
                }
                shared.holders.fetch_sub(1, Ordering::SeqCst);
                let _ = guard.release().await;
            }
        }));
    }
    for task in tasks {
        match timeout(Duration::from_secs(60), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("a contender failed: {e}"),
            Err(_) => panic!(
                "contenders did not finish {ROUNDS} rounds within 60 s (value so far {})",
                *shared.value.lock().expect("mutex")
            ),
        }
    }
    let elapsed = start.elapsed();
    let value = *shared.value.lock().expect("mutex");
    eprintln!(
        "{LOCKERS} lockers, {} servers, majority {majority}: {ROUNDS} rounds in {elapsed:?} ({:?}/round)",
        servers.len(),
        elapsed / ROUNDS as u32
    );
    assert_eq!(
        shared.overlaps.load(Ordering::SeqCst),
        0,
        "two holders inside at once"
    );
    assert_eq!(shared.max_holders.load(Ordering::SeqCst), 1);
    assert_eq!(
        value, ROUNDS as u64,
        "updates lost: the critical sections overlapped"
    );
    assert_eq!(
        shared.not_held_inside.load(Ordering::SeqCst),
        0,
        "a guard was not held inside its critical section"
    );
    for l in &lockers {
        l.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_one_server_majority_1() {
    let server = ValkeyServer::start();
    contend(std::slice::from_ref(&server), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_three_servers_majority_2() {
    let servers = [
        ValkeyServer::start(),
        ValkeyServer::start(),
        ValkeyServer::start(),
    ];
    contend(&servers, 2).await;
}
