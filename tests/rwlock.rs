//! Read-write locks (`Locker::rw_lock`) against real servers: readers share,
//! a writer is alone, never both (several lockers, one and three
//! instances); a waiting writer stops new readers and is woken when the
//! last reader leaves; readers are woken when the writer leaves; fencing
//! tokens on the write side; `try_` forms, wait limits, a lost read side,
//! bad input as typed errors.
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::KeysInterface;
use support::*;
use tokio::time::Instant;
use valkeylock::{Error, LockRequest, Locker, LockerOptions, LostReason};

const WITHIN: Duration = Duration::from_secs(10);

/// 3 lockers × 4 tasks, each reading or writing at random: never a writer
/// with anyone else, several readers at once seen, every task done.
async fn mixed(lockers: &[Locker], name: &str, rounds: u64) -> (usize, u64) {
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let most_readers = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (l, locker) in lockers.iter().enumerate() {
        for t in 0..4u64 {
            let rw = locker.rw_lock(name).unwrap();
            let (readers, writers, most) = (readers.clone(), writers.clone(), most_readers.clone());
            tasks.push(tokio::spawn(async move {
                let mut last_token = 0;
                for round in 0..rounds {
                    let pause = Duration::from_millis(1 + (l as u64 * 5 + t * 3 + round) % 7);
                    if (l as u64 + t + round) % 4 == 0 {
                        let w = rw.write().await.expect("write");
                        assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                        assert_eq!(readers.load(Ordering::SeqCst), 0, "a writer with readers");
                        assert!(w.fencing_token() > last_token);
                        last_token = w.fencing_token();
                        tokio::time::sleep(pause).await;
                        assert!(w.is_held());
                        writers.fetch_sub(1, Ordering::SeqCst);
                        w.release().await.expect("release");
                    } else {
                        let r = rw.read().await.expect("read");
                        let now = readers.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        assert_eq!(writers.load(Ordering::SeqCst), 0, "a reader with a writer");
                        tokio::time::sleep(pause).await;
                        assert!(r.is_held());
                        readers.fetch_sub(1, Ordering::SeqCst);
                        if round % 2 == 0 {
                            r.release().await.expect("release");
                        } else {
                            drop(r);
                        }
                    }
                }
                last_token
            }));
        }
    }
    let mut tokens = 0;
    for t in tasks {
        tokens = tokens.max(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("a task hung")
                .expect("a task panicked"),
        );
    }
    (most_readers.load(Ordering::SeqCst), tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_writers_are_alone() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("rw");
    let mut lockers = Vec::new();
    for _ in 0..3 {
        lockers.push(server.locker().await);
    }
    let (most, _) = mixed(&lockers, &name, 16).await;
    assert!(most >= 2, "readers never shared: at most {most} at once");
    for l in lockers {
        l.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_writers_are_alone_over_three_instances() {
    init_tracing();
    let servers: Vec<ValkeyServer> = (0..3).map(|_| ValkeyServer::start()).collect();
    let options = LockerOptions::new(servers.iter().map(|s| s.url())).with_key_majority(2);
    let mut lockers = Vec::new();
    for _ in 0..3 {
        lockers.push(Locker::connect(options.clone()).await.unwrap());
    }
    let name = unique("rw3");
    let (most, _) = mixed(&lockers, &name, 10).await;
    assert!(most >= 2, "readers never shared: at most {most} at once");
    for l in lockers {
        l.close().await;
    }
}

/// Two readers hold; a writer in another locker waits, and meanwhile a new
/// reader is refused (`try_read`) and a waiting one does not get in; the
/// writer is woken when the last reader leaves, then the waiting reader
/// when the writer leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_stops_new_readers_and_wakes_on_the_last_reader() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("rw-pref");
    let (a, b, c) = (
        server.locker().await,
        server.locker().await,
        server.locker().await,
    );
    let (ra, rb, rc) = (
        a.rw_lock(&name).unwrap(),
        b.rw_lock(&name).unwrap(),
        c.rw_lock(&name).unwrap(),
    );
    let r1 = ra.read().await.unwrap();
    let r2 = ra.read().await.unwrap();
    assert_ne!(r1.slot(), r2.slot());
    assert!(matches!(
        rb.try_write().await,
        Err(Error::NotLocked { ref name, .. }) if *name == *rb.name()
    ));
    let writer = tokio::spawn({
        let rb = rb.clone();
        async move {
            let w = rb.write().await.expect("write");
            (Instant::now(), w)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "the writer got in beside readers");
    assert!(
        matches!(rc.try_read().await, Err(Error::NotLocked { .. })),
        "a new reader got in while a writer waits"
    );
    let reader = tokio::spawn({
        let rc = rc.clone();
        async move {
            let r = rc.read().await.expect("read");
            (Instant::now(), r)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!reader.is_finished(), "a waiting reader passed the writer");
    r1.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "the writer got in beside a reader");
    let last_left = Instant::now();
    r2.release().await.unwrap();
    let (at, w) = tokio::time::timeout(WITHIN, writer)
        .await
        .expect("the writer woke within 10 s")
        .unwrap();
    eprintln!("writer in {:?} after the last reader left", at - last_left);
    assert!(w.fencing_token() > 0);
    assert!(!reader.is_finished(), "a reader beside the writer");
    let writer_left = Instant::now();
    w.release().await.unwrap();
    let (at, r) = tokio::time::timeout(WITHIN, reader)
        .await
        .expect("the reader woke within 10 s")
        .unwrap();
    eprintln!("reader in {:?} after the writer left", at - writer_left);
    drop(r);
    for l in [a, b, c] {
        l.close().await;
    }
}

/// The write side's fencing tokens increase from writer to writer (the
/// locker has no `fencing` option); readers have none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_are_fenced() {
    init_tracing();
    let server = ValkeyServer::start();
    let (a, b) = (server.locker().await, server.locker().await);
    let name = unique("rw-fence");
    let mut last = 0;
    for i in 0..6 {
        let locker = if i % 2 == 0 { &a } else { &b };
        let rw = locker.rw_lock(&name).unwrap();
        let w = rw.write().await.unwrap();
        assert!(w.fencing_token() > last, "{} > {last}", w.fencing_token());
        last = w.fencing_token();
        drop(w);
        let r = rw.read().await.unwrap();
        assert_eq!(r.fencing_token(), 0);
        r.release().await.unwrap();
    }
    a.close().await;
    b.close().await;
}

/// A reader whose key is deleted is told; wait limits end as `Timeout`
/// naming the read-write lock; bad names are typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_limits_and_bad_input() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    let name = unique("rw-misc");
    let rw = locker.rw_lock(&name).unwrap();
    let r = rw.read().await.unwrap();
    let admin = server.admin().await;
    let key = format!("{{valkeylock:0:{name}}}:r{}", r.slot());
    let deleted: i64 = admin.del(&key).await.unwrap();
    assert_eq!(deleted, 1, "{key}");
    let reason = tokio::time::timeout(WITHIN, r.lost())
        .await
        .expect("told within 10 s");
    assert_eq!(reason, LostReason::Deleted);

    let w = rw.write().await.unwrap();
    let other = server.locker().await;
    let request = LockRequest::new().wait(Duration::from_millis(200));
    let orw = other.rw_lock(&name).unwrap();
    match orw.read_with(&request).await {
        Err(Error::Timeout { name: n, .. }) => assert_eq!(n, name),
        r => panic!("expected a timeout, got {r:?}"),
    }
    match orw.write_with(&request).await {
        Err(Error::Timeout { name: n, .. }) => assert_eq!(n, name),
        r => panic!("expected a timeout, got {r:?}"),
    }
    drop(w);

    for bad in ["", "a{b}c", "x\u{1f}w"] {
        assert!(
            matches!(locker.rw_lock(bad), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        locker.lock("x\u{1f}w").await,
        Err(Error::InvalidName { .. })
    ));
    locker.close().await;
    other.close().await;
}

/// 2 lockers × 4 reader tasks in a loop (hold 2 ms) and a writer in a
/// third locker (hold 1 ms, pause 20 ms), for a few seconds: every
/// acquisition and release returns within 10 s (readers and writers keep
/// taking turns, none is left waiting), and the writer gets in repeatedly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_and_a_writer_keep_taking_turns() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("rw-turns");
    let secs = Duration::from_secs(6);
    let mut tasks = Vec::new();
    let mut lockers = Vec::new();
    for l in 0..2 {
        let locker = server.locker().await;
        for t in 0..4 {
            let rw = locker.rw_lock(&name).unwrap();
            tasks.push(tokio::spawn(async move {
                let end = Instant::now() + secs;
                let mut reads = 0u64;
                while Instant::now() < end {
                    let r = tokio::time::timeout(WITHIN, rw.read())
                        .await
                        .unwrap_or_else(|_| panic!("reader {l}/{t} waited 10 s"))
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    tokio::time::timeout(WITHIN, r.release())
                        .await
                        .unwrap_or_else(|_| panic!("reader {l}/{t}: release hung"))
                        .unwrap();
                    reads += 1;
                }
                reads
            }));
        }
        lockers.push(locker);
    }
    let writer = server.locker().await;
    let rw = writer.rw_lock(&name).unwrap();
    let end = Instant::now() + secs;
    let mut writes = 0;
    while Instant::now() < end {
        let w = tokio::time::timeout(WITHIN, rw.write())
            .await
            .expect("the writer waited 10 s")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        w.release().await.unwrap();
        writes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reads = 0;
    for t in tasks {
        reads += t.await.expect("a reader task failed");
    }
    eprintln!("{writes} writes, {reads} reads");
    assert!(
        writes >= 10 && reads >= 10,
        "{writes} writes, {reads} reads"
    );
    writer.close().await;
    for l in lockers {
        l.close().await;
    }
}
