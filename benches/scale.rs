//! Holding many locks at once in one process: 1,000 and 10,000 distinct names
//! (1,000 only with `CI` set) through one `Locker` (`key_majority` 1, one
//! server, `key_validity` 5 s so each lock is extended every 2.5 s).
//!
//! Printed per row: time to acquire them all (all `lock()` calls started at
//! once), process RSS growth per held lock (`VmRSS` of `/proc/self/status`),
//! live heap growth per held lock (a counting global allocator) just after
//! acquiring and again at the end of the steady window (by then every lock
//! has been held for over one extension period and has given back the room
//! its tables took while it was being acquired; with 1,000 holders or more,
//! more than `LockCore`'s crowd of 256, it did so once granted and quiet), server
//! memory per lock (`used_memory`), then over a steady window of whole
//! extension periods: `EVALSHA` calls per second at the server (`INFO
//! commandstats` deltas: the extensions), all commands per second, this
//! process's CPU time (`utime + stime` of `/proc/self/stat`) and the server's
//! (`INFO cpu`), and the time to release them all (and how many of those
//! releases could not confirm their delete within the command time limit).
//!
//! Then the mass-loss section (`-- massloss` runs it alone): the largest
//! count of locks held through one `Locker`, all lost at once when their
//! server is frozen, with when each holder was told (see [`mass_loss`]);
//! and the reconnect section (`-- reconnect` alone): the same count held,
//! their connection cut, how many were lost although their keys stayed
//! (see [`reconnects`]); cut at set times after the last lock was taken,
//! and, with 1 s validity, at times after the locker connected that fall
//! while its first round of extensions is out.
//!
//! Then the reference rows (an idle ractor actor, a pending timer) and what
//! a `Locker` costs before it holds anything (`-- lockers` alone; see
//! [`locker_cost`]).
//!
//! Run: `cargo bench --bench scale` (`CI=1` for 1,000 locks). A fresh
//! server per row, so the counters are ours alone.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::Duration;

use common::{Args, Kind, Nop};
use fred::prelude::*;
use support::ValkeyServer;
use tokio::time::{sleep, Instant};
use valkeylock::{LockGuard, Locker};

#[global_allocator]
static ALLOC: valkeylock_bench_alloc::Counting = valkeylock_bench_alloc::Counting;

/// Extension period of a 5 s validity (the default `key_validity / 2`).
const EXTEND: Duration = Duration::from_millis(2500);

fn main() {
    let args = Args::parse();
    // `-- massloss` runs that section alone; `-- scale` or no filter, all.
    let (scale, massloss, reconnect, lockers) = (
        args.wants("scale"),
        args.wants("scale-massloss"),
        args.wants("scale-reconnect"),
        args.wants("scale-lockers"),
    );
    if args.list || !(massloss || reconnect || lockers) {
        return;
    }
    let quick = args.quick();
    let counts: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
    // Whole extension periods, so every lock is extended the same number of
    // times inside the window whatever its phase; two, so that every lock
    // has been held for more than one period by its end.
    let periods = 2;
    let window = EXTEND * periods;
    let rt = common::runtime();
    let tck = common::clk_tck();
    println!("# scale bench: {}", common::machine());
    println!(
        "# mode: {}; steady window {window:?} ({periods} extension period(s) of {EXTEND:?})",
        if quick { "quick (CI)" } else { "full" }
    );
    if !scale {
        if massloss {
            mass_loss(&rt, counts[counts.len() - 1]);
        }
        if reconnect {
            reconnects(&rt, counts[counts.len() - 1], quick);
        }
        if lockers {
            locker_cost(&rt, LOCKERS);
        }
        return;
    }
    println!();
    println!("| locks held | acquire all (ms) | RSS growth (KiB) | RSS per lock (bytes) | live heap per lock (bytes) | live heap per lock after the window (bytes) | tokio tasks per lock | server used_memory per lock (bytes) | EVALSHA calls/s | lock extensions due/s (locks / 2.5 s) | all commands/s | process CPU (ms per s) | server CPU (ms per s) | still held after window | release all (ms) | releases unconfirmed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut breakdowns = Vec::new();
    // The largest row's live allocations by size: just after acquiring,
    // and after the window.
    let mut by_size = None;
    for &n in counts {
        let server = ValkeyServer::start();
        let urls = vec![server.url()];
        rt.block_on(async {
            let admin = server.admin().await;
            let locker = Locker::connect(common::valkeylock_options(&urls, 1))
                .await
                .expect("connect");
            // Warm the engine up (one lock through every path) and settle.
            let g = locker.lock("warmup").await.expect("warm-up lock");
            let _ = g.release().await;
            sleep(Duration::from_millis(300)).await;
            let mem0 = used_memory(&admin).await;
            let rss0 = common::rss_kib();
            // Room for the snapshots by size, made before the first count
            // so that none of them is counted.
            let slots = valkeylock_bench_alloc::SIZE_SLOTS + 1;
            let (mut sizes0, mut sizes1, mut sizes2) =
                (vec![0; slots], vec![0; slots], vec![0; slots]);
            valkeylock_bench_alloc::live_by_size_into(&mut sizes0);
            let heap0 = valkeylock_bench_alloc::snapshot();
            let metrics = tokio::runtime::Handle::current().metrics();
            let tasks0 = metrics.num_alive_tasks();

            let t = Instant::now();
            let guards = hold_all(&locker, "scale", n).await;
            let acquire = t.elapsed();
            sleep(Duration::from_millis(300)).await;
            let rss1 = common::rss_kib();
            let heap1 = valkeylock_bench_alloc::snapshot();
            valkeylock_bench_alloc::live_by_size_into(&mut sizes1);
            let tasks1 = metrics.num_alive_tasks();
            let mem1 = used_memory(&admin).await;

            let c0 = common::command_calls(&admin).await;
            let cpu0 = common::cpu_ticks();
            let scpu0 = server_cpu(&admin).await;
            let t0 = Instant::now();
            sleep(window).await;
            let heap2 = valkeylock_bench_alloc::snapshot();
            valkeylock_bench_alloc::live_by_size_into(&mut sizes2);
            by_size = Some((n, diff(&sizes1, &sizes0), diff(&sizes2, &sizes0)));
            let c1 = common::command_calls(&admin).await;
            let cpu1 = common::cpu_ticks();
            let scpu1 = server_cpu(&admin).await;
            let secs = t0.elapsed().as_secs_f64();
            let delta = |k: &str| c1.get(k).copied().unwrap_or(0) - c0.get(k).copied().unwrap_or(0);
            let evalsha = delta("evalsha") as f64 / secs;
            let all: u64 = c1
                .keys()
                .filter(|k| k.as_str() != "info")
                .map(|k| delta(k))
                .sum();
            let cpu_ms_per_s = (cpu1 - cpu0) as f64 * 1000.0 / tck as f64 / secs;
            let server_ms_per_s = (scpu1 - scpu0) * 1000.0 / secs;
            let held = guards.iter().filter(|g| g.is_held()).count();
            let per_cmd: Vec<String> = c1
                .keys()
                .filter(|k| k.as_str() != "info" && delta(k) > 0)
                .map(|k| format!("{k} {:.0}/s", delta(k) as f64 / secs))
                .collect();
            breakdowns.push((n, per_cmd.join(", ")));

            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for g in guards {
                set.spawn(g.release());
            }
            // All released at once, their deletes queue at the server: the
            // last answers may come after the command time limit
            // (`try_next_after`), and the release says the delete was not
            // confirmed (the key is left to expire). Counted, not fatal.
            let mut unconfirmed = 0;
            while let Some(r) = set.join_next().await {
                match r.expect("release task") {
                    Ok(_) => {}
                    Err(valkeylock::Error::ReleaseUnconfirmed { .. }) => unconfirmed += 1,
                    Err(e) => panic!("release: {e:?}"),
                }
            }
            let release = t.elapsed();
            locker.close().await;
            let _ = admin.quit().await;

            println!(
                "| {n} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {held} | {:.0} | {unconfirmed} |",
                acquire.as_secs_f64() * 1000.0,
                rss1 as i64 - rss0 as i64,
                (rss1 as f64 - rss0 as f64) * 1024.0 / n as f64,
                heap1.live_delta(&heap0) as f64 / n as f64,
                heap2.live_delta(&heap0) as f64 / n as f64,
                (tasks1 as f64 - tasks0 as f64) / n as f64,
                (mem1 as f64 - mem0 as f64) / n as f64,
                evalsha,
                n as f64 / EXTEND.as_secs_f64(),
                all as f64 / secs,
                cpu_ms_per_s,
                server_ms_per_s,
                release.as_secs_f64() * 1000.0,
            );
        });
        drop(server);
    }
    mass_loss(&rt, counts[counts.len() - 1]);
    reconnects(&rt, counts[counts.len() - 1], quick);
    let actor = reference(&rt, counts[counts.len() - 1]);
    locker_cost(&rt, LOCKERS);
    if let Some((n, acquired, settled)) = by_size {
        heap_by_size(n, &acquired, &settled, &actor);
    }
    println!();
    println!("Commands per second at the server during the steady window, by command (`INFO commandstats`; commands run inside scripts count too):");
    println!();
    for (n, b) in breakdowns {
        println!("- {n} locks: {b}");
    }
}

/// Validity of the mass-loss section's locks: short, so the loss comes soon.
const LOSS_VALIDITY: Duration = Duration::from_secs(1);

/// `massloss` section (issue #11): `n` held locks all lost at once. Every
/// lock is held through one `Locker` on one fresh server, which is then
/// frozen (SIGSTOP): no extension is answered from then on, and every holder
/// must be told before its `valid_until()`, which is before the end of its
/// validity, the earliest moment another client could take its keys. Each
/// holder's `lost()` is awaited on its own task of the bench's runtime, and
/// the instant it resolved is compared with the `valid_until()` the guard
/// published after the freeze (negative: told before it). The end of
/// validity is `valid_until()` plus the margin the engine keeps between
/// them, computed here from its documented rule (README, "How it works"): 1 %
/// of the validity, 1–20 ms. (The engine acts earlier still, by 20 µs per
/// holder of the locker, at most a fifth of the validity, so that telling
/// them all is done by then.)
fn mass_loss(rt: &tokio::runtime::Runtime, n: usize) {
    let server = ValkeyServer::start();
    let urls = vec![server.url()];
    let margin = (LOSS_VALIDITY / 100).clamp(Duration::from_millis(1), Duration::from_millis(20));
    let (not_losses, told_ms) = rt.block_on(async {
        let locker =
            Locker::connect(common::valkeylock_options(&urls, 1).with_key_validity(LOSS_VALIDITY))
                .await
                .expect("connect");
        let guards = hold_all(&locker, "massloss", n).await;
        // Let the extension grid run once, then freeze the server. Replies
        // already on their way are read within the next few milliseconds;
        // after that no guard's `valid_until()` moves again.
        sleep(Duration::from_millis(600)).await;
        server.pause();
        sleep(Duration::from_millis(50)).await;
        let mut waits = tokio::task::JoinSet::new();
        for g in guards {
            let until = g.valid_until().expect("held when the server froze");
            waits.spawn(async move {
                let reason = g.lost().await;
                let told = Instant::now();
                (reason, signed_ms(told, until))
            });
        }
        let mut told_ms = Vec::with_capacity(n);
        let mut not_losses = 0;
        while let Some(r) = waits.join_next().await {
            let (reason, ms) = r.expect("lost() task");
            if !reason.is_loss() {
                not_losses += 1;
            }
            told_ms.push(ms);
        }
        server.resume();
        locker.close().await;
        (not_losses, told_ms)
    });
    drop(server);
    let mut told_ms = told_ms;
    told_ms.sort_by(f64::total_cmp);
    let q = |p: f64| told_ms[((told_ms.len() - 1) as f64 * p).round() as usize];
    let margin_ms = margin.as_secs_f64() * 1e3;
    let after_until = told_ms.iter().filter(|&&t| t > 0.0).count();
    let after_end = told_ms.iter().filter(|&&t| t > margin_ms).count();
    println!();
    println!("## Mass loss ({n} held locks, `key_validity` {LOSS_VALIDITY:?}, their server frozen by SIGSTOP; told = `lost()` resolved, on the bench's runtime)");
    println!();
    println!("| locks held | told, not a loss | told − valid_until() min ms | p50 ms | p99 ms | max ms | told after valid_until() | valid_until() to the end of validity ms | told − end of validity max ms | told after the end of validity |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {not_losses} | {:+.2} | {:+.2} | {:+.2} | {:+.2} | {after_until} | {margin_ms:.1} | {:+.2} | {after_end} |",
        q(0.0),
        q(0.5),
        q(0.99),
        q(1.0),
        q(1.0) - margin_ms,
    );
}

/// `reconnect` section: `n` locks held through one `Locker` on a fresh
/// server, then the locker's connection is cut (`CLIENT KILL`) and the
/// engine connects again (in about 100 ms here). The keys stay on the
/// server with their TTLs, so a lock lost then is lost while its keys were
/// still its own: the count should be 0. The locks extend on one grid, so
/// the cut lands at another point of the extension period in each row
/// (`cut after`: from when the last `lock()` returned). Lost = not held
/// three validities after the cut.
fn reconnects(rt: &tokio::runtime::Runtime, n: usize, quick: bool) {
    let validities: &[u64] = if quick { &[1000] } else { &[1000, 2000] };
    let cuts: &[u64] = if quick {
        &[500]
    } else {
        &[300, 400, 500, 600, 700, 800]
    };
    // Cuts counted from the moment the locker connected: its extension grid
    // starts then, so these fall while its first round is out.
    let at_round: &[u64] = if quick {
        &[]
    } else {
        &[480, 500, 520, 540, 560]
    };
    let rows = validities
        .iter()
        .flat_map(|&v| cuts.iter().map(move |&c| (v, Cut::Acquired(c))))
        .chain(at_round.iter().map(|&c| (1000, Cut::Connected(c))));
    println!();
    println!("## Reconnect with {n} held locks (their connection cut by `CLIENT KILL`, the keys left on the server; lost = not held 3 validities later)");
    println!();
    println!("| key_validity ms | cut after ms | counted from | locks held | lost | reasons |");
    println!("|---:|---:|---|---:|---:|---|");
    for (validity, cut) in rows {
        let server = ValkeyServer::start();
        let urls = vec![server.url()];
        let (held, reasons) = rt.block_on(async {
            let opts = common::valkeylock_options(&urls, 1)
                .with_key_validity(Duration::from_millis(validity));
            let locker = Locker::connect(opts).await.expect("connect");
            let connected = tokio::time::Instant::now();
            let admin = server.admin().await;
            let guards = hold_all(&locker, "reconnect", n).await;
            match cut {
                Cut::Acquired(ms) => sleep(Duration::from_millis(ms)).await,
                Cut::Connected(ms) => {
                    tokio::time::sleep_until(connected + Duration::from_millis(ms)).await
                }
            }
            let _: Value = admin
                .custom(
                    fred::cmd!("CLIENT"),
                    vec!["KILL", "TYPE", "normal", "SKIPME", "yes"],
                )
                .await
                .expect("CLIENT KILL");
            sleep(Duration::from_millis(3 * validity)).await;
            let mut reasons = std::collections::BTreeMap::new();
            for reason in guards.iter().filter_map(|g| g.lost_reason()) {
                *reasons.entry(reason.to_string()).or_insert(0usize) += 1;
            }
            let held = guards.len();
            drop(guards);
            locker.close().await;
            (held, reasons)
        });
        drop(server);
        let lost: usize = reasons.values().sum();
        let why: Vec<String> = reasons.iter().map(|(r, c)| format!("{r}: {c}")).collect();
        let (ms, from) = match cut {
            Cut::Acquired(ms) => (ms, "all acquired"),
            Cut::Connected(ms) => (ms, "connected"),
        };
        println!(
            "| {validity} | {ms} | {from} | {held} | {lost} | {} |",
            if why.is_empty() {
                "—".to_owned()
            } else {
                why.join("; ")
            }
        );
    }
}

/// When the reconnect section cuts the connection: that many ms after the
/// last `lock()` returned, or after the locker connected.
#[derive(Clone, Copy)]
enum Cut {
    Acquired(u64),
    Connected(u64),
}

/// Takes `n` locks named `{what}-{i}` through `locker`, every `lock()` call
/// started at once, and returns their guards.
async fn hold_all(locker: &Locker, what: &str, n: usize) -> Vec<LockGuard> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let locker = locker.clone();
        let name = Kind::Valkeylock.name(&format!("{what}-{i}"));
        set.spawn(async move { locker.lock(&name).await.expect("lock") });
    }
    let mut guards: Vec<LockGuard> = Vec::with_capacity(n);
    while let Some(g) = set.join_next().await {
        guards.push(g.expect("lock task"));
    }
    guards
}

/// `a - b` in milliseconds, negative when `a` is earlier.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64() * 1e3
    } else {
        -((b - a).as_secs_f64() * 1e3)
    }
}

async fn info_field(admin: &Client, kind: fred::types::InfoKind, field: &str) -> Option<String> {
    let info: String = admin.info(Some(kind)).await.ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_owned())
}

async fn used_memory(admin: &Client) -> u64 {
    info_field(admin, fred::types::InfoKind::Memory, "used_memory")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Seconds of CPU the server has used (user + system, all threads).
async fn server_cpu(admin: &Client) -> f64 {
    let get = |f: &'static str| async move {
        info_field(admin, fred::types::InfoKind::Cpu, f)
            .await
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    get("used_cpu_sys").await + get("used_cpu_user").await
}

/// What the building blocks of a held lock cost on their own, for comparison:
/// `n` idle empty ractor actors, and `n` pending ractor `send_after` timers.
///
/// Returns the actors' live allocations by size (the change, for all `n`).
fn reference(rt: &tokio::runtime::Runtime, n: usize) -> Vec<i64> {
    println!();
    println!("Reference, same process, {n} of each at once:");
    println!();
    println!("| what | live heap per item (bytes) | tokio tasks per item |");
    println!("|---|---:|---:|");
    rt.block_on(async {
        let metrics = tokio::runtime::Handle::current().metrics();
        sleep(Duration::from_millis(100)).await;
        let slots = valkeylock_bench_alloc::SIZE_SLOTS + 1;
        let (mut sizes0, mut sizes1) = (vec![0; slots], vec![0; slots]);
        valkeylock_bench_alloc::live_by_size_into(&mut sizes0);
        let (h0, t0) = (
            valkeylock_bench_alloc::snapshot(),
            metrics.num_alive_tasks(),
        );
        let mut actors = Vec::with_capacity(n);
        for _ in 0..n {
            actors.push(ractor::Actor::spawn(None, Nop, ()).await.expect("spawn"));
        }
        sleep(Duration::from_millis(100)).await;
        let (h1, t1) = (
            valkeylock_bench_alloc::snapshot(),
            metrics.num_alive_tasks(),
        );
        valkeylock_bench_alloc::live_by_size_into(&mut sizes1);
        let actor = diff(&sizes1, &sizes0);
        println!(
            "| idle empty ractor actor | {:.0} | {:.1} |",
            h1.live_delta(&h0) as f64 / n as f64,
            (t1 as f64 - t0 as f64) / n as f64
        );
        let timer_owner = &actors[0].0;
        let (h0, t0) = (
            valkeylock_bench_alloc::snapshot(),
            metrics.num_alive_tasks(),
        );
        let timers: Vec<_> = (0..n)
            .map(|_| timer_owner.send_after(Duration::from_secs(60), || ()))
            .collect();
        sleep(Duration::from_millis(100)).await;
        let (h1, t1) = (
            valkeylock_bench_alloc::snapshot(),
            metrics.num_alive_tasks(),
        );
        println!(
            "| pending ractor `send_after` timer | {:.0} | {:.1} |",
            h1.live_delta(&h0) as f64 / n as f64,
            (t1 as f64 - t0 as f64) / n as f64
        );
        for t in timers {
            t.abort();
        }
        for (a, h) in actors {
            a.stop(None);
            let _ = h.await;
        }
        actor
    })
}

/// How many lockers the locker section connects at once.
const LOCKERS: usize = 10;

/// What a `Locker` costs before it holds anything, per locker, `n` of them
/// connected to one fresh server: connected (the engine's thread, actors
/// and connection), then after a first lock + release, which opens its
/// direct connection (README, "Direct connections"). Live heap (the
/// counting allocator), RSS growth, and the time each step took per
/// locker, the lockers one after the other. With the library's defaults,
/// then with the `event_buffer` the command-line tool keeps (64).
fn locker_cost(rt: &tokio::runtime::Runtime, n: usize) {
    println!();
    println!(
        "## A `Locker` before it holds anything ({n} connected to one server, one after the other)"
    );
    println!();
    println!("| step | live heap per locker (bytes) | RSS growth per locker (KiB) | time per locker (ms) |");
    println!("|---|---:|---:|---:|");
    let server = ValkeyServer::start();
    let urls = vec![server.url()];
    // The library's default, then what the command-line tool keeps.
    let defaults = common::valkeylock_options(&urls, 1);
    let few = defaults.clone().with_event_buffer(64);
    for (options, label) in [(defaults, ""), (few, " with `event_buffer` 64")] {
        rt.block_on(async {
            sleep(Duration::from_millis(100)).await;
            let (h0, r0) = (valkeylock_bench_alloc::snapshot(), common::rss_kib());
            let t = Instant::now();
            let mut all = Vec::with_capacity(n);
            for _ in 0..n {
                let locker = Locker::connect(options.clone())
                    .await
                    .expect("connect");
                all.push(locker);
            }
            let connect = t.elapsed();
            sleep(Duration::from_millis(300)).await;
            let (h1, r1) = (valkeylock_bench_alloc::snapshot(), common::rss_kib());
            let t = Instant::now();
            for (i, locker) in all.iter().enumerate() {
                let g = locker.lock(&format!("locker-{i}")).await.expect("lock");
                g.release().await.expect("release");
            }
            let first = t.elapsed();
            sleep(Duration::from_millis(300)).await;
            let (h2, r2) = (valkeylock_bench_alloc::snapshot(), common::rss_kib());
            let per = |d: i64| d as f64 / n as f64;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
            println!(
                "| `Locker::connect`{label} | {:.0} | {:.0} | {:.2} |",
                per(h1.live_delta(&h0)),
                per(r1 as i64 - r0 as i64),
                ms(connect)
            );
            println!(
                "| then the first lock + release (opens the direct connection) | {:.0} | {:.0} | {:.2} |",
                per(h2.live_delta(&h1)),
                per(r2 as i64 - r1 as i64),
                ms(first)
            );
            for locker in all {
                locker.close().await;
            }
        });
    }
    drop(server);
}

/// `a - b`, size by size.
fn diff(a: &[i64], b: &[i64]) -> Vec<i64> {
    a.iter().zip(b).map(|(a, b)| a - b).collect()
}

/// What a held lock's live heap is made of: the allocations of each size
/// that `n` held locks keep (just after acquiring and after the window),
/// per lock, beside those of an idle empty ractor actor. Sizes kept by
/// fewer than half the locks (shared tables growing by steps, the bench's
/// own vector of guards) are left out; so are allocations of
/// `SIZE_SLOTS` bytes or more, whose sizes are not told apart.
fn heap_by_size(n: usize, acquired: &[i64], settled: &[i64], actor: &[i64]) {
    let per = |v: i64| v as f64 / n as f64;
    let last = valkeylock_bench_alloc::SIZE_SLOTS;
    println!();
    println!(
        "## Live heap by allocation size, per item ({n} held locks; {n} idle empty ractor actors)"
    );
    println!();
    println!("| allocation (bytes) | per held lock, just after acquiring | after the window | per idle empty ractor actor |");
    println!("|---:|---:|---:|---:|");
    let mut sums = [0.0f64; 3];
    for size in 1..last {
        let counts = [per(acquired[size]), per(settled[size]), per(actor[size])];
        if counts.iter().all(|c| c.abs() < 0.5) {
            continue;
        }
        for (sum, c) in sums.iter_mut().zip(counts) {
            *sum += c * size as f64;
        }
        println!(
            "| {size} | {:.2} | {:.2} | {:.2} |",
            counts[0], counts[1], counts[2]
        );
    }
    println!(
        "| bytes in the sizes above | {:.0} | {:.0} | {:.0} |",
        sums[0], sums[1], sums[2]
    );
}
