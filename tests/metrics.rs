//! The `metrics` feature end to end: a real Prometheus exporter on a loopback
//! port, a locker doing the things the metrics count, and plain HTTP scrapes
//! of what the exporter serves.
//!
//! One test function: the recorder is process-global, and tests in one binary
//! run in parallel.

mod support;

use std::time::Duration;

use fred::prelude::*;
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{eventually, unique, ValkeyServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use valkeylock::{Locker, LockerOptions, LostReason};

/// GET /metrics on `port`, with HTTP/1.0 (no chunked encoding); the body.
async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the exporter");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read the response");
    let raw = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The sum of the samples of `name` whose labels include all of `labels`;
/// `None` if there is none.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, tags) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let has = |(k, v): &(&str, &str)| {
            tags.split(',')
                .any(|t| t == format!("{k}=\"{v}\"").as_str())
        };
        if labels.iter().all(has) {
            let v: f64 = value.parse().expect("a number");
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Polls the exporter until `name{labels}` is at least `min`.
async fn wait_for(port: u16, name: &str, labels: &[(&str, &str)], min: f64) {
    let reached = eventually(Duration::from_secs(10), || async {
        sample(&scrape(port).await, name, labels).is_some_and(|v| v >= min)
    })
    .await;
    let text = scrape(port).await;
    assert!(
        reached,
        "{name}{labels:?} did not reach {min}: {:?}\n{text}",
        sample(&text, name, labels)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrape_shows_the_locker() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .expect("buckets")
        .install()
        .expect("install the exporter");

    let mut server = ValkeyServer::start();
    let node = format!("127.0.0.1:{}", server.port);
    let node = node.as_str();
    let admin = server.admin().await;
    // Three keys on the one node: one of them can be lost without losing the lock.
    let options = LockerOptions::new([server.url()])
        .with_key_majority(2)
        .with_key_validity(Duration::from_secs(1));
    let locker = Locker::connect(options).await.expect("connect");
    let name = unique("metrics");
    let key = |i: usize| format!("valkeylock:{i}:{name}");

    wait_for(port, "valkeylock_node_up", &[("node", node)], 1.0).await;

    // Acquire and release.
    locker
        .lock(&name)
        .await
        .expect("lock")
        .release()
        .await
        .expect("release");
    wait_for(
        port,
        "valkeylock_acquisitions_total",
        &[("kind", "wait"), ("outcome", "acquired")],
        1.0,
    )
    .await;
    wait_for(
        port,
        "valkeylock_acquire_wait_seconds_count",
        &[("kind", "wait"), ("outcome", "acquired")],
        1.0,
    )
    .await;
    wait_for(
        port,
        "valkeylock_releases_total",
        &[("outcome", "confirmed")],
        1.0,
    )
    .await;
    wait_for(
        port,
        "valkeylock_hold_seconds_count",
        &[("reason", "released")],
        1.0,
    )
    .await;

    // Contention: a try_lock refused, a waiter that gives up, a waiter that
    // gets the lock handed over.
    let held = locker.lock(&name).await.expect("lock");
    assert!(locker.try_lock(&name).await.is_err());
    wait_for(
        port,
        "valkeylock_acquisitions_total",
        &[("kind", "try"), ("outcome", "not_locked")],
        1.0,
    )
    .await;
    let gave_up = tokio::time::timeout(Duration::from_millis(50), locker.lock(&name)).await;
    assert!(gave_up.is_err(), "got a held lock");
    wait_for(
        port,
        "valkeylock_acquisitions_total",
        &[("kind", "wait"), ("outcome", "cancelled")],
        1.0,
    )
    .await;
    // Two waiters: the first to get the lock releases it at once, and the
    // second, queued behind it, gets it handed over. Hand-overs happen only
    // within 10 ms of an acquisition: on a busy machine, try again.
    let mut held = Some(held);
    for _ in 0..10 {
        let holder = match held.take() {
            Some(g) => g,
            None => locker.lock(&name).await.expect("lock"),
        };
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (locker, name) = (locker.clone(), name.clone());
                tokio::spawn(async move { locker.lock(&name).await?.release().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        holder.release().await.expect("release");
        for w in waiters {
            w.await.expect("task").expect("a waiter's lock and release");
        }
        if sample(&scrape(port).await, "valkeylock_handovers_total", &[]).is_some_and(|n| n >= 1.0)
        {
            break;
        }
    }
    wait_for(port, "valkeylock_handovers_total", &[], 1.0).await;

    // A loop of lock() and a dropped guard sends each acquisition right
    // behind the delete before it (a chain, bounded by the hand-over
    // budget): new acquisitions, not hand-overs of the keys.
    let handovers =
        || async { sample(&scrape(port).await, "valkeylock_handovers_total", &[]).unwrap_or(0.0) };
    let before = handovers().await;
    for _ in 0..300 {
        drop(locker.lock(&name).await.expect("lock"));
    }
    assert_eq!(
        handovers().await,
        before,
        "chained grants counted as hand-overs"
    );
    // Hand-over across lockers: a release of one hands the key to a waiter
    // of the other, and the message is counted.
    let handing = || {
        Locker::connect(
            LockerOptions::new([server.url()])
                .with_key_majority(1)
                .with_handover(true),
        )
    };
    let (a, b) = (
        handing().await.expect("connect"),
        handing().await.expect("connect"),
    );
    let handed_name = unique("metrics-handed");
    let held = a.lock(&handed_name).await.expect("lock");
    let waiter = tokio::spawn({
        let (b, handed_name) = (b.clone(), handed_name.clone());
        async move { b.lock(&handed_name).await?.release().await }
    });
    let claimed = eventually(Duration::from_secs(5), || async {
        let claims: i64 = admin
            .exists(format!("{{valkeylock:0:{handed_name}}}:c"))
            .await
            .unwrap_or(0);
        claims == 1
    })
    .await;
    assert!(claimed, "the waiter's claim is there");
    held.release().await.expect("release");
    waiter
        .await
        .expect("task")
        .expect("the waiter's lock and release");
    wait_for(port, "valkeylock_handover_messages_total", &[], 1.0).await;
    // The message is read beside the direct connections too (`listen`):
    // with the two lockers taking turns, a waiter's own runtime reads it
    // before the engine's thread has taken its copy, now and then at least.
    let taken_here = || async {
        sample(
            &scrape(port).await,
            "valkeylock_handover_messages_on_callers_total",
            &[],
        )
        .unwrap_or(0.0)
    };
    let turns = unique("metrics-turns");
    let mut rounds = 0;
    while taken_here().await < 1.0 && rounds < 50 {
        rounds += 1;
        let tasks: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|locker| {
                let turns = turns.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        locker.lock(&turns).await?.release().await?;
                    }
                    Ok::<_, valkeylock::Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("lock and release");
        }
    }
    assert!(
        taken_here().await >= 1.0,
        "no hand-over message was taken as read on a caller's runtime in {rounds} rounds of 40 turns"
    );
    a.close().await;
    b.close().await;

    let guard = locker.lock(&name).await.expect("lock");

    // Held for a while: extensions, timed per node.
    wait_for(
        port,
        "valkeylock_extension_seconds_count",
        &[("node", node)],
        1.0,
    )
    .await;

    // A minority key deleted by another client: still held, counted and
    // taken back.
    let _: i64 = admin.del(key(2)).await.expect("DEL");
    wait_for(
        port,
        "valkeylock_minority_keys_lost_total",
        &[("node", node), ("reason", "deleted")],
        1.0,
    )
    .await;
    wait_for(
        port,
        "valkeylock_invalidations_total",
        &[("node", node)],
        1.0,
    )
    .await;
    assert!(
        guard.is_held(),
        "lost after a minority DEL: {:?}",
        guard.lost_reason()
    );
    let back = eventually(Duration::from_secs(5), || async {
        admin.exists::<i64, _>(key(2)).await.unwrap_or(0) == 1
    })
    .await;
    assert!(back, "the deleted key was not taken back");
    let healed = eventually(Duration::from_secs(5), || async {
        sample(&scrape(port).await, "valkeylock_degraded_locks", &[]) == Some(0.0)
    })
    .await;
    assert!(
        healed,
        "degraded_locks did not return to 0:\n{}",
        scrape(port).await
    );

    // A majority deleted: the lock is lost, counted by reason.
    let _: i64 = admin.del(vec![key(0), key(1)]).await.expect("DEL");
    let reason = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() after a majority DEL");
    assert_eq!(reason, LostReason::Deleted);
    wait_for(
        port,
        "valkeylock_losses_total",
        &[("reason", "deleted")],
        1.0,
    )
    .await;
    wait_for(
        port,
        "valkeylock_hold_seconds_count",
        &[("reason", "deleted")],
        1.0,
    )
    .await;
    drop(guard);

    // The node goes away and comes back.
    server.restart();
    wait_for(
        port,
        "valkeylock_node_disconnects_total",
        &[("node", node)],
        1.0,
    )
    .await;
    wait_for(
        port,
        "valkeylock_node_reconnects_total",
        &[("node", node)],
        1.0,
    )
    .await;
    wait_for(port, "valkeylock_node_up", &[("node", node)], 1.0).await;
    let text = scrape(port).await;
    assert_eq!(
        sample(&text, "valkeylock_node_up", &[("node", node)]),
        Some(1.0),
        "{text}"
    );
    // The lock name is never a label.
    assert!(
        !text.contains(&name),
        "the lock name leaked into a label:\n{text}"
    );

    locker.close().await;
}
