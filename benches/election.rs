//! Leader election against a real `valkey-server` on loopback (issue #14),
//! with our plain lock's wake-up and the raw command floor measured in the
//! same run, interleaved, and reported as ratios.
//!
//! - `handover`: leader A (locker a) resigns while candidate B (locker b)
//!   campaigns; an observer in locker c follows. From A's `resign()` call
//!   until B's `campaign()` returns (the next leader), and until C's
//!   observer reports B (observe latency). Beside them, in the same rounds:
//!   a plain lock's release → next acquisition in another locker, and the
//!   floor, one `SET NX PX` + compare-and-delete round through one fred
//!   client.
//! - `crash`: leader A's connection is cut silently (a proxy stops
//!   forwarding: a crashed or partitioned leader); B campaigns. From the
//!   cut until B leads, which cannot be sooner than A's keys expire (the
//!   validity, 1 s here); and the margin between A being told it is
//!   deposed (by its own clock) and B leading, which the safety rule keeps
//!   positive.
//!
//! - `rwlock` (read-write locks, the same issue): 2 processes × 4 reader
//!   tasks loop read, hold 2 ms, release, so that some reader always holds;
//!   1 writer in this process loops write, hold 1 ms, release, pause 20 ms.
//!   The writer's waits (p50, p99, longest) and both sides' grants per
//!   second: without writer preference the readers' overlapping holds would
//!   keep it out for as long as they run.
//!
//! Run: `cargo bench --bench election` (`CI=1` for a short run; a
//! positional filter such as `crash` selects sections).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::Duration;

use common::{Args, Kind, Raw};
use support::proxy::Proxy;
use support::ValkeyServer;
use tokio::time::{sleep, Instant};
use valkeylock::{Locker, LockerOptions};

/// Set in a reader process of the `rwlock` section: `url;name;secs`.
const RW_CHILD_ENV: &str = "VALKEYLOCK_RW_READER_CHILD";
const READER_PROCESSES: usize = 2;
const READER_TASKS: usize = 4;

fn main() {
    if let Ok(spec) = std::env::var(RW_CHILD_ENV) {
        reader_child(&spec);
        return;
    }
    let args = Args::parse();
    if args.list {
        return;
    }
    let quick = args.quick();
    let rt = common::runtime();
    println!("# election bench: {}", common::machine());
    println!("# mode: {}", if quick { "quick (CI)" } else { "full" });
    let server = ValkeyServer::start();
    let url = server.url();
    rt.block_on(async {
        if args.wants("handover") {
            handover(&url, if quick { 20 } else { 300 }).await;
        }
        if args.wants("crash") {
            crash(&server, if quick { 3 } else { 30 }).await;
        }
    });
    if args.wants("rwlock") {
        writer_starvation(&server, if quick { 2.0 } else { 30.0 });
    }
    drop(server);
}

async fn connect(url: &str) -> Locker {
    Locker::connect(common::valkeylock_options(&[url.to_owned()], 1))
        .await
        .expect("connect")
}

fn ns_since(t0: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(t0).as_nanos() as u64
}

async fn handover(url: &str, samples: usize) {
    let (a, b, c) = (connect(url).await, connect(url).await, connect(url).await);
    let raw = Raw::connect(url).await;
    let name = Kind::Valkeylock.name("election-handover");
    let lock_name = Kind::Valkeylock.name("election-lock-wakeup");
    let raw_name = Kind::Raw.name("election-floor");
    let (ea, eb) = (a.election(&name).unwrap(), b.election(&name).unwrap());
    let mut observer = c.election(&name).unwrap().observe().unwrap();
    let (mut next_leader, mut observed, mut lock_wake, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..samples + 5 {
        let leader = ea.campaign("a").await.expect("A leads");
        // The observer reports A first.
        loop {
            let seen = observer.next().await.expect("observer");
            if seen.term == leader.term() {
                break;
            }
        }
        let next = tokio::spawn({
            let eb = eb.clone();
            async move {
                let l = eb.campaign("b").await.expect("B leads");
                (Instant::now(), l)
            }
        });
        sleep(Duration::from_millis(20)).await;
        assert!(!next.is_finished(), "B led beside A");
        let t0 = Instant::now();
        let _ = leader.resign().await;
        let seen = loop {
            let l = observer.next().await.expect("observer");
            if l.value == "b" {
                break Instant::now();
            }
        };
        let (elected, b_leads) = next.await.expect("B");
        b_leads.resign().await.expect("B resigns");
        // The lock's wake-up and the floor, in the same round.
        let wake = common::lock_wakeup(&a, &b, &lock_name).await;
        let t = Instant::now();
        let token = raw.lock(&raw_name).await;
        raw.unlock(&raw_name, token).await;
        let round_trip = t.elapsed().as_nanos() as u64;
        if i >= 5 {
            next_leader.push(ns_since(t0, elected));
            observed.push(ns_since(t0, seen));
            lock_wake.push(wake);
            floor.push(round_trip);
        }
    }
    println!();
    println!("## Hand-over: leader resigns in locker A → next leader in B, observer in C ({samples} samples, interleaved)");
    println!();
    println!("| measure | p50 µs | p90 µs | p99 µs | max µs | p50 × floor | p50 × lock wake-up |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let q = |v: &mut Vec<u64>, p| common::us(common::quantile(v, p));
    let floor_p50 = q(&mut floor, 0.5);
    let wake_p50 = q(&mut lock_wake, 0.5);
    for (label, mut v) in [
        ("resign → next leader's campaign returns", next_leader),
        ("resign → observer in a third locker reports it", observed),
        (
            "lock: release → next acquisition in another locker",
            lock_wake,
        ),
        ("raw floor: SET NX PX + compare-and-delete", floor),
    ] {
        let p50 = q(&mut v, 0.5);
        println!(
            "| {label} | {p50:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
            q(&mut v, 0.9),
            q(&mut v, 0.99),
            q(&mut v, 1.0),
            p50 / floor_p50,
            p50 / wake_p50
        );
    }
    raw.quit().await;
    for l in [a, b, c] {
        l.close().await;
    }
}

const CRASH_VALIDITY: Duration = Duration::from_secs(1);

async fn crash(server: &ValkeyServer, samples: usize) {
    let options = |port: u16| {
        LockerOptions::new([format!("redis://127.0.0.1:{port}")])
            .with_key_majority(1)
            .with_key_validity(CRASH_VALIDITY)
    };
    let b = Locker::connect(options(server.port))
        .await
        .expect("connect");
    let name = Kind::Valkeylock.name("election-crash");
    let eb = b.election(&name).unwrap();
    let (mut next_leader, mut margin) = (Vec::new(), Vec::new());
    let mut negative = 0;
    for _ in 0..samples {
        let proxy = Proxy::start(server.port).await;
        let a = Locker::connect(options(proxy.port)).await.expect("connect");
        let leader = a.election(&name).unwrap().campaign("a").await.expect("A");
        let next = tokio::spawn({
            let eb = eb.clone();
            async move {
                let l = eb.campaign("b").await.expect("B leads");
                (Instant::now(), l)
            }
        });
        // Let A extend a few times, then cut it off.
        sleep(CRASH_VALIDITY * 2).await;
        let t0 = Instant::now();
        proxy.freeze();
        let _ = leader.lost().await;
        let told = Instant::now();
        let (elected, b_leads) = next.await.expect("B");
        next_leader.push(ns_since(t0, elected));
        if elected >= told {
            margin.push(ns_since(told, elected));
        } else {
            negative += 1;
        }
        b_leads.resign().await.expect("B resigns");
        drop(leader);
        drop(proxy);
        let _ = tokio::time::timeout(Duration::from_secs(2), a.close()).await;
    }
    println!();
    println!(
        "## Crash: leader A cut off silently → next leader in B ({samples} samples, validity {} ms)",
        CRASH_VALIDITY.as_millis()
    );
    println!();
    println!("| measure | p50 ms | p99 ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let ms = |v: &mut Vec<u64>, p| common::quantile(v, p) as f64 / 1e6;
    for (label, mut v) in [
        ("cut → next leader's campaign returns", next_leader),
        ("A told deposed (own clock) → B leads", margin),
    ] {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} |",
            ms(&mut v, 0.5),
            ms(&mut v, 0.99),
            ms(&mut v, 0.0),
            ms(&mut v, 1.0)
        );
    }
    println!();
    println!("B led before A was told: {negative} of {samples} (the safety rule says 0)");
    b.close().await;
}

/// The `rwlock` section: reader processes, one writer here.
fn writer_starvation(server: &ValkeyServer, secs: f64) {
    let url = server.url();
    let name = Kind::Valkeylock.name("rwlock-starvation");
    let children: Vec<_> = (0..READER_PROCESSES)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().expect("own path"))
                .env(RW_CHILD_ENV, format!("{url};{name};{secs}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .expect("spawn a reader process")
        })
        .collect();
    let rt = common::runtime();
    let (waits, writes, elapsed) = rt.block_on(async {
        let locker = connect(&url).await;
        let rw = locker.rw_lock(&name).expect("rw_lock");
        // Let the readers start.
        sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut waits = Vec::new();
        while Instant::now() < end {
            let t = Instant::now();
            let w = rw.write().await.expect("write");
            waits.push(t.elapsed().as_nanos() as u64);
            sleep(Duration::from_millis(1)).await;
            w.release().await.expect("release");
            sleep(Duration::from_millis(20)).await;
        }
        let elapsed = start.elapsed();
        locker.close().await;
        let writes = waits.len();
        (waits, writes, elapsed)
    });
    let mut reads = 0u64;
    let mut most = 0u64;
    for c in children {
        let out = c.wait_with_output().expect("reader process");
        assert!(out.status.success(), "a reader process failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.strip_prefix("reads ") {
                let mut f = rest.split_whitespace();
                reads += f.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                most = most.max(f.next().and_then(|n| n.parse().ok()).unwrap_or(0));
            }
        }
    }
    let mut waits = waits;
    let q = |v: &mut Vec<u64>, p| common::quantile(v, p) as f64 / 1e6;
    println!();
    println!(
        "## Writer starvation: {READER_PROCESSES} processes × {READER_TASKS} reader tasks (hold 2 ms), 1 writer (hold 1 ms, pause 20 ms), {secs} s"
    );
    println!();
    println!("| writes | writes/s | writer wait p50 ms | p99 ms | longest ms | reads/s | most readers in one process at once |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {writes} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {most} |",
        writes as f64 / elapsed.as_secs_f64(),
        q(&mut waits, 0.5),
        q(&mut waits, 0.99),
        q(&mut waits, 1.0),
        reads as f64 / elapsed.as_secs_f64()
    );
}

/// A reader process of the `rwlock` section: `READER_TASKS` tasks loop
/// read, hold 2 ms, release, for `secs` (plus the writer's start-up);
/// prints `reads COUNT MOST` (most readers of this process at once).
fn reader_child(spec: &str) {
    let parts: Vec<&str> = spec.split(';').collect();
    let [url, name, secs] = parts[..] else {
        panic!("bad {RW_CHILD_ENV}: {spec}");
    };
    let secs: f64 = secs.parse().expect("secs");
    let rt = common::runtime();
    let (reads, most) = rt.block_on(async {
        let locker = connect(url).await;
        let holding = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let end = Instant::now() + Duration::from_secs_f64(secs + 0.5);
        let tasks: Vec<_> = (0..READER_TASKS)
            .map(|_| {
                let rw = locker.rw_lock(name).expect("rw_lock");
                let (holding, most) = (holding.clone(), most.clone());
                tokio::spawn(async move {
                    let mut reads = 0u64;
                    while Instant::now() < end {
                        let r = rw.read().await.expect("read");
                        let now = holding.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        sleep(Duration::from_millis(2)).await;
                        holding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        r.release().await.expect("release");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let mut reads = 0;
        for t in tasks {
            reads += t.await.expect("reader task");
        }
        locker.close().await;
        (reads, most.load(std::sync::atomic::Ordering::SeqCst))
    });
    println!("reads {reads} {most}");
}
