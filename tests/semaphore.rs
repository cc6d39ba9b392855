//! Semaphores (`Locker::semaphore`) against real servers: never more than
//! `permits` holders across lockers, `try_acquire` when full, waiters woken
//! by a release, wait limits, a count mismatch as a typed error, a permit
//! lost like a lock, fencing per slot, and several independent instances.
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use valkeylock::{Error, LockRequest, Locker, LockerOptions, LostReason, MAX_PERMITS};

const MS: Duration = Duration::from_millis(1);

/// 3 lockers × 4 tasks loop on a semaphore of 3: the holders counted in
/// this process never exceed 3, and do reach 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_holders_than_permits() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("sem-cap");
    let mut lockers = Vec::new();
    for _ in 0..3 {
        lockers.push(server.locker().await);
    }
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (l, locker) in lockers.iter().enumerate() {
        for t in 0..4u64 {
            let pool = locker.semaphore(&name, 3).unwrap();
            let (holding, most) = (holding.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..12u64 {
                    let permit = pool.acquire().await.expect("a permit");
                    assert!(permit.slot() < 3);
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    assert!(now <= 3, "{now} holders of a semaphore of 3");
                    let pause = 2 + (l as u64 * 7 + t * 5 + round * 3) % 15;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    assert!(permit.is_held());
                    holding.fetch_sub(1, Ordering::SeqCst);
                    if round % 2 == 0 {
                        permit.release().await.expect("release");
                    } else {
                        drop(permit);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("a task panicked");
    }
    assert_eq!(most.load(Ordering::SeqCst), 3, "never 3 holders at once");
    for l in lockers {
        l.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_semaphore_refuses_a_try_and_wakes_a_waiter_on_release() {
    init_tracing();
    let server = ValkeyServer::start();
    let (a, b) = (server.locker().await, server.locker().await);
    let name = unique("sem-full");
    let pool_a = a.semaphore(&name, 2).unwrap();
    let pool_b = b.semaphore(&name, 2).unwrap();
    assert_eq!((pool_b.name(), pool_b.permits()), (name.as_str(), 2));
    let first = pool_a.acquire().await.unwrap();
    let second = pool_a.acquire().await.unwrap();
    assert_ne!(first.slot(), second.slot());
    assert_eq!(first.name(), name);
    match pool_b.try_acquire().await {
        Err(Error::NotLocked {
            name: n,
            held_by_others,
            ..
        }) => {
            assert_eq!(n, name);
            assert!(held_by_others);
        }
        other => panic!("expected NotLocked, got {other:?}"),
    }
    // A look from the other locker: both slots held, by a's tokens.
    let info = pool_b.inspect().await.unwrap();
    assert_eq!(
        (
            info.name.as_str(),
            info.permits,
            info.held,
            info.free,
            info.unknown
        ),
        (name.as_str(), 2, 2, 0, 0)
    );
    assert_eq!(info.slots.len(), 2);
    assert_eq!(info.slots[1].name, format!("{name}:permit:1"));
    assert!(info
        .slots
        .iter()
        .all(|s| matches!(s.state, valkeylock::LockState::Held { ours: false, .. })));
    let waiter = tokio::spawn({
        let pool_b = pool_b.clone();
        async move { pool_b.acquire().await }
    });
    tokio::time::sleep(200 * MS).await;
    assert!(
        !waiter.is_finished(),
        "a waiter got a permit of a full semaphore"
    );
    let freed = second.slot();
    let released = Instant::now();
    second.release().await.unwrap();
    let permit = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiter was not woken within 2 s of the release")
        .unwrap()
        .expect("the waiter's permit");
    println!("woken {:?} after the release", released.elapsed());
    assert_eq!(permit.slot(), freed);
    assert!(permit.is_held() && first.is_held());
    // Every request of the waiter on the other slot was withdrawn: once it
    // holds its permit, its locker has only that slot's actor left.
    assert!(
        eventually(Duration::from_secs(10), || async { b.active_locks() == 1 }).await,
        "the waiter's other requests were left behind ({} actors)",
        b.active_locks()
    );
    permit.release().await.unwrap();
    first.release().await.unwrap();
    let info = pool_a.inspect().await.unwrap();
    assert_eq!((info.held, info.free), (0, 2), "{info:?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_limit_and_bad_arguments() {
    init_tracing();
    let server = ValkeyServer::start();
    let (a, b) = (server.locker().await, server.locker().await);
    let name = unique("sem-limit");
    let held = a.semaphore(&name, 1).unwrap().acquire().await.unwrap();
    let pool = b.semaphore(&name, 1).unwrap();
    let asked = Instant::now();
    match pool.acquire_with(&LockRequest::new().wait(300 * MS)).await {
        Err(Error::Timeout { name: n, waited }) => {
            assert_eq!((n.as_str(), waited), (name.as_str(), 300 * MS));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(asked.elapsed() >= 300 * MS);
    assert!(
        eventually(Duration::from_secs(10), || async { b.active_locks() == 0 }).await,
        "the timed-out wait left requests behind"
    );
    drop(held);
    let permit = pool
        .acquire_with(&LockRequest::new().wait(Duration::from_secs(5)))
        .await
        .expect("a free permit within the limit");
    permit.release().await.unwrap();

    for permits in [0, MAX_PERMITS + 1] {
        assert!(
            matches!(
                a.semaphore(&name, permits),
                Err(Error::InvalidOptions {
                    field: "permits",
                    ..
                })
            ),
            "{permits}"
        );
    }
    // (A `{hash tag}` is refused only with several keys per lock: see the
    // engine's unit tests.)
    assert!(matches!(a.semaphore("", 2), Err(Error::InvalidName { .. })));
    let too_long = "x".repeat(valkeylock::MAX_NAME_LEN);
    assert!(matches!(
        a.semaphore(&too_long, 2),
        Err(Error::InvalidName { .. })
    ));
    a.close().await;
    b.close().await;
}

/// Lockers that disagree on the count meet as `ConfigMismatch`, in another
/// process's locker and in the holder's own; so does a lock named like a
/// slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_counts_are_a_config_mismatch() {
    init_tracing();
    let server = ValkeyServer::start();
    let (a, b) = (server.locker().await, server.locker().await);
    let name = unique("sem-mismatch");
    let three = a.semaphore(&name, 3).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(three.acquire().await.unwrap());
    }
    let two = b.semaphore(&name, 2).unwrap();
    for result in [
        two.try_acquire().await,
        two.acquire_with(&LockRequest::new().wait(Duration::from_secs(5)))
            .await,
        a.semaphore(&name, 2).unwrap().try_acquire().await,
    ] {
        match result {
            Err(Error::ConfigMismatch {
                name: n,
                ours,
                theirs,
            }) => {
                assert_eq!(n, name);
                assert!(ours.ends_with("p2"), "{ours}");
                assert!(theirs.ends_with("p3"), "{theirs}");
            }
            other => panic!("expected ConfigMismatch, got {other:?}"),
        }
    }
    // The holders of the agreed count are untouched.
    assert!(held.iter().all(|p| p.is_held()));
    drop(held);

    let lock = a.lock(&format!("{name}:permit:0")).await.unwrap();
    let one = b.semaphore(&name, 1).unwrap();
    assert!(matches!(
        one.try_acquire().await,
        Err(Error::ConfigMismatch { .. })
    ));
    drop(lock);
    a.close().await;
    b.close().await;
}

/// A permit is its slot's lock: deleting the slot's keys ends it with the
/// reason (deleted, or overwritten if the waiter was quicker than the
/// holder's check), and a waiter takes the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_is_lost_like_a_lock() {
    init_tracing();
    let server = ValkeyServer::start();
    let (a, b) = (server.locker().await, server.locker().await);
    let name = unique("sem-lost");
    let permit = a.semaphore(&name, 1).unwrap().acquire().await.unwrap();
    let token = permit.cancellation_token();
    let waiter = tokio::spawn({
        let pool = b.semaphore(&name, 1).unwrap();
        async move { pool.acquire().await }
    });
    tokio::time::sleep(100 * MS).await;
    b.force_release(&format!("{name}:permit:{}", permit.slot()))
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), permit.lost())
        .await
        .expect("the loss was not told within 5 s");
    // `b`'s own waiter is woken as soon as its `DEL` is answered, so by the
    // time `a` reads the key after its invalidation, the waiter may have
    // taken it already.
    assert!(
        matches!(reason, LostReason::Deleted | LostReason::Overwritten),
        "{reason:?}"
    );
    assert!(token.is_cancelled() && !permit.is_held());
    let next = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter did not take the freed slot")
        .unwrap()
        .unwrap();
    assert!(next.is_held());
    drop(next);
    a.close().await;
    b.close().await;
}

/// With fencing, each slot's tokens strictly increase across lockers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_count_per_slot() {
    init_tracing();
    let server = ValkeyServer::start();
    let options = || {
        LockerOptions::new([server.url()])
            .with_key_majority(1)
            .with_fencing(true)
    };
    let a = Locker::connect(options()).await.unwrap();
    let b = Locker::connect(options()).await.unwrap();
    let name = unique("sem-fence");
    let mut last = [0u64; 2];
    for round in 0..10 {
        let locker = if round % 2 == 0 { &a } else { &b };
        let pool = locker.semaphore(&name, 2).unwrap();
        let (p, q) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        for permit in [&p, &q] {
            let slot = permit.slot() as usize;
            assert!(
                permit.fencing_token() > last[slot],
                "slot {slot}: {} after {}",
                permit.fencing_token(),
                last[slot]
            );
            last[slot] = permit.fencing_token();
        }
        p.release().await.unwrap();
        q.release().await.unwrap();
    }
    a.close().await;
    b.close().await;
}

/// Three independent instances, `key_majority` 2: permits hold and wake as
/// on one, and survive one instance going down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_over_three_instances() {
    init_tracing();
    let mut servers = [
        ValkeyServer::start(),
        ValkeyServer::start(),
        ValkeyServer::start(),
    ];
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let options = || LockerOptions::new(urls.clone()).with_key_majority(2);
    let a = Locker::connect(options()).await.unwrap();
    let b = Locker::connect(options()).await.unwrap();
    let name = unique("sem-three");
    let pool_a = a.semaphore(&name, 2).unwrap();
    let (p, q) = (
        pool_a.acquire().await.unwrap(),
        pool_a.acquire().await.unwrap(),
    );
    let pool_b = b.semaphore(&name, 2).unwrap();
    assert!(matches!(
        pool_b.try_acquire().await,
        Err(Error::NotLocked { .. })
    ));
    servers[2].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(p.is_held() && q.is_held(), "a minority down cost a permit");
    let waiter = tokio::spawn(async move { pool_b.acquire().await });
    tokio::time::sleep(200 * MS).await;
    assert!(!waiter.is_finished());
    drop(p);
    let next = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was not woken")
        .unwrap()
        .unwrap();
    assert!(next.is_held());
    drop((next, q));
    a.close().await;
    b.close().await;
}
