//! Three servers, `key_majority` 2 (one key per server): the lock survives the
//! loss of one server, is lost with the second, and comes back to waiters once
//! a majority of servers is up again. Also the cross-locker wake-up.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use support::*;
use tokio::time::{sleep, timeout, Instant};
use valkeylock::{Locker, LockerOptions, LostReason};

const PREFIX: &str = "valkeylock";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn three() -> [ValkeyServer; 3] {
    [
        ValkeyServer::start(),
        ValkeyServer::start(),
        ValkeyServer::start(),
    ]
}

fn options(servers: &[ValkeyServer]) -> LockerOptions {
    LockerOptions::new(servers.iter().map(ValkeyServer::url)).with_key_majority(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_one_server_lost_with_two_back_with_majority() {
    init_tracing();
    let mut servers = three();
    let opts = options(&servers).with_key_validity(secs(2));
    let a = Locker::connect(opts.clone()).await.expect("connect a");
    let b = Locker::connect(opts).await.expect("connect b");
    let name = unique("majority");
    let guard = a.lock(&name).await.expect("lock");
    let admin0 = servers[0].admin().await;
    let present = eventually(secs(2), || async {
        existing_keys(&admin0, PREFIX, &name, 3).await == 1
    })
    .await;
    assert!(present, "no key of the lock on server 0");

    let waiter = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move { b.lock(&name).await }
    });

    // One server down: two keys of three remain, a majority.
    servers[2].kill();
    let start = Instant::now();
    while start.elapsed() < secs(3) {
        assert!(
            guard.is_held(),
            "lock not held {:?} after one of three servers died (lost_reason {:?})",
            start.elapsed(),
            guard.lost_reason()
        );
        assert!(!waiter.is_finished(), "the waiter got a lock that is held");
        sleep(ms(20)).await;
    }
    assert_eq!(guard.lost_reason(), None);

    // Second server down: only one key left.
    servers[1].kill();
    let t = Instant::now();
    let reason = timeout(secs(2) + ms(1500), guard.lost())
        .await
        .expect("lost() did not fire within key_validity + 1.5 s of losing the majority");
    eprintln!("majority lost: {reason} after {:?}", t.elapsed());
    assert!(
        matches!(
            reason,
            LostReason::Unreachable | LostReason::Expired | LostReason::Deleted
        ),
        "unexpected reason {reason:?}"
    );
    assert!(!guard.is_held());
    assert!(
        !waiter.is_finished(),
        "the waiter got the lock with only one server up"
    );

    // Back with a majority (empty): the waiter in the other locker gets it.
    servers[1].restart();
    servers[2].restart();
    let t = Instant::now();
    let g = timeout(secs(15), waiter)
        .await
        .expect("the waiter did not get the lock within 15 s of the servers coming back")
        .expect("task")
        .expect("lock");
    eprintln!("waiter acquired {:?} after the restart", t.elapsed());
    assert!(g.is_held());
    // And a is usable again too.
    let other = timeout(secs(10), a.lock(&unique("majority-after")))
        .await
        .expect("lock() on the first locker hung after the restart")
        .expect("lock() on the first locker after the restart");
    let _ = other.release().await;
    let _ = g.release().await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_in_other_locker_wakes_promptly_on_release() {
    init_tracing();
    let servers = three();
    let a = Locker::connect(options(&servers)).await.expect("connect a");
    let b = Locker::connect(options(&servers)).await.expect("connect b");
    for round in 0..3 {
        let name = unique("wake");
        let guard = a.lock(&name).await.expect("lock");
        let (latency, g) = wake_after_release(guard, &b, &name).await;
        eprintln!("round {round}: wake-up latency {latency:?}");
        assert!(g.is_held());
        let _ = g.release().await;
    }
    a.close().await;
    b.close().await;
}

/// `connect` succeeds when the nodes that answer hold a majority of the keys,
/// whatever the others do: here one of three servers is hung (SIGSTOP: TCP
/// connects, nothing answers). Locks work on the other two, and the hung one
/// is picked up once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_one_of_three_nodes_hung() {
    init_tracing();
    let servers = three();
    servers[2].pause();
    let opts = options(&servers).with_connect_timeout(ms(500));
    let t = Instant::now();
    let locker = match Locker::connect(opts).await {
        Ok(l) => l,
        Err(e) => {
            servers[2].resume();
            panic!("connect failed with 2 of 3 nodes answering: {e:?}");
        }
    };
    eprintln!(
        "connect returned after {:?} with one node hung",
        t.elapsed()
    );
    let name = unique("hung-node");
    let g = timeout(secs(5), locker.lock(&name))
        .await
        .expect("lock() hung with one node hung")
        .expect("lock() with 2 of 3 nodes");
    assert!(g.is_held());
    servers[2].resume();
    let admin2 = servers[2].admin().await;
    // Once the third node answers, the holder takes its key too (extension
    // retakes keys that are not ours).
    let third = eventually(secs(10), || async {
        existing_keys(&admin2, PREFIX, &name, 3).await == 1
    })
    .await;
    assert!(third, "the key on the resumed node was never taken");
    assert!(g.is_held());
    let _ = g.release().await;
    locker.close().await;
}
