//! Restarts: a server that comes back empty, a killed `NodeActor` (restarted by
//! the Supervisor) and a killed `LockActor`. Needs the `fault-injection`
//! feature (`cargo test --features fault-injection --test restart`).
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use support::sentinel::SentinelDeployment;
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

fn options(server: &ValkeyServer) -> LockerOptions {
    LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_key_validity(secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarted_empty_fires_lost_and_locker_recovers() {
    init_tracing();
    let mut server = ValkeyServer::start();
    let locker = Locker::connect(options(&server)).await.expect("connect");
    let name = unique("server-restart");
    let guard = locker.lock(&name).await.expect("lock");
    let t = Instant::now();
    server.restart();
    let reason = timeout(secs(5), guard.lost())
        .await
        .expect("lost() did not fire within 5 s (key_validity 2 s) of the server restarting empty");
    eprintln!("restart noticed: {reason} after {:?}", t.elapsed());
    assert!(
        matches!(
            reason,
            LostReason::Deleted | LostReason::Unreachable | LostReason::Expired
        ),
        "unexpected reason {reason:?}"
    );
    assert!(!guard.is_held());
    // The locker reconnects and keeps working.
    let t = Instant::now();
    let g = timeout(secs(10), locker.lock(&name))
        .await
        .expect("lock() after the restart hung")
        .expect("lock() after the restart");
    eprintln!("re-acquired {:?} after the loss", t.elapsed());
    assert!(g.is_held());
    let admin = server.admin().await;
    assert_eq!(existing_keys(&admin, PREFIX, &name, 1).await, 1);
    sleep(secs(2)).await;
    assert!(
        g.is_held(),
        "new lock lost after the restart: {:?}",
        g.lost_reason()
    );
    let _ = g.release().await;
    assert_eq!(existing_keys(&admin, PREFIX, &name, 1).await, 0);
    locker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_actor_is_restarted_and_locker_keeps_working() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = Locker::connect(options(&server)).await.expect("connect");
    let faults = locker.faults();
    let before = faults.node_actor_id(0).expect("node 0 running");
    assert!(faults.kill_node(0));
    let restarted = eventually(secs(5), || async {
        faults.node_running(0) && faults.node_actor_id(0).is_some_and(|id| id != before)
    })
    .await;
    assert!(
        restarted,
        "node actor not restarted within 5 s (running {}, id {:?}, was {before})",
        faults.node_running(0),
        faults.node_actor_id(0)
    );
    let name = unique("after-node-kill");
    let g = timeout(secs(5), locker.lock(&name))
        .await
        .expect("lock() after a NodeActor kill hung")
        .expect("lock() after a NodeActor kill");
    assert!(g.is_held());
    let admin = server.admin().await;
    assert_eq!(existing_keys(&admin, PREFIX, &name, 1).await, 1);
    let _ = g.release().await;
    assert_eq!(existing_keys(&admin, PREFIX, &name, 1).await, 0);
    locker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_lock_survives_node_actor_kill() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = Locker::connect(options(&server)).await.expect("connect");
    let admin = server.admin().await;
    let faults = locker.faults();
    let name = unique("survive-node-kill");
    let guard = locker.lock(&name).await.expect("lock");
    let before = faults.node_actor_id(0).expect("node 0 running");
    assert!(faults.kill_node(0));
    let restarted = eventually(secs(5), || async {
        faults.node_running(0) && faults.node_actor_id(0).is_some_and(|id| id != before)
    })
    .await;
    assert!(restarted, "node actor not restarted within 5 s");
    // Several extend intervals (1 s) later: still held, key still there.
    let start = Instant::now();
    while start.elapsed() < secs(3) {
        assert!(
            guard.is_held(),
            "lock not held {:?} after the NodeActor kill (lost_reason {:?})",
            start.elapsed(),
            guard.lost_reason()
        );
        sleep(ms(20)).await;
    }
    assert_eq!(guard.lost_reason(), None);
    assert_eq!(existing_keys(&admin, PREFIX, &name, 1).await, 1);
    let pttl: i64 = fred::prelude::KeysInterface::pttl(&admin, format!("{PREFIX}:0:{name}"))
        .await
        .expect("PTTL");
    assert!(
        pttl > 500,
        "key not being extended any more: PTTL {pttl} ms"
    );
    // Detection works over the new connection: a DEL is noticed.
    let _: i64 = fred::prelude::KeysInterface::del(&admin, format!("{PREFIX}:0:{name}"))
        .await
        .expect("DEL");
    let reason = timeout(secs(2), guard.lost())
        .await
        .expect("DEL not noticed through the restarted NodeActor");
    assert_eq!(reason, LostReason::Deleted);
    locker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_lock_actor_fires_engine_stopped() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = Locker::connect(options(&server)).await.expect("connect");
    let faults = locker.faults();
    let name = unique("kill-lock");
    let guard = locker.lock(&name).await.expect("lock");
    let token = guard.cancellation_token();
    assert!(faults.kill_lock(&name), "no LockActor for a held lock");
    let reason = timeout(secs(2), guard.lost())
        .await
        .expect("lost() did not fire after the LockActor was killed");
    assert_eq!(reason, LostReason::EngineStopped);
    assert!(!guard.is_held());
    timeout(secs(1), token.cancelled())
        .await
        .expect("cancellation token not cancelled after the LockActor was killed");
    assert!(
        eventually(secs(10), || async { locker.active_locks() == 0 }).await,
        "the killed LockActor is still routed: {} active",
        locker.active_locks()
    );
    drop(guard);
    // The orphaned key expires (key_validity 2 s); then the name works again.
    let t = Instant::now();
    let g = timeout(secs(6), locker.lock(&name))
        .await
        .expect("lock() of the same name hung after the LockActor kill")
        .expect("lock() of the same name after the LockActor kill");
    eprintln!("re-acquired {:?} after the kill", t.elapsed());
    assert!(g.is_held());
    sleep(ms(1500)).await;
    assert!(g.is_held(), "new grant lost: {:?}", g.lost_reason());
    let _ = g.release().await;
    locker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lock_actor_fires_engine_stopped_and_is_unrouted() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = Locker::connect(options(&server)).await.expect("connect");
    let name = unique("fail-lock");
    let guard = locker.lock(&name).await.expect("lock");
    assert!(
        locker.faults().fail_lock(&name),
        "no LockActor for a held lock"
    );
    let reason = timeout(secs(2), guard.lost())
        .await
        .expect("lost() did not fire after the LockActor failed");
    assert_eq!(reason, LostReason::EngineStopped);
    // A failed actor's exit carries no state: its route is found by a search
    // of the table, and removed all the same.
    assert!(
        eventually(secs(10), || async { locker.active_locks() == 0 }).await,
        "the failed LockActor is still routed: {} active",
        locker.active_locks()
    );
    drop(guard);
    let g = timeout(secs(6), locker.lock(&name))
        .await
        .expect("lock() of the same name hung after the LockActor failed")
        .expect("lock() of the same name after the LockActor failed");
    assert!(g.is_held());
    assert_eq!(locker.active_locks(), 1);
    let _ = g.release().await;
    locker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_killed_lock_actor_ask_again() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = Locker::connect(options(&server)).await.expect("connect");
    let faults = locker.faults();
    let name = unique("kill-lock-waiters");
    let guard = locker.lock(&name).await.expect("lock");
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (locker, name) = (locker.clone(), name.clone());
            tokio::spawn(async move {
                let g = locker.lock(&name).await?;
                let held = g.is_held();
                let _ = g.release().await;
                Ok::<bool, valkeylock::Error>(held)
            })
        })
        .collect();
    sleep(ms(200)).await;
    assert!(faults.kill_lock(&name));
    assert_eq!(
        timeout(secs(2), guard.lost())
            .await
            .expect("holder not told"),
        LostReason::EngineStopped
    );
    drop(guard);
    // Each waiter gets the lock in turn once the orphaned key expires.
    for (i, w) in waiters.into_iter().enumerate() {
        let held = timeout(secs(8), w)
            .await
            .unwrap_or_else(|_| panic!("waiter {i} never got the lock after the LockActor kill"))
            .expect("task")
            .unwrap_or_else(|e| panic!("waiter {i}: {e:?}"));
        assert!(held, "waiter {i} got a guard that was not held");
    }
    locker.close().await;
}

/// The distinct `NodeActor` ids of node 0 seen over `period` (sampled every
/// 10 ms): one id means no restart.
async fn node_actor_ids(locker: &Locker, period: Duration) -> Vec<String> {
    let faults = locker.faults();
    let mut ids: Vec<String> = Vec::new();
    let end = Instant::now() + period;
    while Instant::now() < end {
        if let Some(id) = faults.node_actor_id(0) {
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
        sleep(ms(10)).await;
    }
    ids
}

/// Takes a lock through `locker` and checks its key is on the primary the
/// sentinels name (with the deployment's password), then releases it.
async fn lock_on_primary(locker: &Locker, d: &SentinelDeployment, what: &str) {
    let name = unique("sentinel-pw");
    let g = timeout(secs(5), locker.lock(&name))
        .await
        .unwrap_or_else(|_| panic!("{what}: lock() hung"))
        .unwrap_or_else(|e| panic!("{what}: lock(): {e}"));
    let primary = tokio::task::block_in_place(|| d.primary_port());
    let key = format!("{PREFIX}:0:{name}");
    let pass = d.password.as_deref().expect("a password deployment");
    let there = proxy::command_auth(primary, &[pass], &["EXISTS", &key])
        .await
        .expect("EXISTS on the primary");
    assert_eq!(
        there.int(),
        Some(1),
        "{what}: the key is not on the primary"
    );
    assert!(g.is_held(), "{what}: {:?}", g.lost_reason());
    let _ = g.release().await;
}

/// Sentinels with `requirepass`. The node's `+switch-master` watcher must
/// authenticate as the node's own Sentinel lookups do (the URL's
/// credentials): without them it failed at once, ended the node's
/// connection, and the node restarted about every 50 ms for ever. And when
/// the watcher's own connection dies, the node must notice (a switch would
/// otherwise go unseen), reconnect, and subscribe again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_watcher_with_a_password_and_a_killed_watcher_connection() {
    init_tracing();
    let d = tokio::task::block_in_place(|| SentinelDeployment::start_with_password("s3ntinel-pw"));
    let locker = Locker::connect(
        LockerOptions::new([d.url()])
            .with_key_majority(1)
            .with_key_validity(secs(2)),
    )
    .await
    .expect("connect through password-protected sentinels");
    let faults = locker.faults();
    let ids = node_actor_ids(&locker, secs(3)).await;
    assert_eq!(
        ids.len(),
        1,
        "the NodeActor was restarted {} times in 3 s",
        ids.len().saturating_sub(1)
    );
    lock_on_primary(&locker, &d, "password").await;

    // Kill the watcher's subscription connection on every sentinel.
    let subscribed = |d: &SentinelDeployment| {
        d.sentinels
            .iter()
            .filter(|s| {
                s.cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
                    .contains(" sub=1")
            })
            .count()
    };
    assert_eq!(
        tokio::task::block_in_place(|| subscribed(&d)),
        1,
        "one sentinel should carry the watcher's subscription"
    );
    let before = faults.node_actor_id(0);
    let t = Instant::now();
    tokio::task::block_in_place(|| {
        for s in &d.sentinels {
            s.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
    });
    let restarted = eventually(secs(5), || async {
        faults
            .node_actor_id(0)
            .is_some_and(|id| Some(&id) != before.as_ref())
    })
    .await;
    assert!(
        restarted,
        "the node did not notice within 5 s that its Sentinel watcher's connection was killed"
    );
    eprintln!(
        "watcher connection killed: node restarted after {:?}",
        t.elapsed()
    );
    let again = eventually(secs(5), || async {
        tokio::task::block_in_place(|| subscribed(&d)) == 1
    })
    .await;
    assert!(again, "the watcher did not subscribe again");
    let ids = node_actor_ids(&locker, secs(2)).await;
    assert_eq!(ids.len(), 1, "the NodeActor kept restarting: {ids:?}");
    lock_on_primary(&locker, &d, "after the watcher's reconnect").await;
    locker.close().await;
}

/// The sentinels stop accepting the watcher's subscription (an ACL takes
/// `SUBSCRIBE` away from the locker's user) while the node runs. Each
/// reconnect then fails at the subscription; that must count as a failed
/// connect, so the Supervisor backs off (50 ms doubling to 2 s), instead of
/// the node coming up, its watcher failing and the node restarting every
/// ~50 ms for ever. Once the sentinels accept again the node recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_watcher_refused_backs_off_and_recovers() {
    init_tracing();
    let d = tokio::task::block_in_place(|| SentinelDeployment::start_with_password("s3ntinel-pw"));
    let locker = Locker::connect(
        LockerOptions::new([d.url()])
            .with_key_majority(1)
            .with_key_validity(secs(2)),
    )
    .await
    .expect("connect through password-protected sentinels");
    let acl = |rule: &str| {
        tokio::task::block_in_place(|| {
            for s in &d.sentinels {
                let out = s.cli(&["ACL", "SETUSER", "default", rule]);
                assert!(out.contains("OK"), "ACL SETUSER default {rule}: {out}");
            }
        })
    };
    acl("-subscribe");
    tokio::task::block_in_place(|| {
        for s in &d.sentinels {
            s.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
    });
    let ids = node_actor_ids(&locker, secs(4)).await;
    eprintln!("watcher refused: {} NodeActors in 4 s", ids.len());
    // 50 + 100 + 200 + 400 + 800 + 1600 ms of backoff, ±20 % jitter, plus
    // the connect attempts: about 7 actors in 4 s. A restart every ~50 ms
    // (plus connecting) gave dozens.
    assert!(
        ids.len() <= 10,
        "{} NodeActors in 4 s while the sentinels refused the watcher: no backoff",
        ids.len()
    );
    acl("+subscribe");
    let t = Instant::now();
    let back = eventually(secs(6), || async {
        tokio::task::block_in_place(|| {
            d.sentinels.iter().any(|s| {
                s.cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
                    .contains(" sub=1")
            })
        })
    })
    .await;
    assert!(back, "the watcher did not subscribe again once allowed");
    eprintln!(
        "watcher subscribed again {:?} after the ACL allowed it",
        t.elapsed()
    );
    lock_on_primary(&locker, &d, "after the sentinels accepted again").await;
    locker.close().await;
}
