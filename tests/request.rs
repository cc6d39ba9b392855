//! Per-call options (`LockRequest`), against a real server: a wait limit
//! that ends with `Error::Timeout` and withdraws the wait, a validity of the
//! lock's own, and a maximum hold that ends the lock with `MaxHold`.
#![allow(missing_docs)]

mod support;

use std::time::{Duration, Instant};

use fred::prelude::*;
use support::*;
use valkeylock::{Error, LockRequest, Locker, LockerOptions, LostReason};

const MS: Duration = Duration::from_millis(1);

async fn pttl(admin: &Client, name: &str) -> i64 {
    admin
        .pttl(format!("valkeylock:0:{name}"))
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn a_wait_limit_ends_with_timeout_and_withdraws_the_wait() {
    init_tracing();
    let server = ValkeyServer::start();
    let holder = server.locker().await;
    let waiter = server.locker().await;
    let name = unique("request-wait");
    let held = holder.lock(&name).await.unwrap();

    let asked = Instant::now();
    let result = waiter
        .lock_with(&name, &LockRequest::new().wait(300 * MS))
        .await;
    let waited = asked.elapsed();
    match result {
        Err(Error::Timeout { name: n, waited: w }) => {
            assert_eq!((n.as_str(), w), (name.as_str(), 300 * MS));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(waited >= 300 * MS, "gave up early: {waited:?}");
    assert!(
        format!(
            "{}",
            Error::Timeout {
                name: "x".into(),
                waited: 300 * MS
            }
        )
        .contains("300ms"),
        "the message names the limit"
    );
    // Withdrawn: nothing queued in the waiter's process, so its actor for
    // the name retires, and the holder's release wakes nobody there.
    assert!(
        eventually(Duration::from_secs(10), || async {
            waiter.active_locks() == 0
        })
        .await,
        "the timed-out wait left its lock actor behind"
    );
    held.release().await.unwrap();
    // A wait with a limit that is met returns the lock like `lock()`.
    let guard = waiter
        .lock_with(&name, &LockRequest::new().wait(Duration::from_secs(5)))
        .await
        .expect("free lock within the limit");
    assert!(guard.is_held());
    guard.release().await.unwrap();
    holder.close().await;
    waiter.close().await;
}

#[tokio::test]
async fn a_wait_limit_also_bounds_a_wait_through_an_outage() {
    init_tracing();
    let mut server = ValkeyServer::start();
    let locker = server.locker().await;
    let name = unique("request-outage");
    server.kill();
    let asked = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        locker.lock_with(&name, &LockRequest::new().wait(500 * MS)),
    )
    .await
    .expect("lock_with returned");
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "expected Timeout with the server down, got {result:?}"
    );
    assert!(asked.elapsed() >= 500 * MS);
    locker.close().await;
}

#[tokio::test]
async fn a_request_sets_the_validity_of_its_own_lock() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = server.locker().await;
    let long = unique("request-long");
    let plain = unique("request-plain");
    let g1 = locker
        .lock_with(&long, &LockRequest::new().validity(Duration::from_secs(60)))
        .await
        .unwrap();
    let g2 = locker.lock(&plain).await.unwrap();
    let (t1, t2) = (pttl(&admin, &long).await, pttl(&admin, &plain).await);
    assert!((55_000..=60_000).contains(&t1), "60 s validity, PTTL {t1}");
    assert!((1..=5_000).contains(&t2), "the locker's 5 s, PTTL {t2}");
    // valid_until follows the lock's own validity.
    let left = g1.valid_until().unwrap() - tokio::time::Instant::now();
    assert!(left > Duration::from_secs(50), "{left:?}");
    // Extended with its own TTL too: still above the locker's 5 s after a
    // few of the locker's extension periods.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(g1.is_held());
    let t1 = pttl(&admin, &long).await;
    assert!(t1 > 5_000, "extended with its own validity, PTTL {t1}");
    g1.release().await.unwrap();
    g2.release().await.unwrap();

    // The same name with a short validity next: the keys get the short TTL.
    let g = locker
        .try_lock_with(
            &long,
            &LockRequest::new().validity(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    let t = pttl(&admin, &long).await;
    assert!((1..=1500).contains(&t), "1.5 s validity, PTTL {t}");
    g.release().await.unwrap();
    locker.close().await;
}

#[tokio::test]
async fn a_maximum_hold_ends_the_lock_deletes_its_keys_and_says_so() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = server.locker().await;
    let other = server.locker().await;
    let name = unique("request-max-hold");
    let asked = tokio::time::Instant::now();
    // Longer than the locker's 2.5 s extension period: extended meanwhile.
    let guard = locker
        .lock_with(&name, &LockRequest::new().max_hold(Duration::from_secs(3)))
        .await
        .unwrap();
    let (until, got) = (guard.valid_until().unwrap(), tokio::time::Instant::now());
    // The hold counts from the grant, between `asked` and `got`.
    assert!(
        until <= got + Duration::from_millis(3005),
        "valid_until within the hold: {:?} after the call returned",
        until - got
    );
    let reason = tokio::time::timeout(Duration::from_secs(20), guard.lost())
        .await
        .expect("ended by the hold");
    assert_eq!(reason, LostReason::MaxHold);
    assert!(asked.elapsed() >= Duration::from_millis(2900));
    assert!(!guard.is_held());
    assert!(guard.cancellation_token().is_cancelled());
    // Its keys are deleted, not left to expire: another locker gets in.
    assert!(
        eventually(Duration::from_secs(2), || async {
            existing_keys(&admin, "valkeylock", &name, 1).await == 0
        })
        .await
    );
    let next = other.try_lock(&name).await.expect("free after the hold");
    // Releasing after the hold is not an error.
    guard.release().await.unwrap();
    next.release().await.unwrap();
    locker.close().await;
    other.close().await;
}

#[tokio::test]
async fn bad_requests_are_typed_errors_and_send_nothing() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = server.locker().await;
    let name = unique("request-bad");
    for (request, field) in [
        (LockRequest::new().validity(5 * MS), "validity"),
        (
            LockRequest::new().validity(Duration::from_micros(1500)),
            "validity",
        ),
        (LockRequest::new().max_hold(Duration::ZERO), "max_hold"),
        (LockRequest::new().wait(Duration::MAX), "wait"),
    ] {
        match locker.lock_with(&name, &request).await {
            Err(Error::InvalidOptions { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{request:?}: expected InvalidOptions, got {other:?}"),
        }
    }
    assert_eq!(locker.active_locks(), 0);
    assert_eq!(existing_keys(&admin, "valkeylock", &name, 1).await, 0);
    locker.close().await;
}

/// A wait that runs out just as the lock is handed to it must not leave the
/// grant held by nobody (extended until the locker closes): the dropped
/// request releases a grant that was already sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_as_it_is_granted_leaves_nothing_held() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    let other = server.locker().await;
    let name = unique("request-race");
    for i in 0..300u64 {
        // A grant leaked by an earlier round is held by nobody and never
        // released: this lock would wait for it for good.
        let held = tokio::time::timeout(Duration::from_secs(10), locker.lock(&name))
            .await
            .unwrap_or_else(|_| panic!("round {i}: a grant of a timed-out wait is still held"))
            .unwrap();
        // Limits around the moment of the release below (local hand-over).
        let limit = Duration::from_micros(200 + (i * 37) % 1500);
        let waiter = {
            let (locker, name) = (locker.clone(), name.clone());
            tokio::spawn(async move {
                locker
                    .lock_with(&name, &LockRequest::new().wait(limit))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_micros(300 + (i * 53) % 1200)).await;
        drop(held);
        match waiter.await.unwrap() {
            Ok(guard) => guard.release().await.unwrap(),
            Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    // Every grant was released: another locker gets the lock.
    let free = eventually(Duration::from_secs(10), || async {
        other.try_lock(&name).await.is_ok()
    })
    .await;
    assert!(free, "a grant of a timed-out wait is still held");
    locker.close().await;
    other.close().await;
}

/// Acquisitions queued together go to the server in script calls of many
/// keys, and each one still gets its own answer: free names are granted,
/// each with its own validity (a call holds one validity), a name held by
/// another owner is refused as such, and a key of the wrong type fails its
/// own lock only. Without the batching every acquisition is a call of its
/// own.
#[tokio::test]
async fn a_burst_of_acquisitions_goes_in_calls_of_many_keys_each_answered_alone() {
    init_tracing();
    const N: usize = 2000;
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    // A long default validity, so that no key's PTTL comes near the own
    // validity below however slow the machine.
    let locker = Locker::connect(
        LockerOptions::new([server.url()])
            .with_key_majority(1)
            .with_key_validity(Duration::from_secs(30)),
    )
    .await
    .expect("connect");
    let prefix = unique("acquire-burst");
    let name = |i: usize| format!("{prefix}-{i}");
    let key = |i: usize| format!("valkeylock:0:{}", name(i));
    // Every 10th name is held by another owner, every 10th + 1 is a hash,
    // every 10th + 2 asks for a validity of its own.
    let (held, spoiled, own) = (|i| i % 10 == 0, |i| i % 10 == 1, |i| i % 10 == 2);
    for i in 0..N {
        let script = if held(i) {
            "return redis.call('SET', KEYS[1], 'someone-else', 'PX', 60000)"
        } else if spoiled(i) {
            "return redis.call('HSET', KEYS[1], 'f', 'v')"
        } else {
            continue;
        };
        let _: Value = admin.eval(script, vec![key(i)], ()).await.expect("set up");
    }
    let before = evalsha_calls(&admin).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let (locker, name) = (locker.clone(), name(i));
        set.spawn(async move {
            let request = LockRequest::new().validity(2000 * MS);
            let result = if own(i) {
                locker.try_lock_with(&name, &request).await
            } else {
                locker.try_lock(&name).await
            };
            (i, result)
        });
    }
    let mut guards = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, result) = r.expect("lock task");
        match result {
            Ok(guard) => {
                assert!(
                    !held(i) && !spoiled(i),
                    "{i}: granted over another owner's or a spoiled key"
                );
                guards.push((i, guard));
            }
            Err(Error::NotLocked { held_by_others, .. }) => {
                assert!(held(i) || spoiled(i), "{i}: a free name was refused");
                assert_eq!(held_by_others, held(i), "{i}: wrong reason");
            }
            Err(e) => panic!("{i}: {e}"),
        }
    }
    let calls = evalsha_calls(&admin).await - before;
    assert_eq!(guards.len(), N * 8 / 10);
    assert!(
        calls < N as u64 / 2,
        "{calls} script calls for {N} acquisitions queued together"
    );
    for (i, _) in &guards {
        let ttl = pttl(&admin, &name(*i)).await;
        if own(*i) {
            assert!(
                (1..=2000).contains(&ttl),
                "{i}: PTTL {ttl} for a validity of 2 s"
            );
        } else {
            assert!(ttl > 2000, "{i}: PTTL {ttl} for the default validity");
        }
    }
    let other: Option<String> = admin.get(key(0)).await.expect("GET");
    assert_eq!(other.as_deref(), Some("someone-else"));
    let kind: String = admin.r#type(key(1)).await.expect("TYPE");
    assert_eq!(kind, "hash");
    for (_, guard) in guards {
        guard.release().await.expect("release");
    }
    locker.close().await;
}
