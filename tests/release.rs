//! `release()` says what happened: `Ok` once every delete is confirmed,
//! `Error::ReleaseUnconfirmed` when a node did not answer (its keys are left
//! to expire), and `Ok` for a lock that was already lost or released by
//! `close()`.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use support::proxy::*;
use support::*;
use valkeylock::{Error, Locker, LockerOptions, LostReason};

#[tokio::test]
async fn a_confirmed_release_is_ok_and_the_key_is_gone() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = server.locker().await;
    let name = unique("release-ok");
    let guard = locker.lock(&name).await.unwrap();
    assert_eq!(existing_keys(&admin, "valkeylock", &name, 1).await, 1);
    guard.release().await.expect("a confirmed release");
    assert_eq!(existing_keys(&admin, "valkeylock", &name, 1).await, 0);
    locker.close().await;
}

#[tokio::test]
async fn a_release_whose_node_does_not_answer_says_so() {
    init_tracing();
    let server = ValkeyServer::start();
    let proxy = Proxy::start(server.port).await;
    let admin = server.admin().await;
    let locker = Locker::connect(
        LockerOptions::new([proxy.url()])
            .with_key_majority(1)
            .with_key_validity(Duration::from_secs(3))
            .with_try_next_after(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let name = unique("release-frozen");
    let guard = locker.lock(&name).await.unwrap();
    proxy.freeze();
    let result = tokio::time::timeout(Duration::from_secs(10), guard.release())
        .await
        .expect("release() is bounded by try_next_after");
    match result {
        Err(Error::ReleaseUnconfirmed {
            name: n,
            deleted: 0,
            unconfirmed: 1,
        }) => assert_eq!(n, name),
        other => panic!("expected ReleaseUnconfirmed, got {other:?}"),
    }
    // Said, not done: the key is still there, and expires on its own.
    assert_eq!(existing_keys(&admin, "valkeylock", &name, 1).await, 1);
    let expired = eventually(Duration::from_secs(10), || async {
        existing_keys(&admin, "valkeylock", &name, 1).await == 0
    })
    .await;
    assert!(expired, "the key outlived its validity");
    proxy.heal();
    locker.close().await;
}

#[tokio::test]
async fn releasing_a_lost_lock_or_after_close_is_ok() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = server.locker().await;
    let name = unique("release-lost");
    let guard = locker.lock(&name).await.unwrap();
    let deleted: i64 = fred::prelude::KeysInterface::del(&admin, format!("valkeylock:0:{name}"))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let reason = tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .unwrap();
    assert_eq!(reason, LostReason::Deleted);
    guard.release().await.expect("a lost lock releases nothing");

    let other = unique("release-closed");
    let guard = locker.lock(&other).await.unwrap();
    locker.close().await;
    assert_eq!(guard.lost_reason(), Some(LostReason::Closed));
    guard.release().await.expect("close released it already");
    assert_eq!(existing_keys(&admin, "valkeylock", &other, 1).await, 0);
}
