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

/// A locker through `proxy`, with `validity` and a command time limit of
/// 200 ms.
async fn proxied(proxy: &Proxy, validity: Duration) -> Locker {
    Locker::connect(
        LockerOptions::new([proxy.url()])
            .with_key_majority(1)
            .with_key_validity(validity)
            .with_try_next_after(Duration::from_millis(200)),
    )
    .await
    .unwrap()
}

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
    let locker = proxied(&proxy, Duration::from_secs(3)).await;
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

/// Releases queued together go to the server in script calls of many keys:
/// a burst of 2,000 `release()` calls is confirmed, every key is gone, and
/// it took far fewer script calls than releases (one call per key, as
/// before, made 10,000 at once outlast their time limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_releases_is_confirmed_in_calls_of_many_keys() {
    use fred::interfaces::ServerInterface;
    init_tracing();
    const N: usize = 2000;
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = Locker::connect(
        LockerOptions::new([server.url()])
            .with_key_majority(1)
            .with_try_next_after(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let prefix = unique("burst");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let (locker, name) = (locker.clone(), format!("{prefix}-{i}"));
        set.spawn(async move { locker.lock(&name).await });
    }
    let mut guards = Vec::with_capacity(N);
    while let Some(r) = set.join_next().await {
        guards.push(r.expect("lock task").expect("lock"));
    }
    let size: u64 = admin.dbsize().await.expect("DBSIZE");
    assert_eq!(size, N as u64);
    let before = evalsha_calls(&admin).await;
    let mut set = tokio::task::JoinSet::new();
    for guard in guards {
        set.spawn(guard.release());
    }
    let mut confirmed = 0;
    while let Some(r) = set.join_next().await {
        r.expect("release task").expect("a confirmed release");
        confirmed += 1;
    }
    assert_eq!(confirmed, N);
    let calls = evalsha_calls(&admin).await - before;
    assert!(
        calls < N as u64 / 2,
        "{calls} script calls for {N} releases queued together"
    );
    let size: u64 = admin.dbsize().await.expect("DBSIZE");
    assert_eq!(size, 0, "keys left after every release was confirmed");
    locker.close().await;
}

/// An acquisition whose reply never comes (the client's timeout gives up on
/// it) may still have run and taken the key. No reply will say so, so the
/// failed attempt deletes it with its token: otherwise the name stayed taken
/// for a whole validity (30 s here) by a lock nobody holds.
#[tokio::test]
async fn an_acquisition_whose_reply_never_came_is_deleted() {
    init_tracing();
    let server = ValkeyServer::start();
    let proxy = Proxy::start(server.port).await;
    let admin = server.admin().await;
    let locker = proxied(&proxy, Duration::from_secs(30)).await;
    // The connections (the engine's and the direct one) are open.
    for _ in 0..3 {
        let warm = unique("release-warm");
        locker.lock(&warm).await.unwrap().release().await.unwrap();
    }
    let name = unique("release-unanswered");
    let before = command_calls(&admin).await;
    proxy.freeze_replies();
    let tried = tokio::time::timeout(Duration::from_secs(10), locker.try_lock(&name))
        .await
        .expect("try_lock() is bounded by try_next_after");
    assert!(tried.is_err(), "no reply, no lock: {tried:?}");
    // Requests still pass: the acquisition ran, and so does the delete.
    let gone = eventually(Duration::from_secs(5), || async {
        existing_keys(&admin, "valkeylock", &name, 1).await == 0
    })
    .await;
    let after = command_calls(&admin).await;
    let more = |cmd: &str| calls_since(&before, &after, cmd);
    assert!(more("set") >= 1, "the acquisition never ran: {after:?}");
    assert!(gone, "the key of an unanswered acquisition stayed");
    assert!(more("del") >= 1, "deleted by expiry, not by us: {after:?}");
    proxy.heal();
    locker.close().await;
}
