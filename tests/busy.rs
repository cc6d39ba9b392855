//! A busy application does not cost a holder its lock (issue #11): the
//! engine runs on a thread and runtime of its own, so its extensions go out
//! while the holder's runtime is blocked. Each test blocks the holder's
//! runtime for three validities while another locker, on a thread of its own,
//! tries to take the lock; it must not get it, and the holder must still hold
//! it afterwards. The control case shows the same test failing when the
//! engine shares the blocked runtime (`dedicated_runtime` off).
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::*;
use valkeylock::{Locker, LockerOptions};

const VALIDITY: Duration = Duration::from_secs(1);
const BLOCKED_FOR: Duration = Duration::from_secs(3);

fn options(url: &str) -> LockerOptions {
    LockerOptions::new([url])
        .with_key_majority(1)
        .with_key_validity(VALIDITY)
}

/// Another process, in effect: a locker on a thread and runtime of its own
/// that calls `try_lock` every 20 ms until `stop`, releasing at once whatever
/// it gets. Returns how many times it got the lock.
struct Contender {
    stop: Arc<AtomicBool>,
    wins: Arc<AtomicU32>,
    attempts: Arc<AtomicU32>,
    thread: std::thread::JoinHandle<()>,
}

impl Contender {
    fn start(url: String, name: String) -> Contender {
        let stop = Arc::new(AtomicBool::new(false));
        let wins = Arc::new(AtomicU32::new(0));
        let attempts = Arc::new(AtomicU32::new(0));
        let (s, w, a) = (stop.clone(), wins.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let locker = Locker::connect(options(&url)).await.unwrap();
                while !s.load(Ordering::SeqCst) {
                    a.fetch_add(1, Ordering::SeqCst);
                    if let Ok(guard) = locker.try_lock(&name).await {
                        w.fetch_add(1, Ordering::SeqCst);
                        let _ = guard.release().await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                locker.close().await;
            });
        });
        Contender {
            stop,
            wins,
            attempts,
            thread,
        }
    }

    fn wins(&self) -> u32 {
        self.wins.load(Ordering::SeqCst)
    }

    /// Waits (in real time, without a runtime) until it has tried `n` times.
    fn wait_attempts(&self, n: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.attempts.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the contender never got going"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        self.wins.load(Ordering::SeqCst)
    }
}

/// The check after the block, shared by the tests: the holder still holds,
/// nobody else got it; once released, the contender does get it (so it was
/// able to all along).
async fn after_the_block(guard: valkeylock::LockGuard, contender: Contender) {
    assert_eq!(
        contender.wins(),
        0,
        "another locker took the lock while its holder's runtime was blocked"
    );
    assert!(
        guard.is_held(),
        "the holder lost its lock: {:?}",
        guard.lost_reason()
    );
    assert_eq!(guard.lost_reason(), None);
    let _ = guard.release().await;
    let got = eventually(Duration::from_secs(10), || async { contender.wins() > 0 }).await;
    assert!(got, "the contender never got the released lock");
    contender.stop();
}

/// A holder of `name` through a locker built with `options`, and a contender
/// that has already tried twice to take it.
async fn held_with_contender(
    server: &ValkeyServer,
    name: &str,
    options: LockerOptions,
) -> (Locker, valkeylock::LockGuard, Contender) {
    let locker = Locker::connect(options).await.unwrap();
    let guard = locker.lock(name).await.unwrap();
    let contender = Contender::start(server.url(), name.to_owned());
    contender.wait_attempts(2);
    (locker, guard, contender)
}

#[tokio::test]
async fn a_holder_that_blocks_its_current_thread_runtime_keeps_its_lock() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("busy-ct");
    let (locker, guard, contender) =
        held_with_contender(&server, &name, options(&server.url())).await;
    // The critical section computes without yielding: this runtime (the
    // test's only thread) runs nothing else for three validities.
    std::thread::sleep(BLOCKED_FOR);
    after_the_block(guard, contender).await;
    locker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_multi_thread_runtime_is_all_busy_keeps_its_lock() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("busy-mt");
    let (locker, guard, contender) =
        held_with_contender(&server, &name, options(&server.url())).await;
    // Both workers block at once (the barrier proves they are both taken),
    // and so does the thread running this test's body.
    let all_busy = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let b = all_busy.clone();
            tokio::spawn(async move {
                b.wait();
                std::thread::sleep(BLOCKED_FOR);
            })
        })
        .collect();
    all_busy.wait();
    std::thread::sleep(BLOCKED_FOR);
    for w in workers {
        w.await.unwrap();
    }
    after_the_block(guard, contender).await;
    locker.close().await;
}

/// The control: the same block with the engine on the blocked runtime loses
/// the lock to the contender, and the holder learns it once it runs again.
/// It shows the tests above would catch an engine that shares the runtime.
#[tokio::test]
async fn with_the_engine_on_the_blocked_runtime_the_lock_is_lost() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("busy-shared");
    let options = options(&server.url()).with_dedicated_runtime(false);
    let (locker, guard, contender) = held_with_contender(&server, &name, options).await;
    std::thread::sleep(BLOCKED_FOR);
    assert!(
        contender.wins() > 0,
        "the contender should have taken the expired lock"
    );
    assert!(!guard.is_held());
    let reason = tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("the holder is told once its runtime runs");
    assert!(reason.is_loss(), "{reason:?}");
    contender.stop();
    locker.close().await;
}
