//! Event latencies against a real `valkey-server` on loopback, printed as
//! tables (not criterion: each sample needs setup and a settle pause).
//!
//! - `wakeup`: locker A holds a name, locker B waits in `lock()`; A releases.
//!   Measured: from the call of A's `release()` until B's `lock()` returns.
//!   Peers in the same run: rslock with its default retry (3 attempts spaced by
//!   a random 0–200 ms, `acquire` looping on that), and the raw floor spinning
//!   `SET NX PX` (the round-trip floor, at the cost of a busy server).
//! - `loss_detection`: a plain fred client `DEL`s the key of a held lock.
//!   Measured: from just before the `DEL` is sent until `guard.lost()`
//!   resolves. (Neither peer notices a lost lock by itself.)
//!
//! - `busy`: both of the above while the application's runtime (the bench's
//!   multi-thread runtime, 2 workers) is saturated by four CPU-bound tasks that
//!   compute in 1 ms slices and yield between them, with the engine on its own
//!   thread (the default) and on the application's runtime
//!   (`dedicated_runtime` off), next to the idle figures of each. The
//!   measuring tasks run on the busy runtime too: the figures are what the
//!   application sees.
//!
//! Run: `cargo bench --bench events` (`CI=1` for fewer samples).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Args, Kind, Raw};
use fred::prelude::KeysInterface;
use support::ValkeyServer;
use tokio::time::{sleep, Instant};
use valkeylock::{Locker, LostReason};

/// How long the waiter is left waiting before the release, so that it has
/// made its attempt (and armed tracking) and is idle.
const SETTLE: Duration = Duration::from_millis(20);

fn main() {
    let args = Args::parse();
    if args.list {
        return;
    }
    let quick = args.quick();
    let rt = common::runtime();
    let (samples, rslock_samples) = if quick { (50, 20) } else { (200, 100) };
    println!("# events bench: {}", common::machine());
    println!("# mode: {}", if quick { "quick (CI)" } else { "full" });
    let server = ValkeyServer::start();
    let url = server.url();

    let mut rows: Vec<(String, String, Vec<u64>)> = Vec::new();
    rt.block_on(async {
        if args.wants("wakeup") {
            let (wake, release) = wakeup_valkeylock(&url, samples, true).await;
            rows.push(("wakeup".into(), "valkeylock".into(), wake));
            rows.push((
                "wakeup (part)".into(),
                "valkeylock: A's `release()` alone".into(),
                release,
            ));
            rows.push((
                "wakeup".into(),
                "rslock (default retry)".into(),
                wakeup_rslock(&url, rslock_samples).await,
            ));
            rows.push((
                "wakeup".into(),
                "raw (spinning SET NX)".into(),
                wakeup_raw(&url, samples).await,
            ));
        }
        if args.wants("wakeup") {
            rows.push((
                "wakeup (floor)".into(),
                "raw client `PING` after the same idle pause".into(),
                ping_after_idle(&url, samples).await,
            ));
        }
        if args.wants("loss_detection") {
            rows.push((
                "loss_detection".into(),
                "valkeylock".into(),
                loss_valkeylock(&url, samples, true).await,
            ));
        }
        if args.wants("busy") {
            for (engine, dedicated) in [
                ("engine thread", true),
                ("engine on the app runtime", false),
            ] {
                for busy in [false, true] {
                    let load = busy.then(Busy::start);
                    let state = if busy { "busy" } else { "idle" };
                    let (wake, _) = wakeup_valkeylock(&url, samples, dedicated).await;
                    let loss = loss_valkeylock(&url, samples, dedicated).await;
                    if let Some(load) = load {
                        load.stop().await;
                    }
                    rows.push((
                        format!("wakeup, {state} runtime"),
                        format!("valkeylock ({engine})"),
                        wake,
                    ));
                    rows.push((
                        format!("loss_detection, {state} runtime"),
                        format!("valkeylock ({engine})"),
                        loss,
                    ));
                }
            }
        }
    });

    println!();
    println!("## Event latencies");
    println!();
    println!("| scenario | impl | samples | p50 µs | p90 µs | p99 µs | max µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (scenario, imp, mut v) in rows {
        let n = v.len();
        let p50 = common::quantile(&mut v, 0.5);
        let p90 = common::quantile(&mut v, 0.9);
        let p99 = common::quantile(&mut v, 0.99);
        let max = common::quantile(&mut v, 1.0);
        println!(
            "| {scenario} | {imp} | {n} | {:.1} | {:.1} | {:.1} | {:.1} |",
            common::us(p50),
            common::us(p90),
            common::us(p99),
            common::us(max)
        );
    }
    drop(server);
}

/// Returns (release → B acquired, A's `release()` call alone), ns.
async fn wakeup_valkeylock(url: &str, samples: usize, dedicated: bool) -> (Vec<u64>, Vec<u64>) {
    let urls = [url.to_owned()];
    let options = common::valkeylock_options(&urls, 1).with_dedicated_runtime(dedicated);
    let a = Locker::connect(options.clone()).await.expect("connect A");
    let b = Locker::connect(options).await.expect("connect B");
    let name = Kind::Valkeylock.name("wakeup");
    let mut out = Vec::with_capacity(samples);
    let mut releases = Vec::with_capacity(samples);
    for _ in 0..samples + 5 {
        let held = a.lock(&name).await.expect("A lock");
        let waiter = {
            let b = b.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let g = b.lock(&name).await.expect("B lock");
                let at = Instant::now();
                let _ = g.release().await;
                at
            })
        };
        sleep(SETTLE).await;
        assert!(!waiter.is_finished(), "B got the lock while A held it");
        let t0 = Instant::now();
        let _ = held.release().await;
        releases.push(t0.elapsed().as_nanos() as u64);
        let at = waiter.await.expect("waiter");
        out.push(at.saturating_duration_since(t0).as_nanos() as u64);
    }
    a.close().await;
    b.close().await;
    out.drain(..5); // warm-up
    releases.drain(..5);
    (out, releases)
}

async fn wakeup_rslock(url: &str, samples: usize) -> Vec<u64> {
    let ttl = Duration::from_millis(common::TTL_MS);
    let a = rslock::LockManager::new(vec![url.to_owned()]);
    let b = rslock::LockManager::new(vec![url.to_owned()]);
    let name = Kind::Rslock.name("wakeup");
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples + 2 {
        let held = a.acquire(name.as_str(), ttl).await.expect("A acquire");
        let waiter = {
            let b = b.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let g = b.acquire(name.as_str(), ttl).await.expect("B acquire");
                let at = Instant::now();
                let _ = g.release().await;
                at
            })
        };
        sleep(SETTLE).await;
        let t0 = Instant::now();
        let _ = held.release().await;
        let at = waiter.await.expect("waiter");
        out.push(at.saturating_duration_since(t0).as_nanos() as u64);
    }
    out.drain(..2);
    out
}

async fn wakeup_raw(url: &str, samples: usize) -> Vec<u64> {
    let a = Raw::connect(url).await;
    let b = Raw::connect(url).await;
    let name = Kind::Raw.name("wakeup");
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples + 5 {
        let token = a.lock(&name).await;
        let waiter = {
            let b = b.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let t = b.lock(&name).await;
                let at = Instant::now();
                b.unlock(&name, t).await;
                at
            })
        };
        sleep(SETTLE).await;
        let t0 = Instant::now();
        a.unlock(&name, token).await;
        let at = waiter.await.expect("waiter");
        out.push(at.saturating_duration_since(t0).as_nanos() as u64);
    }
    a.quit().await;
    b.quit().await;
    out.drain(..5);
    out
}

async fn loss_valkeylock(url: &str, samples: usize, dedicated: bool) -> Vec<u64> {
    let urls = [url.to_owned()];
    let options = common::valkeylock_options(&urls, 1).with_dedicated_runtime(dedicated);
    let locker = Locker::connect(options).await.expect("connect");
    let admin = common::raw_client(url).await;
    let name = Kind::Valkeylock.name("loss");
    // key_majority 1: one key, `{prefix}:0:{name}` with the default prefix.
    let key = format!("valkeylock:0:{name}");
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples + 5 {
        let g = locker.lock(&name).await.expect("lock");
        let watcher = g.watcher();
        let task = tokio::spawn(async move {
            let reason = watcher.lost().await;
            (reason, Instant::now())
        });
        sleep(Duration::from_millis(5)).await;
        let t0 = Instant::now();
        let deleted: i64 = admin.del(key.as_str()).await.expect("DEL");
        assert_eq!(deleted, 1, "the key was not there");
        let (reason, at) = task.await.expect("lost task");
        assert_eq!(reason, LostReason::Deleted);
        out.push(at.saturating_duration_since(t0).as_nanos() as u64);
        drop(g);
    }
    locker.close().await;
    let _ = fred::prelude::ClientLike::quit(&admin).await;
    out.drain(..5);
    out
}

/// CPU-bound work on the application's runtime: four tasks (two per worker)
/// that each compute for 1 ms, yield, and start again, until stopped.
struct Busy {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Busy {
    const TASKS: usize = 4;
    const SLICE: Duration = Duration::from_millis(1);

    fn start() -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..Self::TASKS)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let until = std::time::Instant::now() + Self::SLICE;
                        while std::time::Instant::now() < until {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        Busy { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// One round trip from a process that has been idle for [`SETTLE`], as the
/// releasing side of the wake-up samples is: the machine's floor for "first
/// command after a pause" (threads parked, caches cold).
async fn ping_after_idle(url: &str, samples: usize) -> Vec<u64> {
    let client = common::raw_client(url).await;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples + 5 {
        sleep(SETTLE).await;
        let t0 = Instant::now();
        let _: String = fred::prelude::ClientLike::ping(&client, None)
            .await
            .expect("PING");
        out.push(t0.elapsed().as_nanos() as u64);
    }
    let _ = fred::prelude::ClientLike::quit(&client).await;
    out.drain(..5);
    out
}
