//! A burst of invalidations larger than the engine's event buffer
//! (`LockerOptions::event_buffer`): the engine's reader falls behind fred's
//! channel and skips what it missed, so every lock re-checks its keys, and
//! every holder whose key went is still told at once, not at its next
//! extension. Without the re-check, the holders whose invalidations were
//! skipped would hear of it only when their extension fails, 15 s in.
//!
//! One test function: it installs a process-global subscriber (the engine
//! logs from its own thread) to see that the reader did fall behind.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use fred::prelude::*;
use support::capture::Capture;
use support::{unique, ValkeyServer};
use tokio::time::{timeout, Instant};
use tracing::Level;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use valkeylock::{Locker, LockerOptions, LostReason};

/// Locks held, and the event buffer: a burst of 50 times the buffer.
const LOCKS: usize = 200;
const EVENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_event_buffer_still_tells_every_holder() {
    // Warnings only, as the engine's debug events would cost it time in
    // the burst.
    let warnings = Capture::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(warnings.clone().with_filter(LevelFilter::WARN)),
    )
    .expect("the only subscriber of this test binary");

    let server = ValkeyServer::start();
    let admin = server.admin().await;
    // Extended every 15 s: nothing but an invalidation or a re-check can
    // tell a holder within the test's bound.
    let options = LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_key_validity(Duration::from_secs(30))
        .with_event_buffer(EVENTS);
    let locker = Locker::connect(options).await.expect("connect");
    let names: Vec<String> = (0..LOCKS).map(|_| unique("burst")).collect();
    let mut guards = Vec::with_capacity(LOCKS);
    for name in &names {
        guards.push(locker.lock(name).await.expect("lock"));
    }

    // Every key deleted in one script: the server writes all their
    // invalidations to the engine's connection at once.
    let keys: Vec<String> = names.iter().map(|n| format!("valkeylock:0:{n}")).collect();
    let started = Instant::now();
    let deleted: i64 = admin
        .eval(
            "local n = 0 for _, k in ipairs(KEYS) do n = n + redis.call('DEL', k) end return n",
            keys,
            Vec::<String>::new(),
        )
        .await
        .expect("delete every key");
    assert_eq!(deleted, LOCKS as i64);

    let told = timeout(Duration::from_secs(10), async {
        for g in &guards {
            g.lost().await;
        }
    })
    .await;
    let still = guards.iter().filter(|g| g.is_held()).count();
    assert!(
        told.is_ok(),
        "{still} of {LOCKS} holders not told 10 s after their keys were deleted"
    );
    eprintln!("{LOCKS} holders told within {:?}", started.elapsed());
    for g in &guards {
        assert_eq!(g.lost_reason(), Some(LostReason::Deleted));
    }
    // The case under test happened: the reader fell behind.
    let lagged = warnings
        .find(Level::WARN, "invalidation channel lagged", &[])
        .len();
    assert!(
        lagged > 0,
        "the reader kept up with {LOCKS} invalidations through a buffer of {EVENTS}: nothing was skipped"
    );

    // The locker goes on: a fresh lock is taken, and a loss is still heard.
    let name = unique("after");
    let g = locker.lock(&name).await.expect("lock after the burst");
    let _: i64 = admin
        .del(format!("valkeylock:0:{name}"))
        .await
        .expect("DEL");
    timeout(Duration::from_secs(10), g.lost())
        .await
        .expect("a loss after the burst was not told");
    drop(guards);
    locker.close().await;
}
