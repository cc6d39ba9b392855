//! Throughput and latency of lock + unlock against real `valkey-server`
//! processes on loopback, for valkeylock and its peers in one run:
//!
//! - `valkeylock`: this crate (`Locker::lock` then `LockGuard::release`);
//! - `rslock`: the `rslock` crate (Redlock over redis-rs), `acquire` retried
//!   without sleeping (`set_retry(1, _)`), then `release`;
//! - `raw`: the floor, the same commands with no lock logic: `SET key token NX
//!   PX 5000` spun until it succeeds, then compare-and-delete by `EVALSHA`,
//!   through one fred client;
//! - `valkeylock-drop` and `raw-nowait` (one task, `lock_unlock` only): the
//!   release not waited for. valkeylock's guard is dropped (as the Go
//!   valkeylock's `cancel()`, which does not wait for its delete; a `lock()`
//!   right after goes behind the delete, README "A release nobody waits
//!   for"); the floor's compare-and-delete is handed to its connection and
//!   its reply left to a task, so the next `SET` follows it on the wire.
//!
//! Criterion groups (one iteration = one lock + unlock by whichever task; the
//! time of a sample is the wall time of all tasks divided by the total ops):
//! - `lock_unlock/{impl}/{T}`: T = 1, 2, 10 tasks on ONE name through ONE
//!   instance (`key_majority` 1, one server);
//! - `cross_locker/{impl}/{N}`: N = 2, 4 instances (own connections), one task
//!   each, on one name;
//! - `uncontended/{impl}/{T}`: T = 1, 10 tasks each on its own name;
//! - `three_nodes/{impl}/1`: three servers, `key_majority` 2 (rslock: quorum
//!   2 of 3), one task.
//!
//! Then, printed: the same scenarios over a fixed duration (3 s, 1 s with `CI`
//! set) with ops/s, wait-for-lock percentiles and fairness (max/min ops per
//! task), and allocations per op at T = 1.
//!
//! Run: `cargo bench --bench locks` (`CI=1` for a short run; a positional
//! filter such as `lock_unlock` selects groups and sections).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{Args, Imp, Kind, Nop, Workload};
use criterion::{BenchmarkId, Criterion, Throughput};
use support::ValkeyServer;
use tokio::runtime::Runtime;

#[global_allocator]
static ALLOC: valkeylock_bench_alloc::Counting = valkeylock_bench_alloc::Counting;

/// Criterion ids that ran in this process, in order.
static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note_ran(id: &str) {
    let mut ran = RAN.lock().unwrap_or_else(|e| e.into_inner());
    if !ran.iter().any(|r| r == id) {
        ran.push(id.to_owned());
    }
}

/// The instances of one implementation: `[0]` serves the single-instance
/// scenarios, `[0..N]` the cross-locker ones.
struct Peers {
    kind: Kind,
    instances: Vec<Imp>,
}

/// Set in the environment of the child processes of the `processes` section.
const CHILD_ENV: &str = "VALKEYLOCK_BENCH_CHILD";

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let args = Args::parse();
    let quick = args.quick();
    let rt = common::runtime();
    let (warm, measure, samples, fixed) = if quick {
        (
            Duration::from_millis(300),
            Duration::from_secs(1),
            10,
            Duration::from_secs(1),
        )
    } else {
        (
            Duration::from_secs(1),
            Duration::from_secs(4),
            30,
            Duration::from_secs(3),
        )
    };
    let mut c = Criterion::default()
        .warm_up_time(warm)
        .measurement_time(measure)
        .sample_size(samples)
        .configure_from_args();

    println!("# locks bench: {}", common::machine());
    println!(
        "# mode: {} (criterion warm-up {warm:?}, measurement {measure:?}, {samples} samples; fixed runs {fixed:?})",
        if quick { "quick (CI)" } else { "full" }
    );

    let server = ValkeyServer::start();
    let urls = vec![server.url()];
    let admin = rt.block_on(server.admin());
    let tck = common::clk_tck();
    let peers: Vec<Peers> = Kind::ALL
        .iter()
        .map(|&kind| Peers {
            kind,
            instances: (0..4).map(|_| rt.block_on(kind.connect(&urls))).collect(),
        })
        .collect();

    // 1. lock_unlock: T tasks, one name, one instance.
    {
        let mut g = c.benchmark_group("lock_unlock");
        g.throughput(Throughput::Elements(1));
        for p in &peers {
            for t in [1usize, 2, 10] {
                let w = Workload::new(vec![p.instances[0].clone()], t, "lock_unlock", p.kind, true);
                bench(&mut g, "lock_unlock", &rt, p.kind, t, &w);
            }
        }
        // One task, the release not waited for: valkeylock's guard dropped
        // (as the Go valkeylock's `cancel()`), and the floor's delete sent
        // with the next `SET` right behind it.
        for kind in NOWAIT {
            let imp = rt.block_on(kind.connect(&urls));
            let w = Workload::new(vec![imp.clone()], 1, "lock_unlock", kind, true);
            bench(&mut g, "lock_unlock", &rt, kind, 1, &w);
            rt.block_on(imp.close());
        }
        g.finish();
    }

    // 2. cross_locker: N instances, one task each, one name.
    {
        let mut g = c.benchmark_group("cross_locker");
        g.throughput(Throughput::Elements(1));
        for p in &peers {
            for n in [2usize, 4] {
                let w = Workload::new(p.instances[..n].to_vec(), n, "cross_locker", p.kind, true);
                bench(&mut g, "cross_locker", &rt, p.kind, n, &w);
            }
        }
        g.finish();
    }

    // 3. uncontended: T tasks, each its own name, one instance.
    {
        let mut g = c.benchmark_group("uncontended");
        g.throughput(Throughput::Elements(1));
        for p in &peers {
            for t in [1usize, 10] {
                let w = Workload::new(
                    vec![p.instances[0].clone()],
                    t,
                    "uncontended",
                    p.kind,
                    false,
                );
                bench(&mut g, "uncontended", &rt, p.kind, t, &w);
            }
        }
        g.finish();
    }

    // 7. three_nodes: three servers, majority 2, one task, uncontended.
    if args.wants("three_nodes") {
        let servers: Vec<ValkeyServer> = (0..3).map(|_| ValkeyServer::start()).collect();
        let urls3: Vec<String> = servers.iter().map(|s| s.url()).collect();
        let mut g = c.benchmark_group("three_nodes");
        g.throughput(Throughput::Elements(1));
        for kind in [Kind::Valkeylock, Kind::Rslock] {
            let imp = rt.block_on(kind.connect(&urls3));
            let w = Workload::new(vec![imp.clone()], 1, "three_nodes", kind, true);
            bench(&mut g, "three_nodes", &rt, kind, 1, &w);
            rt.block_on(imp.close());
        }
        g.finish();
        drop(servers);
    }

    c.final_summary();
    if !args.test {
        print_criterion_table();
    }

    // Fixed-duration runs: ops/s, wait percentiles, fairness.
    if args.wants("lock_unlock") || args.wants("cross_locker") || args.wants("uncontended") {
        println!();
        println!("## Fixed-duration runs ({fixed:?} each)");
        println!();
        println!("| scenario | impl | tasks | ops | ops/s | wait p50 µs | wait p99 µs | wait p99.9 µs | wait max µs | fairness max/min | server cmds/op | server CPU µs/op | client CPU µs/op | ops per task |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for (scenario, params, shared) in [
            ("lock_unlock", &[1usize, 2, 10][..], true),
            ("cross_locker", &[2, 4][..], true),
            ("uncontended", &[1, 10][..], false),
        ] {
            if !args.wants(scenario) {
                continue;
            }
            for p in &peers {
                for &t in params {
                    let clients = if scenario == "cross_locker" {
                        p.instances[..t].to_vec()
                    } else {
                        vec![p.instances[0].clone()]
                    };
                    let w = Workload::new(clients, t, scenario, p.kind, shared);
                    fixed_row(&rt, &admin, scenario, p.kind, t, &w, fixed, tck);
                }
            }
            if scenario == "cross_locker" {
                let kind = Kind::ValkeylockHandover;
                for &t in params {
                    let clients: Vec<_> =
                        (0..t).map(|_| rt.block_on(kind.connect(&urls))).collect();
                    let w = Workload::new(clients.clone(), t, scenario, kind, shared);
                    fixed_row(&rt, &admin, scenario, kind, t, &w, fixed, tck);
                    for imp in clients {
                        rt.block_on(imp.close());
                    }
                }
            }
            if scenario == "lock_unlock" {
                for kind in NOWAIT {
                    let imp = rt.block_on(kind.connect(&urls));
                    let w = Workload::new(vec![imp.clone()], 1, scenario, kind, true);
                    fixed_row(&rt, &admin, scenario, kind, 1, &w, fixed, tck);
                    rt.block_on(imp.close());
                }
            }
        }
    }

    // 2, separate processes: one locker (or client) per process, one name.
    if args.wants("processes") || args.wants("cross_locker") {
        processes(&urls, &admin, fixed);
    }

    // The local hand-over bound: throughput and fairness, within one locker
    // and between two.
    if args.wants("handover") || args.wants("lock_unlock") {
        handover_bound(&rt, &urls, &admin, fixed, tck);
    }

    // Allocations per lock + unlock, T = 1, one name.
    if args.wants("allocations") || args.wants("lock_unlock") {
        let n: u64 = if quick { 2_000 } else { 20_000 };
        println!();
        println!("## Allocations per lock + unlock (T = 1, one name, {n} ops after 500 warm-up ops; whole process, all threads)");
        println!();
        println!("| impl | allocs/op | reallocs/op | bytes allocated/op | µs/op in this loop |");
        println!("|---|---:|---:|---:|---:|");
        for p in &peers {
            let w = Workload::new(vec![p.instances[0].clone()], 1, "allocations", p.kind, true);
            rt.block_on(w.run_ops(500));
            let before = valkeylock_bench_alloc::snapshot();
            let took = rt.block_on(w.run_ops(n));
            let d = valkeylock_bench_alloc::snapshot().since(&before);
            println!(
                "| {} | {:.1} | {:.2} | {:.0} | {:.1} |",
                p.kind.label(),
                d.allocs as f64 / n as f64,
                d.reallocs as f64 / n as f64,
                d.bytes as f64 / n as f64,
                took.as_secs_f64() * 1e6 / n as f64
            );
        }
        // Where valkeylock's allocations happen: inside `lock()`, inside
        // `release()` (each also counts whatever other threads allocate
        // meanwhile: actors, the fred client's tasks).
        if let Some(p) = peers.iter().find(|p| p.kind == Kind::Valkeylock) {
            if let Imp::Valkeylock(locker) = &p.instances[0] {
                let name = Kind::Valkeylock.name("allocations-split");
                let (mut in_lock, mut in_release) = (0u64, 0u64);
                let before = valkeylock_bench_alloc::snapshot();
                rt.block_on(async {
                    for _ in 0..n {
                        let s0 = valkeylock_bench_alloc::snapshot();
                        let g = locker.lock(&name).await.expect("lock");
                        let s1 = valkeylock_bench_alloc::snapshot();
                        let _ = g.release().await;
                        let s2 = valkeylock_bench_alloc::snapshot();
                        in_lock += s1.since(&s0).allocs;
                        in_release += s2.since(&s1).allocs;
                    }
                });
                let total = valkeylock_bench_alloc::snapshot().since(&before).allocs;
                println!();
                println!(
                    "valkeylock split over {n} ops: {:.1} allocs/op during lock(), {:.1} during release(), {:.1} between calls (background: actor stop, timers)",
                    in_lock as f64 / n as f64,
                    in_release as f64 / n as f64,
                    (total - in_lock - in_release) as f64 / n as f64
                );
            }
        }
    }

    if args.wants("anatomy") || args.wants("lock_unlock") {
        let n: usize = if quick { 2_000 } else { 10_000 };
        anatomy(&rt, &peers, &admin, n);
        runtime_flavours(&rt, &urls, n as u64);
    }

    for p in &peers {
        for imp in &p.instances {
            rt.block_on(imp.close());
        }
    }
    drop(server);
}

fn bench(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group: &str,
    rt: &Runtime,
    kind: Kind,
    param: usize,
    w: &Workload,
) {
    let ran = std::cell::Cell::new(false);
    g.bench_with_input(BenchmarkId::new(kind.label(), param), w, |b, w| {
        ran.set(true);
        b.iter_custom(|iters| rt.block_on(w.run_ops(iters)));
    });
    // Only what criterion actually ran (it skips ids that the filter excludes).
    if ran.get() {
        note_ran(&format!("{group}/{}/{param}", kind.label()));
    }
}

/// The one-task loops whose release is not waited for (see `lock_unlock`).
const NOWAIT: [Kind; 2] = [Kind::ValkeylockDrop, Kind::RawNoWait];

/// One row of the fixed-duration table: `w` run for `fixed`.
#[allow(clippy::too_many_arguments)]
fn fixed_row(
    rt: &Runtime,
    admin: &fred::prelude::Client,
    scenario: &str,
    kind: Kind,
    tasks: usize,
    w: &Workload,
    fixed: Duration,
    tck: u64,
) {
    let before = rt.block_on(common::Cost::now(admin));
    let mut s = rt.block_on(w.run_for(fixed));
    let after = rt.block_on(common::Cost::now(admin));
    let (cmds, server_us, client_us) = after.per_op(&before, s.ops(), tck);
    let [p50, p99, p999, max] = common::wait_columns(&mut s.waits);
    println!(
        "| {scenario} | {} | {tasks} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {cmds:.2} | {server_us:.1} | {client_us:.1} | {:?} |",
        kind.label(),
        s.ops(),
        s.ops_per_sec(),
        p50,
        p99,
        p999,
        max,
        common::fmt_ratio(s.fairness()),
        s.per_task
    );
}

fn print_criterion_table() {
    let ran = RAN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if ran.is_empty() {
        return;
    }
    println!();
    println!("## Criterion: time per lock + unlock (slope estimate, 95% CI)");
    println!();
    println!("| benchmark | impl | tasks/lockers | µs/op | 95% CI µs | ops/s (1/time) |");
    println!("|---|---|---:|---:|---|---:|");
    for id in ran {
        let Some((lo, est, hi)) = common::criterion_estimate(&id) else {
            continue;
        };
        let parts: Vec<&str> = id.split('/').collect();
        println!(
            "| {} | {} | {} | {:.1} | {:.1} – {:.1} | {:.0} |",
            parts[0],
            parts[1],
            parts[2],
            est / 1000.0,
            lo / 1000.0,
            hi / 1000.0,
            1e9 / est
        );
    }
}

/// Where one uncontended lock + unlock spends its time: each step timed on
/// its own, `n` times, with its allocations and server commands.
fn anatomy(rt: &Runtime, peers: &[Peers], admin: &fred::prelude::Client, n: usize) {
    let locker = peers.iter().find_map(|p| match &p.instances[0] {
        Imp::Valkeylock(l) => Some(l.clone()),
        _ => None,
    });
    let raw = peers.iter().find_map(|p| match &p.instances[0] {
        Imp::Raw(r) => Some(r.clone()),
        _ => None,
    });
    let (Some(locker), Some(raw)) = (locker, raw) else {
        return;
    };
    println!();
    println!("## Anatomy of an uncontended lock + unlock (T = 1, {n} times each step, after 200 warm-up)");
    println!();
    println!("| step | p50 µs | p99 µs | allocs/call |");
    println!("|---|---:|---:|---:|");
    let row = |label: &str, mut lat: Vec<u64>, allocs: u64| {
        let p50 = common::quantile(&mut lat, 0.5);
        let p99 = common::quantile(&mut lat, 0.99);
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            common::us(p50),
            common::us(p99),
            allocs as f64 / n as f64
        );
    };
    let mut notes = Vec::new();
    rt.block_on(async {
        let calls = || async { common::total_calls(&common::command_calls(admin).await) };
        // valkeylock: lock() and release() timed separately.
        let name = Kind::Valkeylock.name("anatomy");
        for _ in 0..200 {
            let _ = locker.lock(&name).await.expect("lock").release().await;
        }
        let (mut l_lat, mut r_lat) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut l_alloc, mut r_alloc) = (0, 0);
        let c0 = calls().await;
        for _ in 0..n {
            let a0 = valkeylock_bench_alloc::snapshot();
            let t0 = tokio::time::Instant::now();
            let g = locker.lock(&name).await.expect("lock");
            let t1 = tokio::time::Instant::now();
            let a1 = valkeylock_bench_alloc::snapshot();
            let _ = g.release().await;
            let t2 = tokio::time::Instant::now();
            let a2 = valkeylock_bench_alloc::snapshot();
            l_lat.push((t1 - t0).as_nanos() as u64);
            r_lat.push((t2 - t1).as_nanos() as u64);
            l_alloc += a1.since(&a0).allocs;
            r_alloc += a2.since(&a1).allocs;
        }
        let cmds = (calls().await - c0) as f64 / n as f64;
        notes.push(format!("valkeylock: {cmds:.2} server commands per lock + unlock"));
        row("valkeylock `lock()` (free name)", l_lat, l_alloc);
        row("valkeylock `release()`", r_lat, r_alloc);

        // valkeylock: try_lock of a name this locker holds: answered by the
        // lock core without a server command, fed on the caller's thread, so
        // only the in-process path.
        let held = locker.lock(&name).await.expect("lock");
        let mut lat = Vec::with_capacity(n);
        let c0 = calls().await;
        let a0 = valkeylock_bench_alloc::snapshot();
        for _ in 0..n {
            let t0 = tokio::time::Instant::now();
            let r = locker.try_lock(&name).await;
            lat.push(t0.elapsed().as_nanos() as u64);
            assert!(r.is_err(), "try_lock of a held name succeeded");
        }
        let allocs = valkeylock_bench_alloc::snapshot().since(&a0).allocs;
        let cmds = (calls().await - c0) as f64 / n as f64;
        notes.push(format!("valkeylock `try_lock()` of a held name: {cmds:.2} server commands per call"));
        row(
            "valkeylock `try_lock()` of a name it holds (in-process only: the lock core, fed on the caller's thread)",
            lat,
            allocs,
        );
        let _ = held.release().await;

        // The floor's two commands, and a bare round trip.
        let key = Kind::Raw.name("anatomy");
        let (mut s_lat, mut e_lat) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut s_alloc, mut e_alloc) = (0, 0);
        let c0 = calls().await;
        for _ in 0..n {
            let a0 = valkeylock_bench_alloc::snapshot();
            let t0 = tokio::time::Instant::now();
            let token = raw.lock(&key).await;
            let t1 = tokio::time::Instant::now();
            let a1 = valkeylock_bench_alloc::snapshot();
            raw.unlock(&key, token).await;
            let t2 = tokio::time::Instant::now();
            let a2 = valkeylock_bench_alloc::snapshot();
            s_lat.push((t1 - t0).as_nanos() as u64);
            e_lat.push((t2 - t1).as_nanos() as u64);
            s_alloc += a1.since(&a0).allocs;
            e_alloc += a2.since(&a1).allocs;
        }
        let cmds = (calls().await - c0) as f64 / n as f64;
        notes.push(format!("raw: {cmds:.2} server commands per lock + unlock"));
        row("raw `SET NX PX` (free key)", s_lat, s_alloc);
        row("raw `EVALSHA` compare-and-delete", e_lat, e_alloc);

        let mut lat = Vec::with_capacity(n);
        let c0 = calls().await;
        let a0 = valkeylock_bench_alloc::snapshot();
        for _ in 0..n {
            let t0 = tokio::time::Instant::now();
            let _: String = fred::prelude::ClientLike::ping(raw.client(), None)
                .await
                .expect("PING");
            lat.push(t0.elapsed().as_nanos() as u64);
        }
        let allocs = valkeylock_bench_alloc::snapshot().since(&a0).allocs;
        let cmds = (calls().await - c0) as f64 / n as f64;
        notes.push(format!("PING: {cmds:.2} server commands per call"));
        row(
            "raw client `PING` (one round trip, same fred client as the floor)",
            lat,
            allocs,
        );

        // What one actor costs: spawn + stop + join of an actor that does
        // nothing (valkeylock spawns a LockActor when a name is first used and
        // stops it once idle, so an uncontended lock + unlock pays this).
        for _ in 0..200 {
            let (a, h) = ractor::Actor::spawn(None, Nop, ()).await.expect("spawn");
            a.stop(None);
            h.await.expect("join");
        }
        let mut lat = Vec::with_capacity(n);
        let a0 = valkeylock_bench_alloc::snapshot();
        for _ in 0..n {
            let t0 = tokio::time::Instant::now();
            let (a, h) = ractor::Actor::spawn(None, Nop, ()).await.expect("spawn");
            a.stop(None);
            h.await.expect("join");
            lat.push(t0.elapsed().as_nanos() as u64);
        }
        let allocs = valkeylock_bench_alloc::snapshot().since(&a0).allocs;
        row("ractor: spawn + stop + join of an empty actor (no Valkey)", lat, allocs);

        // One timer as ractor arms them (`send_after`: a spawned task that
        // sleeps), cancelled before it fires, as a lock's attempt/extend/deadline
        // timers are on release.
        let (a, h) = ractor::Actor::spawn(None, Nop, ()).await.expect("spawn");
        let mut lat = Vec::with_capacity(n);
        let a0 = valkeylock_bench_alloc::snapshot();
        for _ in 0..n {
            let t0 = tokio::time::Instant::now();
            let timer = a.send_after(Duration::from_secs(5), || ());
            timer.abort();
            lat.push(t0.elapsed().as_nanos() as u64);
        }
        let allocs = valkeylock_bench_alloc::snapshot().since(&a0).allocs;
        row("ractor: `send_after` timer armed then aborted", lat, allocs);
        a.stop(None);
        h.await.expect("join");
    });
    println!();
    println!(
        "Server commands (INFO commandstats, commands inside scripts included): {}.",
        notes.join("; ")
    );
}

/// The same uncontended T = 1 loop on the multi-threaded runtime (2 workers)
/// and on a current-thread runtime (everything on one thread: no cross-thread
/// wake-ups between the caller, the actors and the client's tasks), for
/// valkeylock with its engine on a thread of its own (the default) and on the
/// caller's runtime (`dedicated_runtime` off), and for the floor; then the
/// same with ten tasks, each locking a name of its own (`uncontended/*/10`'s
/// workload), where the tasks of the engine on the callers' runtime compete
/// with the callers for the workers.
fn runtime_flavours(rt: &Runtime, urls: &[String], n: u64) {
    println!();
    println!("## Runtime flavour: uncontended lock + unlock, T = 1, {n} ops after 500 warm-up (fresh instances)");
    flavour_table(rt, urls, n, 1);
    let n = n * 4;
    println!();
    println!("## Ten tasks by runtime flavour: uncontended lock + unlock, T = 10 (a name each), {n} ops after 500 warm-up (fresh instances)");
    flavour_table(rt, urls, n, 10);
}

/// One table of [`runtime_flavours`]: `tasks` tasks, `n` operations in all.
fn flavour_table(rt: &Runtime, urls: &[String], n: u64, tasks: usize) {
    println!();
    println!("| impl | runtime | µs/op (mean) | client CPU µs/op | context switches/op (voluntary + involuntary, all threads) |");
    println!("|---|---|---:|---:|---|");
    let tck = common::clk_tck();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime");
    let impls: [(&str, Option<bool>); 3] = [
        ("valkeylock (engine thread)", Some(true)),
        ("valkeylock (engine on the caller's runtime)", Some(false)),
        ("raw", None),
    ];
    for (label, dedicated) in impls {
        for (flavour, rt) in [
            ("multi-thread (2 workers)", rt),
            ("current-thread", &current),
        ] {
            rt.block_on(async {
                let (kind, imp) = match dedicated {
                    Some(on) => (
                        Kind::Valkeylock,
                        common::Imp::Valkeylock(
                            valkeylock::Locker::connect(
                                common::valkeylock_options(urls, 1).with_dedicated_runtime(on),
                            )
                            .await
                            .expect("valkeylock connect"),
                        ),
                    ),
                    None => (Kind::Raw, Kind::Raw.connect(urls).await),
                };
                let w = Workload::new(vec![imp.clone()], tasks, "flavour", kind, tasks == 1);
                w.run_ops(500).await;
                let c0 = common::cpu_ticks();
                let s0 = common::context_switches();
                let took = w.run_ops(n).await;
                let s1 = common::context_switches();
                let c1 = common::cpu_ticks();
                println!(
                    "| {label} | {flavour} | {:.1} | {:.1} | {:.2} + {:.2} |",
                    took.as_secs_f64() * 1e6 / n as f64,
                    (c1 - c0) as f64 * 1e6 / tck as f64 / n as f64,
                    (s1.0 - s0.0) as f64 / n as f64,
                    (s1.1 - s0.1) as f64 / n as f64
                );
                imp.close().await;
            });
        }
    }
}

/// `processes` section: N child processes (this binary again, with
/// [`CHILD_ENV`] set), each with its own connections and one task looping
/// lock + unlock on one shared name for `fixed`, all starting at the same
/// wall-clock instant.
fn processes(urls: &[String], admin: &fred::clients::Client, fixed: Duration) {
    let rt = common::runtime();
    println!();
    println!("## Cross-locker, separate processes ({fixed:?} each; one process per locker, one task each, one name)");
    println!();
    println!("| impl | processes | ops | ops/s | µs/op (1 / ops/s) | wait p50 µs | wait p99 µs | wait p99.9 µs | wait max µs | fairness max/min | server cmds/op | server CPU µs/op | client CPU µs/op (all processes) | ops per process |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let exe = std::env::current_exe().expect("own path");
    for kind in Kind::HANDOVER {
        for n in [2usize, 4] {
            let name = kind.name(&format!("processes-{n}"));
            // Far enough ahead for every child to start and connect.
            let start = std::time::SystemTime::now() + Duration::from_millis(1500);
            let start_ms = start
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_millis();
            let before = rt.block_on(common::Cost::now(admin));
            let children: Vec<_> = (0..n)
                .map(|_| {
                    std::process::Command::new(&exe)
                        .env(
                            CHILD_ENV,
                            format!(
                                "{};{};{name};{};{start_ms}",
                                kind.label(),
                                urls[0],
                                fixed.as_millis()
                            ),
                        )
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .expect("start a child bench process")
                })
                .collect();
            let mut per_process = Vec::new();
            let mut waits = Vec::new();
            let mut ticks = 0u64;
            for c in children {
                let out = c.wait_with_output().expect("child bench process");
                assert!(out.status.success(), "child bench process failed");
                let text = String::from_utf8_lossy(&out.stdout);
                let (ops, t, w) = parse_child(&text).expect("child bench output");
                per_process.push(ops);
                ticks += t;
                waits.extend(w);
            }
            let after = rt.block_on(common::Cost::now(admin));
            let ops: u64 = per_process.iter().sum();
            let (cmds, server_us, _) = after.per_op(&before, ops, 100);
            let client_us = ticks as f64 * 1e6 / common::clk_tck() as f64 / ops.max(1) as f64;
            let ops_s = ops as f64 / fixed.as_secs_f64();
            let [p50, p99, p999, max] = common::wait_columns(&mut waits);
            println!(
                "| {} | {n} | {ops} | {ops_s:.0} | {:.1} | {p50:.1} | {p99:.1} | {p999:.1} | {max:.1} | {} | {cmds:.2} | {server_us:.1} | {client_us:.1} | {per_process:?} |",
                kind.label(),
                1e6 / ops_s.max(f64::MIN_POSITIVE),
                common::fmt_ratio(common::max_over_min(&per_process)),
            );
        }
    }
}

/// Reads a child's output: `ops N`, `ticks N`, then `waits` and the waits in
/// ns, space-separated.
fn parse_child(text: &str) -> Option<(u64, u64, Vec<u64>)> {
    let mut ops = None;
    let mut ticks = None;
    let mut waits = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("ops") => ops = words.next()?.parse().ok(),
            Some("ticks") => ticks = words.next()?.parse().ok(),
            Some("waits") => waits = words.map(|w| w.parse().ok()).collect::<Option<_>>()?,
            _ => {}
        }
    }
    Some((ops?, ticks?, waits))
}

/// The child side of [`processes`]: `kind;url;name;duration_ms;start_unix_ms`.
fn child(spec: &str) {
    let parts: Vec<&str> = spec.split(';').collect();
    let [kind, url, name, duration_ms, start_ms] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let kind = Kind::from_label(kind).expect("known implementation");
    let duration = Duration::from_millis(duration_ms.parse().expect("duration"));
    let start = std::time::UNIX_EPOCH + Duration::from_millis(start_ms.parse().expect("start"));
    let rt = common::runtime();
    let (ops, ticks, waits) = rt.block_on(async {
        let imp = kind.connect(&[url.to_owned()]).await;
        if let Ok(ahead) = start.duration_since(std::time::SystemTime::now()) {
            tokio::time::sleep(ahead).await;
        }
        let t0 = common::cpu_ticks();
        let end = tokio::time::Instant::now() + duration;
        let name = name.to_owned();
        // On a worker thread, like every other bench loop.
        let waits = tokio::spawn({
            let imp = imp.clone();
            async move {
                let mut waits = Vec::with_capacity(1 << 16);
                while tokio::time::Instant::now() < end {
                    waits.push(imp.op(&name).await.as_nanos() as u64);
                }
                waits
            }
        })
        .await
        .expect("child loop");
        let ticks = common::cpu_ticks() - t0;
        imp.close().await;
        (waits.len() as u64, ticks, waits)
    });
    let mut out = format!("ops {ops}\nticks {ticks}\nwaits");
    for w in waits {
        out.push(' ');
        out.push_str(&w.to_string());
    }
    println!("{out}");
}

/// `handover` section: valkeylock alone, one name, 10 tasks, for several
/// values of `local_handover_limit`: all tasks on one `Locker`, split evenly
/// over two `Locker`s, and nine on one against a lone task on the other. The
/// lockers' shares of the operations show what the bound costs the other
/// process: with an even split, nothing; against a lone task, that task gets
/// one turn per real release while the other locker's tasks share the
/// hand-overs in between.
fn handover_bound(
    rt: &Runtime,
    urls: &[String],
    admin: &fred::clients::Client,
    fixed: Duration,
    tck: u64,
) {
    println!();
    println!("## Local hand-over bound ({fixed:?} each; valkeylock, 10 tasks, one name)");
    println!();
    println!("| local_handover_limit | tasks per locker | ops/s | µs/op (1 / ops/s) | wait p50 µs | wait p99 µs | wait p99.9 µs | wait max µs | fairness between tasks max/min | fairness between lockers (ops per task) max/min | server cmds/op | ops per locker |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for limit in [0u32, 8, 32, 64, 128] {
        for split in [&[10usize][..], &[5, 5], &[9, 1]] {
            let lockers: Vec<Imp> = split
                .iter()
                .map(|_| {
                    let options =
                        common::valkeylock_options(urls, 1).with_local_handover_limit(limit);
                    Imp::Valkeylock(
                        rt.block_on(valkeylock::Locker::connect(options))
                            .expect("connect"),
                    )
                })
                .collect();
            // Task i runs on the locker whose share of the split covers i.
            let owner: Vec<usize> = split
                .iter()
                .enumerate()
                .flat_map(|(l, &n)| std::iter::repeat_n(l, n))
                .collect();
            let clients: Vec<Imp> = owner.iter().map(|&l| lockers[l].clone()).collect();
            let label = split
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("+");
            let w = Workload::new(
                clients,
                owner.len(),
                &format!("handover-{limit}-{label}"),
                Kind::Valkeylock,
                true,
            );
            let before = rt.block_on(common::Cost::now(admin));
            let mut s = rt.block_on(w.run_for(fixed));
            let after = rt.block_on(common::Cost::now(admin));
            let (cmds, _, _) = after.per_op(&before, s.ops(), tck);
            let mut per_locker = vec![0u64; split.len()];
            for (i, n) in s.per_task.iter().enumerate() {
                per_locker[owner[i]] += n;
            }
            // Each locker's operations per task, so an uneven split that is
            // fair to every task reads 1.
            let shares: Vec<f64> = per_locker
                .iter()
                .zip(split)
                .map(|(&n, &t)| n as f64 / t as f64)
                .collect();
            let lockers_fairness = shares.iter().copied().fold(0.0, f64::max)
                / shares.iter().copied().fold(f64::INFINITY, f64::min);
            let ops_s = s.ops_per_sec();
            let [p50, p99, p999, max] = common::wait_columns(&mut s.waits);
            println!(
                "| {limit} | {label} | {ops_s:.0} | {:.1} | {p50:.1} | {p99:.1} | {p999:.1} | {max:.1} | {} | {} | {cmds:.2} | {per_locker:?} |",
                1e6 / ops_s.max(f64::MIN_POSITIVE),
                common::fmt_ratio(s.fairness()),
                common::fmt_ratio(lockers_fairness),
            );
            for c in lockers {
                rt.block_on(c.close());
            }
        }
    }
}
