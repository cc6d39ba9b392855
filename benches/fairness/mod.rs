//! Fairness across processes (issue #13), a section of the semaphore bench:
//! 4 processes × 5 tasks loop acquire, hold 1 ms, release, on one name of
//! one `valkey-server`, for a lock without and with fair queueing, and a
//! semaphore of 2 (whose slots take no queue). Every process
//! is the bench binary run again as a worker (`VALKEYLOCK_FAIRNESS_CHILD`),
//! with its own `Locker`; times are `CLOCK_MONOTONIC`, which the processes
//! share.
//!
//! Measured, from every grant's (arrival, grant) pair:
//! - grants per second;
//! - inversions: pairs of waits where the later arrival was granted first,
//!   per grant (0 for a first-come first-served queue);
//! - the longest wait and the 99th percentile;
//! - the share of grants of the busiest process over the idlest;
//! - the server's commands per grant (`INFO commandstats`).
//!
//! Run: `cargo bench --bench semaphore -- fairness` (30 s per primitive;
//! `CI=1`: 2 s).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common;
use crate::support::history::mono_ns;
use crate::support::ValkeyServer;
use tokio::time::Instant;
use valkeylock::{Locker, LockerOptions};

pub(crate) const CHILD_ENV: &str = "VALKEYLOCK_FAIRNESS_CHILD";
const PROCESSES: usize = 4;
const TASKS: usize = 5;
const HOLD: Duration = Duration::from_millis(1);

/// Runs the section against `server`, `secs` per primitive.
pub(crate) fn run(server: &ValkeyServer, secs: f64) {
    // The counter the table rests on, checked on a known case.
    assert_eq!(count_inversions(&[2, 4, 1, 3, 5]), 3);
    let url = server.url();
    let rt = common::runtime();
    let admin = rt.block_on(server.admin());
    let calls = || rt.block_on(async { common::total_calls(&common::command_calls(&admin).await) });
    let mut rows = Vec::new();
    for (label, permits, fair) in [
        ("lock", 0u32, false),
        ("lock, fair queueing", 0, true),
        ("semaphore of 2", 2, false),
    ] {
        let name = format!("bench-fairness-{permits}-{fair}");
        let before = calls();
        let children: Vec<_> = (0..PROCESSES)
            .map(|p| {
                Command::new(std::env::current_exe().expect("own path"))
                    .env(
                        CHILD_ENV,
                        format!("{url};{name};{permits};{fair};{secs};{p}"),
                    )
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawn a worker process")
            })
            .collect();
        let mut waits: Vec<Wait> = Vec::new();
        for c in children {
            let out = c.wait_with_output().expect("worker");
            assert!(out.status.success(), "a worker failed");
            waits.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(Wait::parse),
            );
        }
        // Less the INFO calls themselves.
        let commands = calls().saturating_sub(before + 1);
        rows.push((label, Summary::of(&mut waits), commands));
    }
    println!();
    println!(
        "## Fairness across processes: {PROCESSES} processes × {TASKS} tasks, hold {} ms, {secs} s each",
        HOLD.as_millis()
    );
    println!();
    println!("| primitive | grants/s | inversions per grant | wait p50 ms | wait p99 ms | longest wait ms | grants, busiest / idlest process | server commands per grant |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, s, commands) in rows {
        println!(
            "| {label} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {:.1} |",
            s.grants as f64 / secs,
            s.inversions as f64 / s.grants.max(1) as f64,
            s.p50_ms,
            s.p99_ms,
            s.longest_ms,
            common::fmt_ratio(s.share),
            commands as f64 / s.grants.max(1) as f64
        );
    }
}

/// One wait of a worker: when it asked, when it was granted, which process.
#[derive(Debug, Clone, Copy)]
struct Wait {
    process: usize,
    arrived: u64,
    granted: u64,
}

impl Wait {
    fn parse(line: &str) -> Option<Wait> {
        let mut w = line.strip_prefix("W ")?.split(' ');
        Some(Wait {
            process: w.next()?.parse().ok()?,
            arrived: w.next()?.parse().ok()?,
            granted: w.next()?.parse().ok()?,
        })
    }
}

struct Summary {
    grants: usize,
    inversions: u64,
    p50_ms: f64,
    p99_ms: f64,
    longest_ms: f64,
    share: f64,
}

impl Summary {
    fn of(waits: &mut [Wait]) -> Summary {
        waits.sort_by_key(|w| w.granted);
        let arrivals: Vec<u64> = waits.iter().map(|w| w.arrived).collect();
        let inversions = count_inversions(&arrivals);
        let mut lengths: Vec<u64> = waits.iter().map(|w| w.granted - w.arrived).collect();
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut per_process = [0u64; PROCESSES];
        for w in waits.iter() {
            per_process[w.process % PROCESSES] += 1;
        }
        Summary {
            grants: waits.len(),
            inversions,
            p50_ms: ms(common::quantile(&mut lengths, 0.5)),
            p99_ms: ms(common::quantile(&mut lengths, 0.99)),
            longest_ms: ms(common::quantile(&mut lengths, 1.0)),
            share: common::max_over_min(&per_process),
        }
    }
}

/// Pairs `i < j` with `v[i] > v[j]` (merge sort, O(n log n)).
fn count_inversions(v: &[u64]) -> u64 {
    fn sort(v: &mut [u64], buf: &mut Vec<u64>) -> u64 {
        let n = v.len();
        if n < 2 {
            return 0;
        }
        let mid = n / 2;
        let mut count = sort(&mut v[..mid], buf) + sort(&mut v[mid..], buf);
        buf.clear();
        let (mut i, mut j) = (0, mid);
        while i < mid && j < n {
            if v[i] <= v[j] {
                buf.push(v[i]);
                i += 1;
            } else {
                buf.push(v[j]);
                count += (mid - i) as u64;
                j += 1;
            }
        }
        buf.extend_from_slice(&v[i..mid]);
        buf.extend_from_slice(&v[j..]);
        v.copy_from_slice(buf);
        count
    }
    let mut buf = Vec::with_capacity(v.len());
    sort(&mut v.to_vec(), &mut buf)
}

/// A worker process: `TASKS` tasks on one `Locker` loop for `secs`; prints
/// `W process arrived granted` (monotonic ns) per grant.
pub(crate) fn child(spec: &str) {
    let parts: Vec<&str> = spec.split(';').collect();
    let [url, name, permits, fair, secs, process] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let permits: u32 = permits.parse().expect("permits");
    let fair: bool = fair.parse().expect("fair");
    let secs: f64 = secs.parse().expect("secs");
    let process: usize = process.parse().expect("process");
    let rt = common::runtime();
    let lines = rt.block_on(async {
        let locker = Locker::connect(
            LockerOptions::new([url.to_owned()])
                .with_key_majority(1)
                .with_key_validity(Duration::from_millis(common::TTL_MS))
                .with_fair_queueing(fair),
        )
        .await
        .expect("connect");
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let (locker, name) = (locker.clone(), name.to_owned());
            set.spawn(async move {
                let pool =
                    (permits > 0).then(|| locker.semaphore(&name, permits).expect("semaphore"));
                let mut out = Vec::new();
                while Instant::now() < end {
                    let arrived = mono_ns();
                    let held: Box<dyn std::any::Any + Send> = match &pool {
                        Some(pool) => Box::new(pool.acquire().await.expect("permit")),
                        None => Box::new(locker.lock(&name).await.expect("lock")),
                    };
                    out.push((arrived, mono_ns()));
                    tokio::time::sleep(HOLD).await;
                    drop(held);
                }
                out
            });
        }
        let mut lines = String::new();
        while let Some(r) = set.join_next().await {
            for (arrived, granted) in r.expect("task") {
                lines.push_str(&format!("W {process} {arrived} {granted}\n"));
            }
        }
        locker.close().await;
        lines
    });
    print!("{lines}");
}
