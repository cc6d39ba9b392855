//! Semaphores against a real `valkey-server` on loopback, next to our plain
//! lock and the raw command floor, in one run (not criterion: the figures
//! are rounds interleaved between the implementations, so that the
//! machine's drift hits them alike).
//!
//! - `uncontended`: one task, acquire + release in a loop. The floor (`SET
//!   NX PX` + compare-and-delete through one fred client), our lock
//!   (`lock` + `release`), and a permit of a semaphore of 4 (`acquire` +
//!   `release`), in alternating rounds; µs per operation (median of the
//!   rounds) and commands per operation (`INFO commandstats`).
//! - `contended`: 2 lockers × 4 tasks loop acquire, hold 1 ms, release: on
//!   a semaphore of 2, and on a lock. Grants per second, wait p50/p99,
//!   fairness (max/min grants per task), and the most holders seen at once.
//! - `wakeup`: locker A holds every permit of a semaphore of 2, locker B
//!   waits in `acquire()`; A releases one. From A's `release()` call until
//!   B's `acquire()` returns; the same for a lock.
//!
//! - `fairness`: 4 processes × 5 tasks on one name, a lock and a semaphore
//!   of 2: inversions of the arrival order, longest wait (see `fairness/`).
//!
//! Run: `cargo bench --bench semaphore` (`CI=1` for a short run; a
//! positional filter such as `wakeup` selects sections). The zset
//! semaphore of the `distributed-lock-redis` crate is measured against
//! ours by `benches/peer-semaphore` (its own crate: it pulls fred 9).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
#[path = "fairness/mod.rs"]
mod fairness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Args, Kind, Raw};
use support::ValkeyServer;
use tokio::time::{sleep, Instant};
use valkeylock::{Locker, Semaphore};

const HOLD: Duration = Duration::from_millis(1);

fn main() {
    if let Ok(spec) = std::env::var(fairness::CHILD_ENV) {
        fairness::child(&spec);
        return;
    }
    let args = Args::parse();
    if args.list {
        return;
    }
    let quick = args.quick();
    let rt = common::runtime();
    println!("# semaphore bench: {}", common::machine());
    println!("# mode: {}", if quick { "quick (CI)" } else { "full" });
    let server = ValkeyServer::start();
    let url = server.url();
    rt.block_on(async {
        if args.wants("uncontended") {
            let (rounds, ops) = if quick { (2, 200) } else { (7, 2000) };
            uncontended(&url, rounds, ops).await;
        }
        if args.wants("contended") {
            let secs = if quick { 1 } else { 3 };
            contended(&url, Duration::from_secs(secs)).await;
        }
        if args.wants("wakeup") {
            let samples = if quick { 30 } else { 200 };
            wakeup(&url, samples).await;
        }
    });
    if args.wants("fairness") {
        fairness::run(&server, if quick { 2.0 } else { 30.0 });
    }
    drop(server);
}

async fn connect(url: &str) -> Locker {
    Locker::connect(common::valkeylock_options(&[url.to_owned()], 1))
        .await
        .expect("connect")
}

/// A locker with fair queueing (issue #13).
async fn connect_fair(url: &str) -> Locker {
    Locker::connect(common::valkeylock_options(&[url.to_owned()], 1).with_fair_queueing(true))
        .await
        .expect("connect")
}

/// One operation of each contender of `uncontended`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Floor,
    Lock,
    FairLock,
    Permit,
}

impl Contender {
    const ALL: [Contender; 4] = [
        Contender::Floor,
        Contender::Lock,
        Contender::FairLock,
        Contender::Permit,
    ];

    fn label(self) -> &'static str {
        match self {
            Contender::Floor => "raw floor (SET NX PX + compare-and-delete)",
            Contender::Lock => "valkeylock lock",
            Contender::FairLock => "valkeylock lock, fair queueing",
            Contender::Permit => "valkeylock permit (semaphore of 4)",
        }
    }
}

async fn uncontended(url: &str, rounds: usize, ops: u64) {
    let admin = common::raw_client(url).await;
    let raw = Raw::connect(url).await;
    let locker = connect(url).await;
    let fair = connect_fair(url).await;
    let pool = locker
        .semaphore(&Kind::Valkeylock.name("sem-uncontended"), 4)
        .expect("semaphore");
    let lock_name = Kind::Valkeylock.name("lock-uncontended");
    let raw_name = Kind::Raw.name("uncontended");
    let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); Contender::ALL.len()];
    let mut commands = [0f64; Contender::ALL.len()];
    // A warm-up round of each, then `rounds` alternating rounds.
    for round in 0..=rounds {
        for (i, c) in Contender::ALL.into_iter().enumerate() {
            let before = common::total_calls(&common::command_calls(&admin).await);
            let start = Instant::now();
            for _ in 0..ops {
                match c {
                    Contender::Floor => {
                        let token = raw.lock(&raw_name).await;
                        raw.unlock(&raw_name, token).await;
                    }
                    Contender::Lock => {
                        let g = locker.lock(&lock_name).await.expect("lock");
                        g.release().await.expect("release");
                    }
                    Contender::FairLock => {
                        let g = fair.lock(&lock_name).await.expect("lock");
                        g.release().await.expect("release");
                    }
                    Contender::Permit => {
                        let p = pool.acquire().await.expect("permit");
                        p.release().await.expect("release");
                    }
                }
            }
            let elapsed = start.elapsed();
            let after = common::total_calls(&common::command_calls(&admin).await);
            if round > 0 {
                per_op[i].push(elapsed.as_secs_f64() * 1e6 / ops as f64);
                // Less the INFO call itself.
                commands[i] += after.saturating_sub(before + 1) as f64 / ops as f64;
            }
        }
    }
    println!();
    println!(
        "## Uncontended: one task, acquire + release ({rounds} rounds of {ops} ops, interleaved)"
    );
    println!();
    println!("| contender | µs/op (median of rounds) | × floor | × our lock | commands/op |");
    println!("|---|---:|---:|---:|---:|");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = per_op.iter_mut().map(median).collect();
    for (i, c) in Contender::ALL.into_iter().enumerate() {
        println!(
            "| {} | {:.1} | {:.2} | {:.2} | {:.2} |",
            c.label(),
            medians[i],
            medians[i] / medians[0],
            medians[i] / medians[1],
            commands[i] / rounds as f64
        );
    }
    raw.quit().await;
    locker.close().await;
    fair.close().await;
}

/// What `contended` measured for one contender.
struct Contention {
    grants: u64,
    elapsed: Duration,
    per_task: Vec<u64>,
    waits: Vec<u64>,
    most: usize,
}

/// 2 lockers × 4 tasks: acquire, hold `HOLD`, release, for `duration`.
/// `permits`: `Some(n)` for a semaphore of `n`, `None` for a lock.
async fn contend(url: &str, permits: Option<u32>, duration: Duration) -> Contention {
    let lockers = [connect(url).await, connect(url).await];
    let name = Kind::Valkeylock.name(&format!("contended-{permits:?}"));
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let locker = lockers[i % 2].clone();
        let pool: Option<Semaphore> =
            permits.map(|n| locker.semaphore(&name, n).expect("semaphore"));
        let (name, holding, most) = (name.clone(), holding.clone(), most.clone());
        set.spawn(async move {
            let mut waits = Vec::new();
            while Instant::now() < end {
                let asked = Instant::now();
                let held: Box<dyn std::any::Any + Send> = match &pool {
                    Some(pool) => Box::new(pool.acquire().await.expect("permit")),
                    None => Box::new(locker.lock(&name).await.expect("lock")),
                };
                waits.push(asked.elapsed().as_nanos() as u64);
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                sleep(HOLD).await;
                holding.fetch_sub(1, Ordering::SeqCst);
                drop(held);
            }
            (i, waits)
        });
    }
    let mut per_task = vec![0; 8];
    let mut waits = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, w) = r.expect("task");
        per_task[i] = w.len() as u64;
        waits.extend(w);
    }
    let elapsed = start.elapsed();
    for l in lockers {
        l.close().await;
    }
    Contention {
        grants: per_task.iter().sum(),
        elapsed,
        per_task,
        waits,
        most: most.load(Ordering::SeqCst),
    }
}

async fn contended(url: &str, duration: Duration) {
    println!();
    println!(
        "## Contended: 2 lockers × 4 tasks, hold {} ms, {} s each",
        HOLD.as_millis(),
        duration.as_secs()
    );
    println!();
    println!("| contender | grants/s | wait p50 µs | wait p99 µs | fairness (max/min per task) | most holders at once |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, permits) in [
        ("valkeylock semaphore of 2", Some(2)),
        ("valkeylock lock", None),
        ("valkeylock semaphore of 4", Some(4)),
    ] {
        let mut c = contend(url, permits, duration).await;
        let p50 = common::quantile(&mut c.waits, 0.5);
        let p99 = common::quantile(&mut c.waits, 0.99);
        println!(
            "| {label} | {:.0} | {:.1} | {:.1} | {} | {} |",
            c.grants as f64 / c.elapsed.as_secs_f64(),
            common::us(p50),
            common::us(p99),
            common::fmt_ratio(common::max_over_min(&c.per_task)),
            c.most
        );
    }
}

async fn wakeup(url: &str, samples: usize) {
    let (a, b) = (connect(url).await, connect(url).await);
    let name = Kind::Valkeylock.name("sem-wakeup");
    let (pool_a, pool_b) = (
        a.semaphore(&name, 2).expect("semaphore"),
        b.semaphore(&name, 2).expect("semaphore"),
    );
    let lock_name = Kind::Valkeylock.name("lock-wakeup");
    let (fair_a, fair_b) = (connect_fair(url).await, connect_fair(url).await);
    let fair_name = Kind::Valkeylock.name("fair-wakeup");
    let mut permit_wakes = Vec::new();
    let mut lock_wakes = Vec::new();
    let mut fair_wakes = Vec::new();
    for i in 0..samples + 5 {
        // A permit: A holds both, B waits, A releases one.
        let (p, q) = (
            pool_a.acquire().await.expect("A"),
            pool_a.acquire().await.expect("A"),
        );
        let waiter = tokio::spawn({
            let pool_b = pool_b.clone();
            async move {
                let got = pool_b.acquire().await.expect("B");
                let at = Instant::now();
                let _ = got.release().await;
                at
            }
        });
        sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "B got a third permit of two");
        let t0 = Instant::now();
        let _ = p.release().await;
        let at = waiter.await.expect("waiter");
        drop(q);
        if i >= 5 {
            permit_wakes.push(at.saturating_duration_since(t0).as_nanos() as u64);
        }
        // The same for a lock, without and with fair queueing.
        let lock_wake = common::lock_wakeup(&a, &b, &lock_name).await;
        let fair_wake = common::lock_wakeup(&fair_a, &fair_b, &fair_name).await;
        if i >= 5 {
            lock_wakes.push(lock_wake);
            fair_wakes.push(fair_wake);
        }
    }
    println!();
    println!("## Wake-up: release in locker A → acquisition returns in locker B ({samples} samples, interleaved)");
    println!();
    println!("| contender | p50 µs | p90 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|");
    for (label, mut v) in [
        ("valkeylock permit (semaphore of 2)", permit_wakes),
        ("valkeylock lock", lock_wakes),
        ("valkeylock lock, fair queueing", fair_wakes),
    ] {
        let q = |v: &mut Vec<u64>, p| common::us(common::quantile(v, p));
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} |",
            q(&mut v, 0.5),
            q(&mut v, 0.9),
            q(&mut v, 0.99),
            q(&mut v, 1.0)
        );
    }
    a.close().await;
    b.close().await;
    fair_a.close().await;
    fair_b.close().await;
}
