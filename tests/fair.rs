//! Fair queueing (`LockerOptions::fair_queueing`) against a real server:
//! waiters of several lockers (each its own connections, as separate
//! processes have) are served in the order they started waiting; a waiter
//! that died holds the queue up for about one validity and no longer, one
//! whose replies come too late for it to win for about two; a try
//! is refused while others queue; a waiter that gives up leaves the queue,
//! and an empty queue leaves no keys behind.
#![allow(missing_docs)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use valkeylock::{Error, LockRequest, Locker, LockerOptions, WaitKind};

const MS: Duration = Duration::from_millis(1);

async fn fair_locker(server: &ValkeyServer, validity: Duration) -> Locker {
    Locker::connect(
        LockerOptions::new([server.url()])
            .with_key_majority(2)
            .with_key_validity(validity)
            .with_fair_queueing(true),
    )
    .await
    .expect("connect a fair locker")
}

/// A raw command's integer reply (-1 for anything else).
async fn int(admin: &fred::clients::Client, args: &[&str]) -> i64 {
    match support::cluster::command(admin, args).await {
        Ok(fred::types::Value::Integer(n)) => n,
        _ => -1,
    }
}

/// How many waiters the queues of `name`'s keys hold, key by key.
async fn queued(admin: &fred::clients::Client, name: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(int(admin, &["ZCARD", &format!("{{valkeylock:{i}:{name}}}:q")]).await);
    }
    out
}

/// Places `member` in the queue of every key of `name`, arriving at
/// `since_us`, its place lapsing at `until_ms` (server time, as the
/// script keeps them).
async fn place(
    admin: &fred::clients::Client,
    name: &str,
    member: &str,
    since_us: i64,
    until_ms: i64,
) {
    for i in 0..3 {
        let q = format!("{{valkeylock:{i}:{name}}}:q");
        let qd = format!("{{valkeylock:{i}:{name}}}:qd");
        assert_eq!(
            int(admin, &["ZADD", &q, &since_us.to_string(), member]).await,
            1
        );
        assert_eq!(
            int(admin, &["ZADD", &qd, &until_ms.to_string(), member]).await,
            1
        );
    }
}

/// Six lockers start waiting 40 ms apart while a seventh holds the name; each
/// holds it briefly once granted. They are granted in the order they came,
/// every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_all_lockers_are_served_in_arrival_order() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("fair-order");
    let holder = fair_locker(&server, Duration::from_secs(5)).await;
    let first = holder.lock(&name).await.expect("the first holder");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut lockers = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let locker = fair_locker(&server, Duration::from_secs(5)).await;
        lockers.push(locker.clone());
        let (name, order) = (name.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = locker.lock(&name).await.expect("a waiter's lock");
            order.lock().unwrap().push(i);
            tokio::time::sleep(15 * MS).await;
            g.release().await.expect("release");
        }));
        tokio::time::sleep(40 * MS).await;
    }
    let admin = server.admin().await;
    assert_eq!(
        queued(&admin, &name).await,
        vec![6, 6, 6],
        "every waiter has its place on every key"
    );
    first.release().await.expect("release");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("a waiter was not served within 10 s")
            .expect("a waiter panicked");
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    assert!(
        eventually(Duration::from_secs(2), || async {
            let q = format!("{{valkeylock:0:{name}}}:q");
            let qd = format!("{{valkeylock:0:{name}}}:qd");
            let qt = format!("{{valkeylock:0:{name}}}:qt");
            int(&admin, &["EXISTS", &q, &qd, &qt]).await == 0
        })
        .await,
        "an empty queue leaves no keys behind"
    );
    holder.close().await;
    for l in lockers {
        l.close().await;
    }
}

/// A place nobody refreshes (its waiter's process died) keeps a fair waiter
/// out until it lapses, about one validity, and a try is refused meanwhile;
/// a locker without fair queueing respects a live queue too (its waiters
/// join it once they have waited a validity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_waiter_holds_the_queue_up_for_one_validity_at_most() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("fair-dead");
    let validity = Duration::from_millis(1500);
    let admin = server.admin().await;
    // A waiter that came first, then died: its place lapses in 1.5 s.
    let now_ms = match support::cluster::command(&admin, &["TIME"]).await {
        Ok(fred::types::Value::Array(t)) => {
            let part = |v: &fred::types::Value| v.as_str().unwrap().parse::<i64>().unwrap();
            part(&t[0]) * 1000 + part(&t[1]) / 1000
        }
        other => panic!("TIME: {other:?}"),
    };
    place(&admin, &name, "dead", now_ms * 1000 - 5_000, now_ms + 1500).await;
    let fair = fair_locker(&server, validity).await;
    match fair.try_lock(&name).await {
        Err(Error::NotLocked { .. }) => {}
        other => panic!("a try while another waiter queues: {other:?}"),
    }
    let started = Instant::now();
    let g = tokio::time::timeout(Duration::from_secs(5), fair.lock(&name))
        .await
        .expect("not granted within 5 s of a dead waiter's place")
        .expect("lock");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "granted after {waited:?}, ahead of a waiter that came first"
    );
    assert!(
        waited < validity + Duration::from_millis(1000),
        "held up {waited:?} by a place that lapses after {validity:?}"
    );
    g.release().await.expect("release");
    // A locker without fair queueing does not pass a live queue either.
    place(&admin, &name, "dead", 1, now_ms + 60_000).await;
    let unfair = Locker::connect(LockerOptions::new([server.url()]).with_key_majority(2))
        .await
        .expect("connect");
    match unfair.try_lock(&name).await {
        Err(Error::NotLocked { .. }) => {}
        other => panic!("an unfair try while another waiter queues: {other:?}"),
    }
    for i in 0..3 {
        let q = format!("{{valkeylock:{i}:{name}}}:q");
        let qd = format!("{{valkeylock:{i}:{name}}}:qd");
        assert_eq!(int(&admin, &["DEL", &q, &qd]).await, 2);
    }
    let g = unfair
        .try_lock(&name)
        .await
        .expect("an unfair try, no queue");
    g.release().await.expect("release");
    fair.close().await;
    unfair.close().await;
}

/// A waiter whose replies come later than its time limit: at the head of the
/// queue, its acquisitions run and take the keys, but it never learns so in
/// time and deletes them again. It must not keep its place at the head,
/// keeping out a waiter who can win: once its replies have been late for a
/// validity (the grace that keeps places through shorter outages) it stops
/// refreshing its place, which lapses a validity later, and the next waiter
/// is served while the link is still slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_replies_come_too_late_does_not_keep_the_head() {
    init_tracing();
    let server = ValkeyServer::start();
    let proxy = support::proxy::Proxy::start(server.port).await;
    let admin = server.admin().await;
    let name = unique("fair-slow-head");
    let validity = Duration::from_secs(1);
    let holder = fair_locker(&server, validity).await;
    let held = holder.lock(&name).await.expect("the first holder");
    let slow = Locker::connect(
        LockerOptions::new([proxy.url()])
            .with_key_majority(2)
            .with_key_validity(validity)
            .with_try_next_after(Duration::from_millis(200))
            .with_fair_queueing(true),
    )
    .await
    .expect("connect through the proxy");
    let first = tokio::spawn({
        let (slow, name) = (slow.clone(), name.clone());
        async move { slow.lock(&name).await.map(|g| g.valid_until()) }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            queued(&admin, &name).await == [1, 1, 1]
        })
        .await,
        "the first waiter never queued"
    );
    // From now on its replies take 600 ms, three times its time limit.
    proxy.delay(Duration::from_millis(300));
    let fast = fair_locker(&server, validity).await;
    let second = tokio::spawn({
        let (fast, name) = (fast.clone(), name.clone());
        async move {
            let started = Instant::now();
            let g = fast.lock(&name).await.expect("lock");
            let waited = started.elapsed();
            g.release().await.expect("release");
            waited
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            queued(&admin, &name).await == [2, 2, 2]
        })
        .await,
        "the second waiter never queued"
    );
    held.release().await.expect("release");
    let waited = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second waiter was kept out for 10 s by a head that cannot win")
        .expect("the second waiter");
    assert!(
        !first.is_finished(),
        "the slow waiter won through a 600 ms link"
    );
    proxy.heal();
    // Its link fast again, the first waiter is served too.
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first waiter is served once its link is fast")
        .expect("join")
        .expect("lock");
    eprintln!("the second waiter waited {waited:?}");
    for l in [holder, slow, fast] {
        l.close().await;
    }
}

/// A waiter whose wait limit passes leaves the queue at once, so the next
/// one is not held up by its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_leaves_the_queue() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("fair-give-up");
    let a = fair_locker(&server, Duration::from_secs(5)).await;
    let b = fair_locker(&server, Duration::from_secs(5)).await;
    let held = a.lock(&name).await.expect("lock");
    match b
        .lock_with(&name, &LockRequest::new().wait(Duration::from_millis(300)))
        .await
    {
        Err(Error::Timeout { .. }) => {}
        other => panic!("a wait limit of 300 ms while held: {other:?}"),
    }
    let admin = server.admin().await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            queued(&admin, &name).await == vec![0, 0, 0]
        })
        .await,
        "the place of a waiter that gave up is still queued: {:?}",
        queued(&admin, &name).await
    );
    held.release().await.expect("release");
    let g = b.try_lock(&name).await.expect("a try on a free name");
    g.release().await.expect("release");
    a.close().await;
    b.close().await;
}

/// `inspect` lists a waiter's place, beside each of the three keys, and no
/// longer once the waiter won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_lists_the_queued_waiter() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("fair-inspect");
    let a = fair_locker(&server, Duration::from_secs(5)).await;
    let b = fair_locker(&server, Duration::from_secs(5)).await;
    let held = a.lock(&name).await.expect("lock");
    let waits = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move { b.lock(&name).await.expect("b locks") }
    });
    let listed = |n: usize| {
        let (a, name) = (&a, &name);
        eventually(Duration::from_secs(5), move || async move {
            a.inspect(name).await.is_ok_and(|i| i.waiting.len() == n)
        })
    };
    assert!(listed(1).await, "b's place is listed");
    let info = a.inspect(&name).await.expect("inspect");
    let w = &info.waiting[0];
    assert_eq!((w.how, w.keys), (WaitKind::QueuePlace, 3), "{info:?}");
    assert!(w.waited < Duration::from_secs(5), "{info:?}");
    assert!(w.lapses_in > Duration::ZERO, "{info:?}");
    assert_eq!(info.waiting_unreadable, None);
    held.release().await.expect("release");
    let g = tokio::time::timeout(Duration::from_secs(5), waits)
        .await
        .expect("b is granted")
        .expect("b's task");
    assert!(listed(0).await, "b won, and is no longer listed");
    g.release().await.expect("release");
    a.close().await;
    b.close().await;
}

/// Without fair queueing, a waiter that has waited one validity takes its
/// place in the queue: from then on, a release goes to it, not to whoever
/// retries first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfair_waiter_queues_once_it_has_waited_a_validity() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("unfair-queues");
    let unfair = || async {
        Locker::connect(
            LockerOptions::new([server.url()])
                .with_key_majority(2)
                .with_key_validity(Duration::from_secs(1)),
        )
        .await
        .expect("connect")
    };
    let (a, b, c) = (unfair().await, unfair().await, unfair().await);
    let held = a.lock(&name).await.expect("lock");
    let waiter = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move {
            let g = b.lock(&name).await.expect("the waiter's lock");
            (Instant::now(), g)
        }
    });
    let admin = server.admin().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        queued(&admin, &name).await,
        vec![0, 0, 0],
        "queued too early"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            queued(&admin, &name).await == vec![1, 1, 1]
        })
        .await,
        "the waiter did not queue after a validity: {:?}",
        queued(&admin, &name).await
    );
    // A barger tries as fast as it can while the lock changes hands.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let barger = tokio::spawn({
        let (c, name, stop) = (c.clone(), name.clone(), stop.clone());
        async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(g) = c.try_lock(&name).await {
                    let at = Instant::now();
                    g.release().await.expect("release");
                    return Some(at);
                }
                tokio::time::sleep(MS).await;
            }
            None
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    held.release().await.expect("release");
    let (granted, g) = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the queued waiter was not served")
        .expect("task");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    g.release().await.expect("release");
    if let Some(barged) = barger.await.expect("barger") {
        assert!(
            barged > granted,
            "the barger got the lock ahead of the queue"
        );
    }
    for l in [a, b, c] {
        l.close().await;
    }
}
