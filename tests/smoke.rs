//! Smoke tests: the basic lock, wake-up and loss paths, and local hand-over under contention.

mod support;

use std::time::Duration;
use support::*;
use valkeylock::{Locker, LockerOptions, LostReason};

#[tokio::test]
async fn smoke() {
    init_tracing();
    let server = ValkeyServer::start();
    let opts = LockerOptions::new([server.url()]).with_key_majority(1);
    let a = Locker::connect(opts.clone()).await.unwrap();
    let b = Locker::connect(opts).await.unwrap();
    let g = a.lock("n").await.unwrap();
    assert!(g.is_held());
    assert!(b.try_lock("n").await.is_err());
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            let t = tokio::time::Instant::now();
            let g = b.lock("n").await.unwrap();
            (t.elapsed(), g)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = tokio::time::Instant::now();
    let _ = g.release().await;
    let (_, g2) = waiter.await.unwrap();
    eprintln!("handover {:?}", t.elapsed());
    let admin = server.admin().await;
    let _: i64 = fred::prelude::KeysInterface::del(&admin, "valkeylock:0:n")
        .await
        .unwrap();
    let t = tokio::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), g2.lost())
        .await
        .unwrap();
    eprintln!("lost {r:?} after {:?}", t.elapsed());
    assert_eq!(r, LostReason::Deleted);
    a.close().await;
    b.close().await;
}

/// Ten tasks of one locker contend on one name: local hand-overs (lock
/// cohorting) keep exclusion, FIFO order keeps every task progressing, and the
/// keys really are released in between (other lockers get turns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_locker_contention() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    init_tracing();
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    let other = server.locker().await;
    let name = unique("cohort");
    let inside = Arc::new(AtomicUsize::new(0));
    let value = Arc::new(std::sync::Mutex::new(0u64));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (locker, name, inside, value) =
            (locker.clone(), name.clone(), inside.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let g = locker.lock(&name).await.unwrap();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let v = *value.lock().unwrap();
                tokio::task::yield_now().await;
                *value.lock().unwrap() = v + 1;
                inside.fetch_sub(1, Ordering::SeqCst);
                let _ = g.release().await;
            }
        }));
    }
    // Another locker (another connection) gets turns in between.
    let outsider = {
        let (other, name, inside, value) =
            (other.clone(), name.clone(), inside.clone(), value.clone());
        tokio::spawn(async move {
            for _ in 0..20 {
                let g = other.lock(&name).await.unwrap();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let v = *value.lock().unwrap();
                tokio::task::yield_now().await;
                *value.lock().unwrap() = v + 1;
                inside.fetch_sub(1, Ordering::SeqCst);
                let _ = g.release().await;
            }
        })
    };
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), outsider)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*value.lock().unwrap(), 1020);
    locker.close().await;
    other.close().await;
}

/// Extensions of many held locks go out as a few batched script calls per
/// node per tick, not one command per lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_are_batched() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = Locker::connect(
        LockerOptions::new([server.url()])
            .with_key_majority(1)
            .with_key_validity(Duration::from_millis(1000)),
    )
    .await
    .unwrap();
    let mut guards = Vec::new();
    for i in 0..300 {
        guards.push(locker.lock(&format!("batch-{i}")).await.unwrap());
    }
    let admin = server.admin().await;
    let before = evalsha_calls(&admin).await;
    // Three extend intervals (500 ms each).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = evalsha_calls(&admin).await;
    let per_tick = (after - before) as f64 / 3.0;
    eprintln!("evalsha calls per extend tick for 300 held locks: {per_tick:.1}");
    assert!(guards.iter().all(|g| g.is_held()));
    assert!(
        per_tick < 30.0,
        "extensions not batched: {per_tick} calls per tick"
    );
    drop(guards);
    locker.close().await;
}

/// An operator's `SCRIPT FLUSH` (or a server that lost its script cache while
/// the connection stayed up) is repaired on the spot: the next script call
/// gets `NOSCRIPT`, loads the script and runs again, so acquire and release
/// keep working and leave no key behind.
#[tokio::test]
async fn script_flush_is_repaired() {
    use fred::prelude::{ClientLike, KeysInterface};
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = server.locker().await;
    let held = locker.lock("before").await.unwrap();
    let flush = || async {
        let _: String = admin
            .custom(fred::cmd!("SCRIPT"), vec!["FLUSH"])
            .await
            .unwrap();
    };
    flush().await;
    // Release runs the release script: NOSCRIPT, load, retry.
    let _ = held.release().await;
    assert_eq!(
        admin.exists::<i64, _>("valkeylock:0:before").await.unwrap(),
        0
    );
    flush().await;
    // Acquire runs the acquire script: the same.
    let g = locker.lock("after").await.unwrap();
    assert!(g.is_held());
    assert_eq!(
        admin.exists::<i64, _>("valkeylock:0:after").await.unwrap(),
        1
    );
    let _ = g.release().await;
    assert_eq!(
        admin.exists::<i64, _>("valkeylock:0:after").await.unwrap(),
        0
    );
    locker.close().await;
}
