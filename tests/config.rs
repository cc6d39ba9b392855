//! Configurations that must not silently break exclusion, and guards that
//! outlive their `Locker` handle:
//! - lockers listing the same nodes in different orders exclude each other;
//! - a locker whose `key_majority` differs from the holder's fails with
//!   `Error::ConfigMismatch` instead of taking the lock beside it;
//! - a guard keeps its engine alive after the last `Locker` is dropped.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use fred::interfaces::ClientLike;
use support::*;
use tokio::time::{sleep, timeout, Instant};
use valkeylock::{Error, Locker, LockerOptions};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn is_mismatch(r: &Result<valkeylock::LockGuard, Error>) -> bool {
    matches!(r, Err(Error::ConfigMismatch { .. }))
}

/// Three servers, every order of them: a locker listing them in that order
/// and one listing them in the original order never both hold one name,
/// whichever takes it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_order_does_not_matter() {
    init_tracing();
    let servers = [
        ValkeyServer::start(),
        ValkeyServer::start(),
        ValkeyServer::start(),
    ];
    let urls: Vec<String> = servers.iter().map(ValkeyServer::url).collect();
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let base = Locker::connect(LockerOptions::new(urls.clone()))
        .await
        .expect("connect");
    for order in orders {
        let listed: Vec<String> = order.iter().map(|&i| urls[i].clone()).collect();
        let other = Locker::connect(LockerOptions::new(listed.clone()))
            .await
            .expect("connect");
        for first_is_base in [true, false] {
            let name = unique("order");
            let (first, second) = if first_is_base {
                (&base, &other)
            } else {
                (&other, &base)
            };
            let g = first.try_lock(&name).await.expect("the first try_lock");
            let r = second.try_lock(&name).await;
            assert!(
                matches!(r, Err(Error::NotLocked { .. })),
                "order {order:?}: both lockers hold {name:?} ({r:?})"
            );
            let _ = g.release().await;
            let g = timeout(ms(2000), second.lock(&name))
                .await
                .expect("the second locker waits for a free lock")
                .expect("lock");
            let _ = g.release().await;
        }
        other.close().await;
        // Both lockers agree on which server holds each key.
        let a = LockerOptions::new(urls.clone());
        let b = LockerOptions::new(listed.clone());
        for i in 0..3 {
            let on_a = a.node_of_key(i).expect("placement");
            let on_b = b.node_of_key(i).expect("placement");
            assert_eq!(urls[on_a], listed[on_b], "key {i} with order {order:?}");
        }
    }
    base.close().await;
}

/// One server; a locker with `key_majority` 1 and one with 2. Whichever holds
/// a name, the other's `try_lock` and `lock` fail with `ConfigMismatch` at
/// once instead of taking the keys the holder does not use (or waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_mismatch_is_an_error() {
    init_tracing();
    let server = ValkeyServer::start();
    let one = Locker::connect(LockerOptions::new([server.url()]).with_key_majority(1))
        .await
        .expect("connect m1");
    let two = Locker::connect(LockerOptions::new([server.url()]).with_key_majority(2))
        .await
        .expect("connect m2");
    for (holder, other, label) in [(&one, &two, "m1 holds"), (&two, &one, "m2 holds")] {
        let name = unique("mismatch");
        let g = holder.lock(&name).await.expect("lock");
        let r = other.try_lock(&name).await;
        assert!(is_mismatch(&r), "{label}: try_lock gave {r:?}");
        if let Err(Error::ConfigMismatch { ours, theirs, .. }) = &r {
            assert_ne!(ours, theirs);
        }
        let r = timeout(ms(2000), other.lock(&name))
            .await
            .expect("lock() waited instead of failing");
        assert!(is_mismatch(&r), "{label}: lock gave {r:?}");
        // Two waiters queued together both hear it.
        let (w1, w2) = tokio::join!(other.lock(&name), other.lock(&name));
        assert!(
            is_mismatch(&w1) && is_mismatch(&w2),
            "{label}: {w1:?} {w2:?}"
        );
        assert!(g.is_held(), "{label}: the holder lost the lock");
        let _ = g.release().await;
        // Once free, the other configuration takes it normally.
        let g = timeout(ms(2000), other.lock(&name))
            .await
            .expect("lock() after the release")
            .expect("lock");
        let _ = g.release().await;
    }
    one.close().await;
    two.close().await;
}

/// A guard whose `Locker` was a temporary keeps the engine running: still
/// held (and extended) well past its validity, another locker cannot take
/// it; dropping the guard releases the lock and closes the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_keeps_its_engine_alive() {
    init_tracing();
    let server = ValkeyServer::start();
    // One connection per engine, counted below (direct connections close
    // with their locker too: `tests/direct.rs`).
    let opts = LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_key_validity(ms(1000))
        .with_direct_connections(false);
    let name = unique("owned");
    let g = Locker::connect(opts.clone())
        .await
        .expect("connect")
        .lock(&name)
        .await
        .expect("lock");
    sleep(ms(3000)).await;
    assert!(
        g.is_held(),
        "the guard ended when its Locker was dropped: {:?}",
        g.lost_reason()
    );
    let other = Locker::connect(opts).await.expect("connect other");
    let r = other.try_lock(&name).await;
    assert!(
        matches!(r, Err(Error::NotLocked { .. })),
        "another locker took a held lock: {r:?}"
    );
    let waiter = tokio::spawn({
        let (other, name) = (other.clone(), name.clone());
        async move { other.lock(&name).await }
    });
    sleep(ms(100)).await;
    let admin = server.admin().await;
    let clients = || async {
        let list: String = admin
            .custom(
                fred::types::CustomCommand::new_static("CLIENT", None, false),
                vec!["LIST"],
            )
            .await
            .unwrap_or_default();
        list.lines().count()
    };
    let before = clients().await;
    let dropped = Instant::now();
    drop(g);
    let got = timeout(ms(500), waiter)
        .await
        .expect("the lock was not freed promptly after the guard was dropped")
        .expect("join")
        .expect("lock");
    eprintln!("freed {:?} after the guard was dropped", dropped.elapsed());
    let _ = got.release().await;
    // The engine closed: its connection is gone.
    let closed = eventually(ms(2000), || async { clients().await == before - 1 }).await;
    assert!(closed, "the dropped guard's engine kept its connection");
    other.close().await;
}

/// Values not in this library's format (the Go valkeylock writes 24 raw
/// random bytes; older versions of this library 48 hex digits without a
/// fingerprint) are plain "held by another owner": `NotLocked`, and
/// `lock()` waits, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_values_are_plain_other_owners() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = Locker::connect(LockerOptions::new([server.url()]))
        .await
        .expect("connect");
    let go: Vec<u8> = (0u8..24).map(|i| i.wrapping_mul(97) ^ 0xa5).collect();
    let old = "0123456789abcdef".repeat(3);
    for value in [go, old.into_bytes()] {
        let name = unique("foreign");
        for i in 0..3 {
            let _: () = fred::prelude::KeysInterface::set(
                &admin,
                format!("valkeylock:{i}:{name}"),
                fred::types::Value::Bytes(value.clone().into()),
                Some(fred::types::Expiration::PX(5000)),
                None,
                false,
            )
            .await
            .expect("SET");
        }
        let r = locker.try_lock(&name).await;
        assert!(
            matches!(
                r,
                Err(Error::NotLocked {
                    held_by_others: true,
                    ..
                })
            ),
            "{r:?}"
        );
        let waited = timeout(ms(300), locker.lock(&name)).await;
        assert!(waited.is_err(), "lock() did not wait: {waited:?}");
    }
    locker.close().await;
}
