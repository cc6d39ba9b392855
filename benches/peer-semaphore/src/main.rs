//! valkeylock's semaphore against the semaphore of the `distributed-lock-redis`
//! crate (0.2.0, crates.io), on one `valkey-server` on loopback, in one run:
//! rounds interleaved between the two, so that the machine's drift hits them
//! alike.
//!
//! The peer keeps one sorted set per semaphore (permit tokens scored by
//! their expiry, `EVAL` of a script that trims expired members and adds
//! ours if there is room), on one instance; its waiters retry the script,
//! sleeping 10 ms doubling to 200 ms between tries. Ours: one lock per
//! permit slot, waiters woken by invalidations (see the README).
//!
//! - `uncontended`: one task, acquire + release of a semaphore of 4, µs per
//!   operation (median of interleaved rounds).
//! - `contended`: 2 clients × 4 tasks loop acquire, hold 1 ms, release, on a
//!   semaphore of 2: grants per second, wait p50/p99, fairness (max/min
//!   grants per task), most holders at once.
//! - `wakeup`: client A holds both permits of a semaphore of 2, client B
//!   waits in `acquire`; A releases one: from A's release call until B's
//!   acquire returns.
//!
//! Run from the repository's root:
//! `cargo run --release --manifest-path benches/peer-semaphore/Cargo.toml`
//! (`CI=1` for a short run).
#![allow(missing_docs)]

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distributed_lock_core::traits::{DistributedSemaphore, LockHandle, SemaphoreProvider};
use distributed_lock_redis::{RedisDistributedSemaphore, RedisLockProvider, RedisSemaphoreHandle};
use support::ValkeyServer;
use tokio::time::{sleep, Instant};
use valkeylock::{Locker, LockerOptions, PermitGuard, Semaphore};

const VALIDITY: Duration = Duration::from_secs(5);
const HOLD: Duration = Duration::from_millis(1);

/// One client of either implementation.
#[derive(Clone)]
enum Client {
    Ours(Locker),
    Peer(Arc<RedisLockProvider>),
}

/// A semaphore of either implementation.
#[derive(Clone)]
enum Sem {
    Ours(Semaphore),
    Peer(Arc<RedisDistributedSemaphore>),
}

enum Held {
    Ours(PermitGuard),
    Peer(RedisSemaphoreHandle),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Peer,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Ours => "valkeylock (a lock per slot, invalidations)",
            Kind::Peer => "distributed-lock-redis 0.2 (zset, polling)",
        }
    }

    async fn client(self, url: &str) -> Client {
        match self {
            Kind::Ours => Client::Ours(
                Locker::connect(
                    LockerOptions::new([url.to_owned()])
                        .with_key_majority(1)
                        .with_key_validity(VALIDITY),
                )
                .await
                .expect("valkeylock connect"),
            ),
            Kind::Peer => Client::Peer(Arc::new(
                RedisLockProvider::builder()
                    .url(url)
                    .expiry(VALIDITY)
                    .extension_cadence(VALIDITY / 3)
                    .build()
                    .await
                    .expect("peer connect"),
            )),
        }
    }
}

impl Client {
    fn semaphore(&self, name: &str, permits: u32) -> Sem {
        match self {
            Client::Ours(l) => Sem::Ours(l.semaphore(name, permits).expect("semaphore")),
            Client::Peer(p) => Sem::Peer(Arc::new(p.create_semaphore(name, permits))),
        }
    }

    async fn close(self) {
        if let Client::Ours(l) = self {
            l.close().await;
        }
    }
}

impl Sem {
    async fn acquire(&self) -> Held {
        match self {
            Sem::Ours(s) => Held::Ours(s.acquire().await.expect("valkeylock acquire")),
            Sem::Peer(s) => Held::Peer(s.acquire(None).await.expect("peer acquire")),
        }
    }
}

impl Held {
    async fn release(self) {
        match self {
            Held::Ours(p) => p.release().await.expect("valkeylock release"),
            // The peer's drop leaves the ticket to expire: release explicitly.
            Held::Peer(h) => h.release().await.expect("peer release"),
        }
    }
}

fn quick() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

fn quantile(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let quick = quick();
    println!(
        "# peer semaphore bench; mode: {}",
        if quick { "quick (CI)" } else { "full" }
    );
    let server = ValkeyServer::start();
    let url = server.url();
    let kinds = [Kind::Ours, Kind::Peer];

    // Uncontended.
    let (rounds, ops) = if quick { (2, 200) } else { (7, 2000) };
    let mut per_op = [Vec::new(), Vec::new()];
    for round in 0..=rounds {
        for (k, kind) in kinds.into_iter().enumerate() {
            let client = kind.client(&url).await;
            let sem = client.semaphore("peer-bench-uncontended", 4);
            let start = Instant::now();
            for _ in 0..ops {
                sem.acquire().await.release().await;
            }
            if round > 0 {
                per_op[k].push(start.elapsed().as_secs_f64() * 1e6 / ops as f64);
            }
            client.close().await;
        }
    }
    println!();
    println!("## Uncontended: one task, acquire + release, semaphore of 4 ({rounds} rounds of {ops} ops)");
    println!();
    println!("| implementation | µs/op (median of rounds) | × ours |");
    println!("|---|---:|---:|");
    let medians: Vec<f64> = per_op
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    for (k, kind) in kinds.into_iter().enumerate() {
        println!(
            "| {} | {:.1} | {:.2} |",
            kind.label(),
            medians[k],
            medians[k] / medians[0]
        );
    }

    // Contended.
    let secs = if quick { 1 } else { 3 };
    println!();
    println!("## Contended: 2 clients × 4 tasks, semaphore of 2, hold 1 ms, {secs} s each");
    println!();
    println!(
        "| implementation | grants/s | wait p50 µs | wait p99 µs | fairness (max/min per task) | most holders at once |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for kind in kinds {
        let clients = [kind.client(&url).await, kind.client(&url).await];
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..8 {
            let sem = clients[i % 2].semaphore("peer-bench-contended", 2);
            let (holding, most) = (holding.clone(), most.clone());
            set.spawn(async move {
                let mut waits = Vec::new();
                while Instant::now() < end {
                    let asked = Instant::now();
                    let held = sem.acquire().await;
                    waits.push(asked.elapsed().as_nanos() as u64);
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    sleep(HOLD).await;
                    holding.fetch_sub(1, Ordering::SeqCst);
                    held.release().await;
                }
                waits
            });
        }
        let mut counts = Vec::new();
        let mut waits = Vec::new();
        while let Some(r) = set.join_next().await {
            let w = r.expect("task");
            counts.push(w.len() as u64);
            waits.extend(w);
        }
        let elapsed = start.elapsed();
        let (max, min) = (
            counts.iter().max().copied().unwrap_or(0),
            counts.iter().min().copied().unwrap_or(0),
        );
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {} | {} |",
            kind.label(),
            counts.iter().sum::<u64>() as f64 / elapsed.as_secs_f64(),
            quantile(&mut waits, 0.5),
            quantile(&mut waits, 0.99),
            if min == 0 {
                "∞ (a task got 0)".to_owned()
            } else {
                format!("{:.2}", max as f64 / min as f64)
            },
            most.load(Ordering::SeqCst)
        );
        for c in clients {
            c.close().await;
        }
    }

    // Wake-up.
    let samples = if quick { 20 } else { 100 };
    let mut wakes = [Vec::new(), Vec::new()];
    let a = [Kind::Ours.client(&url).await, Kind::Peer.client(&url).await];
    let b = [Kind::Ours.client(&url).await, Kind::Peer.client(&url).await];
    for i in 0..samples + 3 {
        for (k, _) in kinds.into_iter().enumerate() {
            let (sem_a, sem_b) = (
                a[k].semaphore("peer-bench-wakeup", 2),
                b[k].semaphore("peer-bench-wakeup", 2),
            );
            let (p, q) = (sem_a.acquire().await, sem_a.acquire().await);
            let waiter = tokio::spawn(async move {
                let got = sem_b.acquire().await;
                let at = Instant::now();
                got.release().await;
                at
            });
            sleep(Duration::from_millis(20)).await;
            assert!(!waiter.is_finished(), "a third permit of two");
            let t0 = Instant::now();
            p.release().await;
            let at = waiter.await.expect("waiter");
            q.release().await;
            if i >= 3 {
                wakes[k].push(at.saturating_duration_since(t0).as_nanos() as u64);
            }
        }
    }
    println!();
    println!("## Wake-up: release in client A → acquire returns in client B ({samples} samples, interleaved)");
    println!();
    println!("| implementation | p50 µs | p90 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|");
    for (k, kind) in kinds.into_iter().enumerate() {
        let v = &mut wakes[k];
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            kind.label(),
            quantile(v, 0.5),
            quantile(v, 0.9),
            quantile(v, 0.99),
            quantile(v, 1.0)
        );
    }
    for c in a.into_iter().chain(b) {
        c.close().await;
    }
    drop(server);
}
