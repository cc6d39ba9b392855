//! Ports of the Go suite (`valkeylock/lock_test.go`): `KeyMajority` 2 on one
//! server (3 keys), each scenario run for every client configuration the Go
//! matrix uses (NOLOOP tracking, looping tracking, absolute `PXAT` expiries, and
//! `disable_cache` where the Go test runs with `nocsc`), against real
//! `valkey-server` processes.
#![allow(missing_docs)]

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Client, ClientLike, KeysInterface};
use support::*;
use tokio::time::{sleep, timeout, Instant};
use valkeylock::{Error, LockGuard, Locker, LockerOptions, LostReason};

const PREFIX: &str = "valkeylock";
/// Go's default `KeyMajority`.
const M: usize = 2;
/// Keys per lock: 2·M − 1.
const TOTAL: usize = 3;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn key(name: &str, i: usize) -> String {
    format!("{PREFIX}:{i}:{name}")
}

/// One cell of the Go test matrix.
#[derive(Debug, Clone, Copy)]
struct Variant {
    label: &'static str,
    no_loop: bool,
    set_px: bool,
    nocsc: bool,
}

/// The sub-tests with client-side caching on: "Tracking NoLoop", "Tracking
/// Loop", and absolute expiries (`fallback_set_px` false, `PXAT`).
const CSC: [Variant; 3] = [
    Variant {
        label: "tracking noloop, PX",
        no_loop: true,
        set_px: true,
        nocsc: false,
    },
    Variant {
        label: "tracking loop, PX",
        no_loop: false,
        set_px: true,
        nocsc: false,
    },
    Variant {
        label: "tracking noloop, PXAT",
        no_loop: true,
        set_px: false,
        nocsc: false,
    },
];

/// The same three with `disable_cache` (Go's `nocsc`, the `#01` sub-tests).
const NOCSC: [Variant; 3] = [
    Variant {
        label: "nocsc, noloop, PX",
        no_loop: true,
        set_px: true,
        nocsc: true,
    },
    Variant {
        label: "nocsc, loop, PX",
        no_loop: false,
        set_px: true,
        nocsc: true,
    },
    Variant {
        label: "nocsc, noloop, PXAT",
        no_loop: true,
        set_px: false,
        nocsc: true,
    },
];

fn all_variants() -> Vec<Variant> {
    CSC.iter().chain(NOCSC.iter()).copied().collect()
}

impl Variant {
    /// Go's `newLocker`: `KeyMajority` left at its default of 2.
    fn options(&self, server: &ValkeyServer) -> LockerOptions {
        LockerOptions::new([server.url()])
            .with_no_loop_tracking(self.no_loop)
            .with_fallback_set_px(self.set_px)
            .with_disable_cache(self.nocsc)
    }
}

async fn connect(options: LockerOptions) -> Locker {
    Locker::connect(options).await.expect("connect")
}

fn panic_text(e: tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        return "cancelled".into();
    }
    let p = e.into_panic();
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Runs `scenario` once per variant, all concurrently, each on its own task
/// with a unique lock name of its own choosing. With `own_server` each variant
/// gets a fresh server (needed when the scenario flushes it); otherwise they
/// share one, as the Go suite does. Fails with the list of failed variants.
async fn run_variants<F, Fut>(variants: &[Variant], own_server: bool, scenario: F)
where
    F: Fn(Variant, Arc<ValkeyServer>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    init_tracing();
    let shared = Arc::new(ValkeyServer::start());
    let mut tasks = Vec::new();
    for &v in variants {
        let server = if own_server {
            Arc::new(ValkeyServer::start())
        } else {
            shared.clone()
        };
        let fut = scenario(v, server);
        tasks.push((
            v,
            tokio::spawn(async move {
                if timeout(secs(60), fut).await.is_err() {
                    panic!("scenario did not finish within 60 s");
                }
            }),
        ));
    }
    let mut failed = Vec::new();
    for (v, task) in tasks {
        if let Err(e) = task.await {
            failed.push(format!("[{}] {}", v.label, panic_text(e)));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} variants failed:\n{}",
        failed.len(),
        variants.len(),
        failed.join("\n")
    );
}

/// Waits until every key of `name` is on the server: `lock()` returns once a
/// majority is confirmed, and the last key may still be on its way.
async fn all_keys_present(admin: &Client, name: &str) {
    let present = eventually(secs(2), || async {
        existing_keys(admin, PREFIX, name, TOTAL).await == TOTAL
    })
    .await;
    assert!(present, "not every key of {name:?} appeared on the server");
}

/// DELs keys `0..M` once the lock is settled: every key on the server, and
/// time for the engine to have processed every acquisition reply (the race of
/// a DEL with a reply still in flight is `del_right_after_lock_fires_lost`).
/// Returns when the last DEL was answered.
async fn del_majority(admin: &Client, name: &str) -> Instant {
    all_keys_present(admin, name).await;
    sleep(ms(100)).await;
    for i in 0..M {
        let n: i64 = admin.del(key(name, i)).await.expect("DEL");
        assert_eq!(n, 1, "key {} was not there to delete", key(name, i));
    }
    Instant::now()
}

#[track_caller]
fn assert_not_locked(
    result: Result<LockGuard, Error>,
    name: &str,
    held_by_others_expected: Option<bool>,
) {
    match result {
        Err(Error::NotLocked {
            name: n,
            acquired,
            needed,
            total,
            held_by_others,
        }) => {
            assert_eq!(n, name);
            assert_eq!((needed, total), (M, TOTAL));
            assert!(
                acquired < needed,
                "acquired {acquired} of {needed} yet NotLocked"
            );
            if let Some(want) = held_by_others_expected {
                assert_eq!(held_by_others, want, "held_by_others");
            }
        }
        other => panic!("expected Error::NotLocked for {name:?}, got {other:?}"),
    }
}

/// Go: `TestLocker_WithContext_AutoExtend`. The lock outlives several
/// validities and stays held the whole time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_extend_keeps_lock_past_several_validities() {
    run_variants(&all_variants(), false, |v, server| async move {
        let locker = connect(v.options(&server).with_key_validity(secs(1))).await;
        let admin = server.admin().await;
        let name = unique("auto-extend");
        let guard = locker.lock(&name).await.expect("lock");
        let start = Instant::now();
        while start.elapsed() < ms(3500) {
            assert!(
                guard.is_held(),
                "not held {:?} after acquiring (lost_reason {:?})",
                start.elapsed(),
                guard.lost_reason()
            );
            assert_eq!(guard.lost_reason(), None);
            sleep(ms(20)).await;
        }
        assert!(timeout(ms(50), guard.lost()).await.is_err(), "lost() fired");
        assert!(!guard.cancellation_token().is_cancelled());
        assert_eq!(existing_keys(&admin, PREFIX, &name, TOTAL).await, TOTAL);
        let _ = guard.release().await;
        assert_eq!(
            existing_keys(&admin, PREFIX, &name, TOTAL).await,
            0,
            "keys left after release"
        );
        locker.close().await;
    })
    .await;
}

/// Go: `TestLocker_WithContext_UnlockByClientSideCaching` (CSC only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_by_another_client_fires_lost_deleted() {
    run_variants(&CSC, false, |v, server| async move {
        let locker = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let name = unique("del");
        let guard = locker.lock(&name).await.expect("lock");
        let token = guard.cancellation_token();
        let t = del_majority(&admin, &name).await;
        let reason = timeout(secs(2), guard.lost())
            .await
            .expect("lost() did not fire within 2 s of DEL of a majority of keys");
        eprintln!("[{}] DEL noticed after {:?}", v.label, t.elapsed());
        assert_eq!(reason, LostReason::Deleted);
        assert_eq!(guard.lost_reason(), Some(LostReason::Deleted));
        assert!(!guard.is_held());
        timeout(ms(100), token.cancelled())
            .await
            .expect("token not cancelled after lost()");
        // The loser deletes the key it still had: nothing is left behind.
        let clean = eventually(secs(2), || async {
            existing_keys(&admin, PREFIX, &name, TOTAL).await == 0
        })
        .await;
        assert!(clean, "the remaining key of a lost lock was not deleted");
        locker.close().await;
    })
    .await;
}

/// The same DEL, sent the instant `lock()` returns, many times: the last key's
/// acquisition reply may still be on its way to the engine when its
/// invalidation arrives. Whenever both DELs really deleted a key, a majority
/// is gone and `lost()` must fire (another client could take those keys now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_right_after_lock_fires_lost() {
    const ROUNDS: usize = 100;
    run_variants(&CSC, false, |v, server| async move {
        let locker = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let mut checked = 0;
        for round in 0..ROUNDS {
            let name = unique("del-race");
            let guard = locker.lock(&name).await.expect("lock");
            let mut deleted = 0;
            for i in 0..M {
                let n: i64 = admin.del(key(&name, i)).await.expect("DEL");
                deleted += n;
            }
            if deleted as usize == M {
                checked += 1;
                let reason = match timeout(secs(2), guard.lost()).await {
                    Ok(reason) => reason,
                    Err(_) => panic!(
                        "round {round}: keys 0..{M} deleted right after lock() returned, yet lost() did not fire \
                         within 2 s (is_held {}, {} of {TOTAL} keys on the server now)",
                        guard.is_held(),
                        existing_keys(&admin, PREFIX, &name, TOTAL).await
                    ),
                };
                assert_eq!(reason, LostReason::Deleted, "round {round}");
            } else {
                // A key was not written yet when its DEL ran: the lock may
                // legitimately hold keys 1..3. Nothing to check.
                drop(guard);
            }
        }
        eprintln!("[{}] {checked} of {ROUNDS} rounds had both DELs hit", v.label);
        locker.close().await;
    })
    .await;
}

/// `lost()` and the cancellation token describe the same event: once `lost()`
/// has returned, the token is cancelled ("cancelled the moment the lock
/// ends"). Checked with no delay in between, over many losses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_cancelled_once_lost_returns() {
    const ROUNDS: usize = 30;
    run_variants(&CSC, false, |v, server| async move {
        let locker = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let mut late = Vec::new();
        for round in 0..ROUNDS {
            let name = unique("token-order");
            let guard = locker.lock(&name).await.expect("lock");
            let token = guard.cancellation_token();
            del_majority(&admin, &name).await;
            let reason = timeout(secs(2), guard.lost()).await.expect("lost() after DEL");
            if !token.is_cancelled() {
                late.push(round);
            }
            assert_eq!(reason, LostReason::Deleted);
        }
        assert!(
            late.is_empty(),
            "in rounds {late:?} of {ROUNDS}, lost() had returned but the cancellation token was not cancelled yet"
        );
        locker.close().await;
    })
    .await;
}

/// Go: `TestLocker_WithContext_UnlockBySelfForceWithContext` (CSC only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_lock_from_same_locker_takes_over() {
    run_variants(&CSC, false, |v, server| async move {
        let locker = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let name = unique("force-self");
        let g1 = locker.lock(&name).await.expect("lock");
        let g2 = locker.force_lock(&name).await.expect("force_lock");
        let reason = timeout(secs(2), g1.lost())
            .await
            .expect("first guard not told it was forced");
        assert_eq!(reason, LostReason::Forced);
        assert!(!g1.is_held());
        assert!(g1.cancellation_token().is_cancelled());
        assert!(g2.is_held());
        sleep(ms(300)).await;
        assert!(g2.is_held(), "forcing guard lost: {:?}", g2.lost_reason());
        assert_eq!(g2.lost_reason(), None);
        assert_eq!(existing_keys(&admin, PREFIX, &name, TOTAL).await, TOTAL);
        drop(g1);
        sleep(ms(100)).await;
        assert!(
            g2.is_held(),
            "dropping the forced guard disturbed the new holder"
        );
        assert_eq!(existing_keys(&admin, PREFIX, &name, TOTAL).await, TOTAL);
        let _ = g2.release().await;
        assert_eq!(existing_keys(&admin, PREFIX, &name, TOTAL).await, 0);
        locker.close().await;
    })
    .await;
}

/// Go: `TestLocker_WithContext_UnlockByOtherForceWithContext` (CSC only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_lock_from_other_locker_takes_over() {
    run_variants(&CSC, false, |v, server| async move {
        let a = connect(v.options(&server)).await;
        let b = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let name = unique("force-other");
        let g1 = a.lock(&name).await.expect("lock");
        let g2 = b.force_lock(&name).await.expect("force_lock");
        let reason = timeout(secs(2), g1.lost())
            .await
            .expect("first guard not told it was forced");
        assert_eq!(reason, LostReason::Forced);
        assert!(g1.cancellation_token().is_cancelled());
        assert!(g2.is_held());
        sleep(ms(300)).await;
        assert!(g2.is_held(), "forcing guard lost: {:?}", g2.lost_reason());
        // The forced-out locker must not have deleted the new holder's keys.
        assert_eq!(existing_keys(&admin, PREFIX, &name, TOTAL).await, TOTAL);
        assert_not_locked(a.try_lock(&name).await, &name, Some(true));
        let _ = g2.release().await;
        a.close().await;
        b.close().await;
    })
    .await;
}

/// Go: `TestLocker_ForceWithContext_UnlockBySelfForceWithContext` (CSC only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_lock_is_lost_to_force_from_same_locker() {
    run_variants(&CSC, false, |v, server| async move {
        let locker = connect(v.options(&server)).await;
        let name = unique("force-force-self");
        let g1 = locker.force_lock(&name).await.expect("first force_lock");
        assert!(g1.is_held());
        let g2 = locker.force_lock(&name).await.expect("second force_lock");
        let reason = timeout(secs(2), g1.lost())
            .await
            .expect("first forced guard not told");
        assert_eq!(reason, LostReason::Forced);
        assert!(g2.is_held());
        sleep(ms(200)).await;
        assert!(
            g2.is_held(),
            "second forced guard lost: {:?}",
            g2.lost_reason()
        );
        let _ = g2.release().await;
        locker.close().await;
    })
    .await;
}

/// Go: `TestLocker_ForceWithContext_UnlockByOtherForceWithContext` (CSC only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_lock_is_lost_to_force_from_other_locker() {
    run_variants(&CSC, false, |v, server| async move {
        let a = connect(v.options(&server)).await;
        let b = connect(v.options(&server)).await;
        let name = unique("force-force-other");
        let g1 = a.force_lock(&name).await.expect("first force_lock");
        let g2 = b.force_lock(&name).await.expect("second force_lock");
        let reason = timeout(secs(2), g1.lost())
            .await
            .expect("first forced guard not told");
        assert_eq!(reason, LostReason::Forced);
        assert!(g2.is_held());
        sleep(ms(200)).await;
        assert!(
            g2.is_held(),
            "second forced guard lost: {:?}",
            g2.lost_reason()
        );
        let _ = g2.release().await;
        a.close().await;
        b.close().await;
    })
    .await;
}

/// Go: `TestLocker_WithContext_ExtendByClientSideCaching` (CSC only). Another
/// client shortens the TTL of a majority of keys to 100 ms; the holder notices
/// and re-extends, so the lock survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pexpire_by_another_client_is_repaired() {
    run_variants(&CSC, false, |v, server| async move {
        let locker = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let name = unique("pexpire");
        let guard = locker.lock(&name).await.expect("lock");
        // `lock()` returns on a majority, and the last key's acquisition
        // may still be on its way: the first lock of a `Locker` can send a
        // key on the engine's connection and the others on the direct
        // connection that opened meanwhile. Each PEXPIRE must shorten a key
        // of the holder's.
        all_keys_present(&admin, &name).await;
        for i in 0..M {
            let set: i64 = admin
                .pexpire(key(&name, i), 100, None)
                .await
                .expect("PEXPIRE");
            assert_eq!(set, 1);
        }
        sleep(secs(1)).await;
        assert!(
            guard.is_held(),
            "lock not held 1 s after PEXPIRE 100ms: lost_reason {:?}",
            guard.lost_reason()
        );
        assert_eq!(guard.lost_reason(), None);
        for i in 0..TOTAL {
            let pttl: i64 = admin.pttl(key(&name, i)).await.expect("PTTL");
            assert!(
                pttl > 1000,
                "key {i}: PTTL {pttl} ms, expected the holder to have re-extended it"
            );
        }
        let _ = guard.release().await;
        locker.close().await;
    })
    .await;
}

/// Go: `TestLocker_WithContext_AutoExtendConcurrent`. Holder 1 keeps the lock
/// for 4 validities while a second `lock()` of the same Locker waits; the
/// release hands it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_extend_concurrent_hands_over_on_release() {
    run_variants(&all_variants(), false, |v, server| async move {
        let locker = connect(
            v.options(&server)
                .with_key_validity(secs(1))
                .with_extend_interval(ms(500)),
        )
        .await;
        let name = unique("auto-extend-concurrent");
        let g1 = locker.lock(&name).await.expect("lock");
        let w1 = g1.watcher();
        let second = tokio::spawn({
            let locker = locker.clone();
            let name = name.clone();
            async move { locker.lock(&name).await }
        });
        let start = Instant::now();
        while start.elapsed() < secs(4) {
            assert!(
                g1.is_held(),
                "holder 1 not held after {:?} (lost_reason {:?})",
                start.elapsed(),
                g1.lost_reason()
            );
            assert!(
                !second.is_finished(),
                "second lock() returned while holder 1 held the lock"
            );
            sleep(ms(20)).await;
        }
        let _ = g1.release().await;
        let g2 = timeout(secs(3), second)
            .await
            .expect("second lock() did not get the lock within 3 s of the release")
            .expect("task")
            .expect("second lock()");
        assert!(g2.is_held());
        assert_eq!(
            timeout(ms(500), w1.lost())
                .await
                .expect("watcher of guard 1"),
            LostReason::Released
        );
        assert!(w1.cancellation_token().is_cancelled());
        assert!(!w1.is_held());
        // Holder 2 keeps it past a validity too.
        sleep(ms(1500)).await;
        assert!(g2.is_held(), "holder 2 lost it: {:?}", g2.lost_reason());
        let _ = g2.release().await;
        locker.close().await;
    })
    .await;
}

/// Go: `TestLocker_WithContext_Cleanup`. A `lock()` future dropped while
/// waiting leaves no actor and no key behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_lock_future_leaves_nothing_behind() {
    run_variants(&all_variants(), false, |v, server| async move {
        let a = connect(v.options(&server)).await;
        let b = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let name = unique("cleanup");
        let holder = a.lock(&name).await.expect("lock");
        assert!(
            timeout(ms(400), a.lock(&name)).await.is_err(),
            "same-locker waiter got a held lock"
        );
        assert!(
            timeout(ms(400), b.lock(&name)).await.is_err(),
            "other-locker waiter got a held lock"
        );
        let _ = holder.release().await;
        let idle = eventually(secs(3), || async {
            a.active_locks() == 0 && b.active_locks() == 0
        })
        .await;
        assert!(
            idle,
            "lock actors left behind: a.active_locks()={}, b.active_locks()={}",
            a.active_locks(),
            b.active_locks()
        );
        assert_eq!(
            existing_keys(&admin, PREFIX, &name, TOTAL).await,
            0,
            "keys left behind"
        );
        // Nobody picks the lock up later on behalf of the withdrawn waiters.
        sleep(ms(500)).await;
        assert_eq!(
            existing_keys(&admin, PREFIX, &name, TOTAL).await,
            0,
            "keys re-appeared"
        );
        assert_eq!((a.active_locks(), b.active_locks()), (0, 0));
        a.close().await;
        b.close().await;
    })
    .await;
}

/// Go: `TestLocker_TryWithContext`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_fails_while_held() {
    run_variants(&all_variants(), false, |v, server| async move {
        let a = connect(v.options(&server)).await;
        let b = connect(v.options(&server)).await;
        let name = unique("try");
        let g = a.try_lock(&name).await.expect("first try_lock");
        assert!(g.is_held());
        assert_not_locked(a.try_lock(&name).await, &name, None);
        assert_not_locked(b.try_lock(&name).await, &name, Some(true));
        assert!(g.is_held(), "a failed try_lock disturbed the holder");
        let _ = g.release().await;
        let g = b.try_lock(&name).await.expect("try_lock after release");
        let _ = g.release().await;
        a.close().await;
        b.close().await;
    })
    .await;
}

/// Go: `TestLocker_ForceWithContextThenTryWithContext`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_fails_after_force_lock() {
    run_variants(&all_variants(), false, |v, server| async move {
        let a = connect(v.options(&server)).await;
        let b = connect(v.options(&server)).await;
        let name = unique("force-try");
        let g = a.force_lock(&name).await.expect("force_lock");
        assert_not_locked(a.try_lock(&name).await, &name, None);
        assert_not_locked(b.try_lock(&name).await, &name, Some(true));
        assert!(g.is_held());
        let _ = g.release().await;
        a.close().await;
        b.close().await;
    })
    .await;
}

/// Go: `TestLocker_TryWithContext_MultipleLocker`, with the success count
/// fixed (a success is an `Ok(guard)`) and exclusion checked on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_many_lockers() {
    const LOCKERS: usize = 10;
    const TRIES: usize = 100;
    run_variants(&all_variants(), false, |v, server| async move {
        let name = unique("try-many");
        let successes = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let holders = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let mut lockers = Vec::new();
        for _ in 0..LOCKERS {
            lockers.push(connect(v.options(&server)).await);
        }
        let mut tasks = Vec::new();
        for locker in &lockers {
            let (locker, name) = (locker.clone(), name.clone());
            let (successes, failures, holders, overlaps) = (
                successes.clone(),
                failures.clone(),
                holders.clone(),
                overlaps.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for _ in 0..TRIES {
                    match locker.try_lock(&name).await {
                        Ok(guard) => {
                            if holders.fetch_add(1, Ordering::SeqCst) != 0 {
                                overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            assert!(
                                guard.is_held(),
                                "try_lock returned a guard that is not held"
                            );
                            successes.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            holders.fetch_sub(1, Ordering::SeqCst);
                            let _ = guard.release().await;
                        }
                        Err(Error::NotLocked { .. }) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            panic!("try_lock failed with something other than NotLocked: {e:?}")
                        }
                    }
                }
            }));
        }
        for t in tasks {
            if let Err(e) = t.await {
                panic!("a try_lock task failed: {}", panic_text(e));
            }
        }
        let (ok, not_locked) = (
            successes.load(Ordering::SeqCst),
            failures.load(Ordering::SeqCst),
        );
        eprintln!("[{}] {ok} successes, {not_locked} NotLocked", v.label);
        assert_eq!(ok + not_locked, LOCKERS * TRIES);
        assert!(ok >= 1, "no try_lock ever succeeded");
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "two try_lock guards held at once"
        );
        for l in &lockers {
            l.close().await;
        }
    })
    .await;
}

/// Go: `TestLocker_Close`, plus what Go leaves untested: the keys are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_waiters_ends_holder_and_deletes_keys() {
    run_variants(&all_variants(), false, |v, server| async move {
        let locker = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let name = unique("close");
        let holder = locker.lock(&name).await.expect("lock");
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let (locker, name) = (locker.clone(), name.clone());
                tokio::spawn(async move { locker.lock(&name).await })
            })
            .collect();
        sleep(ms(300)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "a waiter returned while the lock was held"
        );
        assert_eq!(existing_keys(&admin, PREFIX, &name, TOTAL).await, TOTAL);
        timeout(secs(5), locker.close())
            .await
            .expect("close() hung");
        assert_eq!(
            existing_keys(&admin, PREFIX, &name, TOTAL).await,
            0,
            "keys still on the server after close() returned"
        );
        for (i, w) in waiters.into_iter().enumerate() {
            let r = timeout(secs(2), w)
                .await
                .unwrap_or_else(|_| panic!("waiter {i} still waiting after close"))
                .expect("task");
            assert!(
                matches!(r, Err(Error::Closed)),
                "waiter {i}: expected Err(Closed), got {r:?}"
            );
        }
        let reason = timeout(secs(1), holder.lost())
            .await
            .expect("holder's lost() after close");
        assert_eq!(reason, LostReason::Closed);
        assert!(!holder.is_held());
        assert!(locker.is_closed());
        let r = locker.lock(&name).await;
        assert!(matches!(r, Err(Error::Closed)), "lock after close: {r:?}");
        let r = locker.try_lock(&name).await;
        assert!(
            matches!(r, Err(Error::Closed)),
            "try_lock after close: {r:?}"
        );
        let r = locker.force_lock(&name).await;
        assert!(
            matches!(r, Err(Error::Closed)),
            "force_lock after close: {r:?}"
        );
        let r = locker.lock(&unique("close-other")).await;
        assert!(
            matches!(r, Err(Error::Closed)),
            "lock of another name after close: {r:?}"
        );
        timeout(secs(2), locker.close())
            .await
            .expect("second close() hung");
        drop(holder);
        sleep(ms(100)).await;
        assert_eq!(existing_keys(&admin, PREFIX, &name, TOTAL).await, 0);
    })
    .await;
}

/// Go: `TestLocker_Flush`. fred drops the null invalidation of FLUSHALL, so the
/// holder finds out at its next extension, within the validity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_fires_lost_and_locker_keeps_working() {
    run_variants(&all_variants(), true, |v, server| async move {
        let locker = connect(v.options(&server).with_key_validity(secs(2))).await;
        let admin = server.admin().await;
        let name = unique("flush");
        let guard = locker.lock(&name).await.expect("lock");
        let _: () = admin.flushall(false).await.expect("FLUSHALL");
        let t = Instant::now();
        let reason = timeout(secs(3), guard.lost())
            .await
            .expect("lost() did not fire within 3 s (key_validity 2 s) of FLUSHALL");
        eprintln!(
            "[{}] FLUSHALL noticed after {:?} as {reason}",
            v.label,
            t.elapsed()
        );
        assert_eq!(reason, LostReason::Deleted);
        assert!(!guard.is_held());
        let g2 = timeout(secs(5), locker.lock(&name))
            .await
            .expect("lock() after FLUSHALL hung")
            .expect("lock() after FLUSHALL");
        assert!(g2.is_held());
        assert_eq!(existing_keys(&admin, PREFIX, &name, TOTAL).await, TOTAL);
        let other = timeout(secs(5), locker.lock(&unique("flush-other")))
            .await
            .expect("lock() of another name hung")
            .expect("lock() of another name");
        let _ = other.release().await;
        let _ = g2.release().await;
        locker.close().await;
    })
    .await;
}

/// `disable_cache`: waiters poll, and a loss is noticed at the next extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_cache_waiter_polls_and_del_noticed_at_extend() {
    run_variants(&NOCSC, false, |v, server| async move {
        let opts = v
            .options(&server)
            .with_key_validity(secs(3))
            .with_extend_interval(ms(500));
        let a = connect(opts.clone()).await;
        let b = connect(opts).await;
        let admin = server.admin().await;
        let name = unique("nocsc");
        let holder = a.lock(&name).await.expect("lock");
        let waiter = tokio::spawn({
            let (b, name) = (b.clone(), name.clone());
            async move { b.lock(&name).await }
        });
        sleep(ms(500)).await;
        assert!(!waiter.is_finished(), "waiter got a held lock");
        let t = Instant::now();
        let _ = holder.release().await;
        let g = timeout(secs(3), waiter)
            .await
            .expect("waiter did not acquire within 3 s of the release")
            .expect("task")
            .expect("lock");
        eprintln!(
            "[{}] polling waiter acquired {:?} after release",
            v.label,
            t.elapsed()
        );
        assert!(g.is_held());
        let t = del_majority(&admin, &name).await;
        let reason = timeout(ms(1500), g.lost())
            .await
            .expect("DEL not noticed within 1.5 s (extend_interval 500 ms, key_validity 3 s)");
        eprintln!("[{}] DEL noticed after {:?}", v.label, t.elapsed());
        assert_eq!(reason, LostReason::Deleted);
        a.close().await;
        b.close().await;
    })
    .await;
}

/// `lost()` may be awaited many times, is cancel-safe, and agrees with the
/// cancellation token and watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_is_repeatable_and_cancel_safe() {
    run_variants(&CSC, false, |v, server| async move {
        let locker = connect(v.options(&server)).await;
        let admin = server.admin().await;
        let name = unique("lost-cancel-safe");
        let guard = locker.lock(&name).await.expect("lock");
        let token = guard.cancellation_token();
        for _ in 0..5 {
            tokio::select! {
                r = guard.lost() => panic!("lost() fired while held: {r:?}"),
                _ = sleep(ms(40)) => {}
            }
        }
        assert!(timeout(ms(50), guard.lost()).await.is_err());
        assert!(!token.is_cancelled());
        assert!(guard.is_held());
        let watcher = guard.watcher();
        let watched = tokio::spawn(async move { watcher.lost().await });
        let cancelled = tokio::spawn({
            let token = token.clone();
            async move { token.cancelled().await }
        });
        del_majority(&admin, &name).await;
        let reason = timeout(secs(2), guard.lost())
            .await
            .expect("lost() after DEL");
        assert_eq!(reason, LostReason::Deleted);
        for _ in 0..3 {
            assert_eq!(
                timeout(ms(100), guard.lost()).await.expect("lost() again"),
                LostReason::Deleted
            );
        }
        assert_eq!(guard.lost_reason(), Some(LostReason::Deleted));
        assert_eq!(guard.valid_until(), None);
        assert_eq!(
            timeout(secs(1), watched)
                .await
                .expect("watcher")
                .expect("task"),
            LostReason::Deleted
        );
        timeout(secs(1), cancelled)
            .await
            .expect("token not cancelled")
            .expect("task");
        assert!(guard.cancellation_token().is_cancelled());
        drop(guard);
        locker.close().await;
    })
    .await;
}
