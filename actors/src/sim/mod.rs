//! A deterministic simulator for the lock core (FoundationDB simulation
//! testing, TigerBeetle's VOPR): several processes, each with one
//! [`LockCore`](crate::core::LockCore) per name and its own drifting clock,
//! run against a model of Valkey nodes over a simulated network, on virtual
//! time, in one thread. Every choice (delays, faults, callers, tokens) comes
//! from a seeded generator, so a run is a function of (seed, knobs) and a
//! failing seed replays exactly.
//!
//! - `rng`: the seeded generator, also the cores' `Entropy`.
//! - `model`: the nodes: keys with absolute expiries, the scripts, tracking.
//! - `network`: connections (FIFO per direction), invalidations, the queue.
//! - `process`: clocks, callers, core slots.
//! - `world`: the event loop, the shell's handling of effects, faults.
//! - `invariants`: the checks after every step.
//!
//! # Invariants (checked after every step)
//!
//! 1. **Exclusion**: no two processes consider themselves holder of a name
//!    at one real instant (holder: status `Held { valid_until }` and local
//!    clock < `valid_until`). Overlaps with a holder whose keys a force
//!    overwrote are excused (on purpose). In runs with data-loss faults
//!    (FLUSHALL, an empty restart at once, a third party's DEL/SET), which
//!    break Redlock's assumption, an overlap is excused only while one of
//!    the two holders has fewer than `M` keys on the nodes, and such a holder
//!    must be told within `extend + 3 · reply bound + 2 trips`.
//! 2. **Validity**: a published `valid_until`, converted to real time through
//!    the process's clock, is never later than the real expiry of the `M`-th
//!    longest-lived key holding the grant's token (keys lost in an in-model
//!    restart, which stays down longer than the validity, count until their
//!    expiry). Assumes clocks drift within the allowance (here |ε| ≤ 0.5 %,
//!    the allowance is 1 % + 2 ms of the TTL).
//! 3. **Liveness**: while a name is free (nobody holds it) and a waiter's
//!    process reaches nodes holding a majority of the keys, some waiter is
//!    granted within `validity + 2.2 · extend + 4 · reply bound + timeout +
//!    4 trips` (see `Checks::new`). After the main phase every fault is
//!    healed and every caller must be through by a deadline.
//! 4. **Key lifetime**: keys are written (acquire, extend) only under the
//!    core's live attempt or grant token, and no key outlives the end of its
//!    token's life by more than one trip plus the TTL (plus the longest
//!    stall: a command held up by a stalled node runs when it ends).
//! 5. **Fencing**: fencing tokens strictly increase per name in grant order
//!    (a local hand-over keeps its fence), in runs without restarts or data
//!    loss (the counters live on the nodes). A force can overtake an attempt
//!    in flight (its grant, with a higher token, can come first), so
//!    decreases between a force and its victim are excused.
//! 6. **Well-formed effects**, no panics: a grant only of the holder the core
//!    holds, to a waiting request, never while another local caller holds;
//!    refusals only to waiting requests (a `lock()` only with `Closed`);
//!    statuses only for live holders, never after their end; a `Released`
//!    once per ack; `Idle` only when nothing is held or waited for; sends
//!    well-formed; no timer that stays in the past; every ack answered by
//!    the end, every core closed.
//!
//! # Running
//!
//! - CI: `cargo test -p valkeylock-actors --lib sim` runs `SIM_SCHEDULES`
//!   schedules (default 100 000).
//! - Long: `SIM_SCHEDULES=2000000 cargo test --release -p valkeylock-actors
//!   --lib sim -- --nocapture`; `SIM_BASE` picks another family of seeds.
//! - One seed: `SIM_SEED=... cargo test -p valkeylock-actors --lib sim --
//!   --nocapture` prints its trace; `SIM_KNOBS="procs=2,steps=80,..."`
//!   overrides what the seed chose (a failure prints its shrunk knobs).

mod invariants;
mod model;
mod network;
mod process;
mod rng;
mod world;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::core::{Fencing, RequestKind};

use rng::Rng;
use world::{World, ALL_FAULTS, CUT, DATA_LOSS, DROP, RESTART, SLOW, STALL};

/// A millisecond of real (virtual) time, in the nanoseconds the simulator
/// counts in.
const MS: u64 = 1_000_000;

/// Everything a run depends on besides the seed's stream of choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Knobs {
    pub(super) seed: u64,
    pub(super) procs: usize,
    pub(super) names: usize,
    pub(super) nodes: usize,
    pub(super) majority: usize,
    pub(super) validity_ms: u64,
    pub(super) fencing: Fencing,
    pub(super) tracking: bool,
    pub(super) noloop: bool,
    pub(super) handover: u32,
    /// Fault kinds allowed (bits of `world::DROP` ...).
    pub(super) faults: u32,
    pub(super) force: bool,
    /// Steps of the main phase.
    pub(super) steps: u64,
    /// Clock rate error bound, parts per million.
    pub(super) max_ppm: u64,
    /// Longest ordinary one-way delay (slow links add more).
    pub(super) max_delay_ms: u64,
    /// Callers bring terms of their own (`LockRequest`): a shorter validity,
    /// a maximum hold.
    pub(super) terms: bool,
    /// Callers claim a semaphore's permit count for the name (a permit
    /// slot), most of them the same count, some another or none: grants
    /// must carry their caller's claim, and disagreeing callers may be
    /// refused with `ConfigMismatch`.
    pub(super) permits: bool,
    /// Fair queueing: waiters of all processes served in arrival order.
    pub(super) fair: bool,
    /// The shell's notice allowance, ms (what telling every holder of a
    /// process costs): the cores act this much before a holder's published
    /// end. The cores cap it at a fifth of the validity.
    pub(super) allowance_ms: u64,
    /// Direct connections (`LockerOptions::direct_connections`): a second
    /// connection per process and node, for the acquisitions and releases
    /// fed on a caller's runtime, its tracking redirected to the first.
    pub(super) direct: bool,
    /// Hand-over across processes (`LockerOptions::handover`): waiters
    /// leave claims, releases hand keys to them. Never with fencing (the
    /// options refuse it).
    pub(super) claims: bool,
}

impl Knobs {
    /// The knobs a seed picks.
    pub(super) fn from_seed(seed: u64) -> Knobs {
        let mut r = Rng::new(seed ^ 0x6b6e_6f62_735f_7369);
        let shapes = [(1, 1), (1, 2), (2, 2), (3, 2), (3, 2), (3, 1)];
        let (nodes, majority) = shapes[r.below(shapes.len() as u64) as usize];
        let validity_ms = if r.chance(50) { 200 } else { 1000 };
        let fencing = match nodes {
            3 if r.chance(40) => Fencing::Majority,
            1 if r.chance(40) => Fencing::InScript,
            _ => Fencing::Off,
        };
        let mut faults = 0;
        if !r.chance(10) {
            for f in [DROP, CUT, SLOW, RESTART, STALL] {
                if r.chance(50) {
                    faults |= f;
                }
            }
            if r.chance(25) {
                let mut dl = 0;
                while dl == 0 {
                    dl = (r.next_u64() as u32) & DATA_LOSS;
                }
                faults |= dl;
            }
        }
        Knobs {
            seed,
            procs: r.range(2, 4) as usize,
            names: r.range(1, 2) as usize,
            nodes,
            majority,
            validity_ms,
            fencing,
            tracking: r.chance(90),
            noloop: r.chance(75),
            handover: [0, 1, 32, 128][r.below(4) as usize],
            faults,
            force: r.chance(30),
            steps: r.range(100, 400),
            max_ppm: 5000,
            max_delay_ms: validity_ms / 50,
            terms: r.chance(40),
            permits: r.chance(25),
            fair: r.chance(30),
            // Drawn last, so that the knobs drawn before keep their seeds.
            allowance_ms: [0, 0, 1, 5, validity_ms / 5][r.below(5) as usize],
            direct: r.chance(50),
            claims: r.chance(40),
        }
    }

    /// Applies `key=value,...` overrides (the format `Display` prints).
    pub(super) fn apply(&mut self, spec: &str) {
        for kv in spec.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let num = || -> u64 {
                let v = v.trim();
                match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => v.parse(),
                }
                .unwrap_or_else(|_| panic!("bad SIM_KNOBS value {kv}"))
            };
            match k.trim() {
                "procs" => self.procs = num() as usize,
                "names" => self.names = num() as usize,
                "nodes" => self.nodes = num() as usize,
                "majority" => self.majority = num() as usize,
                "validity" => self.validity_ms = num(),
                "fencing" => {
                    self.fencing = match v {
                        "script" => Fencing::InScript,
                        "majority" => Fencing::Majority,
                        _ => Fencing::Off,
                    }
                }
                "tracking" => self.tracking = num() != 0,
                "noloop" => self.noloop = num() != 0,
                "handover" => self.handover = num() as u32,
                "faults" => self.faults = num() as u32 & ALL_FAULTS,
                "force" => self.force = num() != 0,
                "steps" => self.steps = num(),
                "ppm" => self.max_ppm = num(),
                "delay" => self.max_delay_ms = num(),
                "terms" => self.terms = num() != 0,
                "permits" => self.permits = num() != 0,
                "fair" => self.fair = num() != 0,
                "allowance" => self.allowance_ms = num(),
                "direct" => self.direct = num() != 0,
                "claims" => self.claims = num() != 0,
                other => panic!("unknown SIM_KNOBS key {other}"),
            }
        }
    }
}

impl fmt::Display for Knobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fencing = match self.fencing {
            Fencing::Off => "off",
            Fencing::InScript => "script",
            Fencing::Majority => "majority",
        };
        write!(
            f,
            "procs={},names={},nodes={},majority={},validity={},fencing={fencing},tracking={},noloop={},handover={},faults={:#x},force={},steps={},ppm={},delay={},terms={},permits={},fair={},allowance={},direct={},claims={}",
            self.procs,
            self.names,
            self.nodes,
            self.majority,
            self.validity_ms,
            u8::from(self.tracking),
            u8::from(self.noloop),
            self.handover,
            self.faults,
            u8::from(self.force),
            self.steps,
            self.max_ppm,
            self.max_delay_ms,
            u8::from(self.terms),
            u8::from(self.permits),
            u8::from(self.fair),
            self.allowance_ms,
            u8::from(self.direct),
            u8::from(self.claims)
        )
    }
}

/// The outcome of one run: `Err` with the violation (panics included), and
/// the trace if asked for.
fn run_one(k: &Knobs, trace: bool) -> (Result<world::Stats, String>, Vec<String>) {
    let mut w = World::new(k, trace);
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run()));
    let res = match res {
        Ok(Ok(())) => Ok(world::Stats {
            passed_over: w.nodes.iter().map(|n| n.passed_over).sum(),
            ..w.stats.clone()
        }),
        Ok(Err(e)) => Err(e),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {msg}"))
        }
    };
    let lines = w.trace.take().map(Vec::from).unwrap_or_default();
    (res, lines)
}

/// A failure's kind: the first words of its message, up to a digit or ':',
/// so that shrinking keeps the same kind of failure.
fn kind_of(e: &str) -> String {
    let mut words = e.split_whitespace();
    let mut out = Vec::new();
    for w in words.by_ref() {
        if w.starts_with(['p', 'n']) && w.chars().nth(1).is_some_and(|c| c.is_ascii_digit())
            || w.starts_with("req")
        {
            continue;
        }
        out.push(w.trim_end_matches(':').to_owned());
        if out.len() == 3 {
            break;
        }
    }
    out.join(" ")
}

/// Runs `k` with panics kept quiet (shrinking runs many failing variants).
fn fails_like(k: &Knobs, kind: &str) -> bool {
    matches!(run_one(k, false).0, Err(e) if kind_of(&e) == kind)
}

/// Shrinks a failing run, deterministically: fewer processes and names,
/// fewer fault kinds, no forces, fewer steps, while it fails the same way.
fn shrink(k: &Knobs, kind: &str) -> Knobs {
    let mut best = k.clone();
    let mut tries = 0;
    loop {
        let mut cands = Vec::new();
        if best.procs > 1 {
            cands.push(Knobs {
                procs: best.procs - 1,
                ..best.clone()
            });
        }
        if best.names > 1 {
            cands.push(Knobs {
                names: 1,
                ..best.clone()
            });
        }
        for b in 0..8 {
            if best.faults & (1 << b) != 0 {
                cands.push(Knobs {
                    faults: best.faults & !(1 << b),
                    ..best.clone()
                });
            }
        }
        if best.force {
            cands.push(Knobs {
                force: false,
                ..best.clone()
            });
        }
        if best.terms {
            cands.push(Knobs {
                terms: false,
                ..best.clone()
            });
        }
        if best.permits {
            cands.push(Knobs {
                permits: false,
                ..best.clone()
            });
        }
        if best.fair {
            cands.push(Knobs {
                fair: false,
                ..best.clone()
            });
        }
        if best.claims {
            cands.push(Knobs {
                claims: false,
                ..best.clone()
            });
        }
        for s in [
            best.steps / 2,
            best.steps * 3 / 4,
            best.steps.saturating_sub(10),
            best.steps.saturating_sub(1),
        ] {
            if s >= 1 && s < best.steps {
                cands.push(Knobs {
                    steps: s,
                    ..best.clone()
                });
            }
        }
        let mut better = None;
        for c in cands {
            tries += 1;
            if fails_like(&c, kind) {
                better = Some(c);
                break;
            }
        }
        match better {
            Some(c) if tries < 400 => best = c,
            Some(c) => return c,
            None => return best,
        }
    }
}

/// The seed of schedule `i` of family `base`.
fn seed_of(base: u64, i: u64) -> u64 {
    Rng::new(base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).next_u64()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Reports a failure: shrinks it, prints the shrunk trace and how to replay
/// it, and panics.
fn report(k: &Knobs, err: &str) -> ! {
    let kind = kind_of(err);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let small = shrink(k, &kind);
    std::panic::set_hook(hook);
    let (res, trace) = run_one(&small, true);
    eprintln!(
        "--- trace of the shrunk run (last {} events) ---",
        trace.len()
    );
    for l in &trace {
        eprintln!("{l}");
    }
    eprintln!("--- end of trace ---");
    panic!(
        "simulation failed: {err}\n  replay: SIM_SEED={:#x} SIM_KNOBS=\"{}\"\n  shrunk: SIM_SEED={:#x} SIM_KNOBS=\"{}\" -> {:?}",
        k.seed, k, small.seed, small, res.err()
    );
}

/// Runs 300 schedules from `base` with `knobs` applied, and hands each
/// one's statistics to `take`; a run that breaks an invariant is reported
/// (shrunk, with its trace) and fails the test.
fn each_run(base: u64, knobs: &str, mut take: impl FnMut(&world::Stats)) {
    for i in 0..300 {
        let mut k = Knobs::from_seed(seed_of(base, i));
        k.apply(knobs);
        match run_one(&k, false).0 {
            Ok(st) => take(&st),
            Err(e) => report(&k, &e),
        }
    }
}

#[test]
fn sim_schedules() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let mut k = Knobs::from_seed(seed);
        if let Ok(spec) = std::env::var("SIM_KNOBS") {
            k.apply(&spec);
        }
        let (res, trace) = run_one(&k, true);
        for l in &trace {
            println!("{l}");
        }
        println!("seed {seed:#x} knobs {k}: {res:?}");
        if let Err(e) = res {
            report(&k, &e);
        }
        return;
    }
    let count = env_u64("SIM_SCHEDULES").unwrap_or(100_000);
    let base = env_u64("SIM_BASE").unwrap_or(0x5eed_0001);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let failed = AtomicBool::new(false);
    let steps = AtomicU64::new(0);
    let grants = AtomicU64::new(0);
    let excused = AtomicU64::new(0);
    let direct = AtomicU64::new(0);
    let engine_direct = AtomicU64::new(0);
    let chained = AtomicU64::new(0);
    let behind = AtomicU64::new(0);
    let handed = AtomicU64::new(0);
    let handed_here = AtomicU64::new(0);
    let passed_over = AtomicU64::new(0);
    let to_nobody = AtomicU64::new(0);
    let fenced = AtomicU64::new(0);
    let first: Mutex<Option<(u64, Knobs, String)>> = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (failed, first, steps, grants, excused) =
                (&failed, &first, &steps, &grants, &excused);
            let (direct, chained, behind, handed) = (&direct, &chained, &behind, &handed);
            let (passed_over, to_nobody, fenced) = (&passed_over, &to_nobody, &fenced);
            let (engine_direct, handed_here) = (&engine_direct, &handed_here);
            s.spawn(move || {
                let mut i = t;
                while i < count && !failed.load(Ordering::Relaxed) {
                    let k = Knobs::from_seed(seed_of(base, i));
                    match run_one(&k, false).0 {
                        Ok(st) => {
                            steps.fetch_add(st.steps, Ordering::Relaxed);
                            grants.fetch_add(st.grants, Ordering::Relaxed);
                            excused.fetch_add(st.excused, Ordering::Relaxed);
                            direct.fetch_add(st.direct, Ordering::Relaxed);
                            engine_direct.fetch_add(st.engine_direct, Ordering::Relaxed);
                            chained.fetch_add(st.chained, Ordering::Relaxed);
                            behind.fetch_add(st.behind, Ordering::Relaxed);
                            handed.fetch_add(st.handed, Ordering::Relaxed);
                            handed_here.fetch_add(st.handed_here, Ordering::Relaxed);
                            passed_over.fetch_add(st.passed_over, Ordering::Relaxed);
                            to_nobody.fetch_add(st.handed_to_nobody, Ordering::Relaxed);
                            fenced.fetch_add(st.handed_fenced, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            let mut f = first.lock().expect("not poisoned");
                            if f.as_ref().is_none_or(|(j, _, _)| i < *j) {
                                *f = Some((i, k, e));
                            }
                        }
                    }
                    i += threads;
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    if let Some((i, k, e)) = first.into_inner().expect("not poisoned") {
        eprintln!("schedule {i} of base {base:#x} failed");
        report(&k, &e);
    }
    println!(
        "{count} schedules, {} steps, {} grants, {} excused overlaps, {} commands on direct connections ({} of them retries made on the engine's thread), {} acquisitions right behind their own deletes, {} writes behind acquisitions on their direct connection, {} hand-overs told ({} to a token no longer used, {} with a fencing token, {} read beside a direct connection), {} claims passed over (nobody listening) in {secs:.1}s ({:.0} schedules/s, {threads} threads)",
        steps.into_inner(),
        grants.into_inner(),
        excused.into_inner(),
        direct.into_inner(),
        engine_direct.into_inner(),
        chained.into_inner(),
        behind.into_inner(),
        handed.into_inner(),
        to_nobody.into_inner(),
        fenced.into_inner(),
        handed_here.into_inner(),
        passed_over.into_inner(),
        count as f64 / secs
    );
}

/// Direct connections modelled: with them on, acquisitions and releases
/// take the second connection (and race the first's commands of other
/// keys), waiters' retries made on the engine's thread among them, and
/// every invariant still holds.
#[test]
fn sim_direct_connections() {
    let (mut sent, mut chained, mut behind, mut retries) = (0, 0, 0, 0);
    each_run(0xd1ec_7000, "direct=1", |st| {
        sent += st.direct;
        chained += st.chained;
        behind += st.behind;
        retries += st.engine_direct;
    });
    assert!(sent > 0, "no command took a direct connection");
    assert!(
        retries > 0,
        "no retry made on the engine's thread took a direct connection"
    );
    assert!(
        chained > 0,
        "no acquisition went right behind its own deletes"
    );
    assert!(
        behind > 0,
        "no write went behind an acquisition on its direct connection"
    );
}

/// Hand-over messages read beside the direct connections too (`listen`):
/// both copies are taken, each first in some runs, and every invariant
/// still holds.
#[test]
fn sim_handover_read_beside_direct_connections() {
    let (mut handed, mut here) = (0, 0);
    each_run(0x11_57e0, "direct=1,claims=1", |st| {
        handed += st.handed;
        here += st.handed_here;
    });
    assert!(
        here > 0,
        "no hand-over was taken as read beside a direct connection"
    );
    assert!(
        handed > here,
        "no hand-over was taken from the engine's connection"
    );
}

/// Runs that failed once, kept as regression tests: each must now pass.
#[test]
fn sim_regressions() {
    let cases = [
        // Found by `SIM_BASE=0x5eed11` (schedule 283078) in a run of a
        // million: a slow link made the head of the fair queue give up its
        // attempts and clean up their late "ours"; with NOLOOP its own
        // deletes woke nobody, and the other process stayed queued behind
        // it ("free and reachable for 3763.778ms, waiters still wait").
        (
            0x3347_9486_ff02_466b,
            "procs=2,names=1,nodes=3,majority=1,validity=1000,fencing=off,tracking=1,noloop=1,handover=0,faults=0x4,force=1,steps=302,ppm=5000,delay=20,terms=1,permits=0,fair=0,allowance=0",
        ),
        // Found by the same run (schedule 435449) once `valid_until` kept
        // only the holder's own margin: a key's acquisition went overdue,
        // the next extension round retook it with a shorter TTL (a holder
        // handed over with a shorter validity), and the acquisition's late
        // "ours" counted the key at its longer TTL, past what the retake
        // had set ("valid_until … is real 539.641ms, but its M-th key lives
        // only until 532.257ms"). The margins had hidden it before.
        (
            0x9235_ac9f_2615_2548,
            "procs=2,names=2,nodes=3,majority=2,validity=200,fencing=off,tracking=1,noloop=1,handover=128,faults=0xc,force=0,steps=298,ppm=5000,delay=4,terms=1,permits=0,fair=0,allowance=0",
        ),
        // Found by the same run (schedule 917424), and failing on the engine
        // before these changes too: a check read the key's longer TTL, the
        // next extension (a shorter one, for a holder handed the lock with a
        // shorter validity) was sent before the check's reply came, and the
        // reply counted the longer TTL past what the extension set, since the
        // extension did not shorten what the core believed then ("valid_until
        // … is real 2957.416ms, but its M-th key lives only until
        // 2830.208ms").
        (
            0x985b_9f43_e2bd_5fc2,
            "procs=2,names=1,nodes=1,majority=2,validity=1000,fencing=off,tracking=1,noloop=1,handover=1,faults=0x1,force=1,steps=123,ppm=5000,delay=20,terms=1,permits=1,fair=0,allowance=0",
        ),
        // Found by `SIM_BASE=0x6e03f` (schedule 529084) in a run of a
        // million, on the engine since `7e2565c`: a waiter's retry made on
        // the engine's thread went on the direct connection, and the core,
        // not told, took it to be in order with the engine's connection.
        // The key was handed to the waiter's claim while that retry was
        // out, the lock handed on locally to a holder with a longer
        // validity, and the extension for it ran before the retry, which
        // then set the key's TTL back to its own, shorter one; the
        // extension's reply counted the longer ("valid_until … is real
        // 2256.366ms, but its M-th key lives only until 1780.150ms"). Its
        // run passes with either half of the fix (the prompt round after the
        // retry's reply changes its timing); the table test
        // `a_key_whose_acquisition_is_out_elsewhere_is_not_extended_until_it_answers`
        // fails without either.
        (
            0xacc6_f5aa_75d5_0bb6,
            "procs=4,names=2,nodes=3,majority=1,validity=1000,fencing=off,tracking=1,noloop=0,handover=1,faults=0x0,force=0,steps=161,ppm=5000,delay=20,terms=1,permits=0,fair=0,allowance=0,direct=1,claims=1",
        ),
    ];
    for (seed, spec) in cases {
        let mut k = Knobs::from_seed(seed);
        k.apply(spec);
        if let Err(e) = run_one(&k, false).0 {
            report(&k, &e);
        }
    }
}

/// Prints a scenario's trace, kept when `SIM_TRACE` is set.
fn print_trace(w: &World) {
    for l in w.trace.iter().flatten() {
        println!("{l}");
    }
}

/// The head of a fair queue behind a link slower than its reply bound: its
/// acquisitions run at the server, but their replies come too late to win.
/// It must not keep its place at the head, keeping out a process that can
/// win (defect found by `SIM_BASE=0xd1e06`, seed `0x64154671d7c8cdfd`).
#[test]
fn sim_slow_head_of_the_queue() {
    let mut k = Knobs::from_seed(0x51de);
    k.apply("procs=2,names=1,nodes=1,majority=1,validity=1000,fencing=off,tracking=1,noloop=1,handover=0,faults=0,force=0,steps=1000000,ppm=0,delay=2,terms=0,permits=0,fair=1,allowance=0,direct=0");
    let mut w = World::new(&k, std::env::var("SIM_TRACE").is_ok());
    w.stop_workload = true;
    // Process 0's link is slower than the reply bound (160 ms) for good.
    w.conns[0][0].slow = 300 * MS;
    w.add_caller_id(0, 0, RequestKind::Wait, None, true)
        .expect("request");
    w.run_until(2_000 * MS).expect("runs");
    let asked = w.now;
    w.add_caller_id(1, 0, RequestKind::Wait, None, true)
        .expect("request");
    // The liveness invariant (a waiter of a process that reaches the node
    // waits no longer than its bound on a free name) fails the run.
    let run = w.run_until(asked + 20_000 * MS);
    print_trace(&w);
    run.expect("the process that can win is served");
    let held = |c: &process::Caller| matches!(c.stage, process::Stage::Held { .. });
    assert!(
        w.procs[1].callers.iter().any(held),
        "process 1 holds the name"
    );
}

/// A node that runs nothing for less than a place's life (stopped, or every
/// link to it frozen) while a holder loses its lock and three processes wait
/// in arrival order. When it runs again, the commands held up meanwhile run
/// one connection after another, the latest arrival's first: its first
/// script must not drop the places whose refreshes wait right behind it,
/// which let it pass everyone who came before (the real-server fair nemesis
/// found this as a node thawed from an 828 ms freeze). Forty stalls, 25 ms
/// apart in the places' refresh cycle, of the only node, and of two of three
/// nodes at once (`key_majority` 2); the fair-order check fails a run.
#[test]
fn sim_stalled_node_keeps_the_order() {
    for (nodes, stalled) in [
        ("nodes=1,majority=1", &[0][..]),
        ("nodes=3,majority=2", &[0, 1][..]),
    ] {
        let mut k = Knobs::from_seed(0x57a1);
        k.apply("procs=4,names=1,nodes=1,majority=1,validity=1000,fencing=off,tracking=1,noloop=1,handover=0,faults=0,force=0,steps=1000000,ppm=0,delay=2,terms=0,permits=0,fair=1,allowance=0,direct=0");
        k.apply(nodes);
        let (mut lost, mut unfair) = (0, Vec::new());
        for stall_at in (2_300..3_300).step_by(25) {
            let mut w = World::new(&k, std::env::var("SIM_TRACE").is_ok());
            w.stop_workload = true;
            // Process 0 holds the name until a stall costs it the lock.
            w.add_caller_id(0, 0, RequestKind::Wait, None, true)
                .expect("request");
            for p in 1..4 {
                w.run_until((100 + 700 * (p as u64 - 1)) * MS)
                    .expect("runs");
                w.add_caller_id(p, 0, RequestKind::Wait, None, false)
                    .expect("request");
            }
            w.run_until(stall_at * MS).expect("runs");
            for &node in stalled {
                w.stall(node, 900 * MS);
            }
            // The fair-order check fails the run.
            let run = w.run_until(stall_at * MS + 10_000 * MS);
            print_trace(&w);
            if let Err(e) = run {
                unfair.push(format!("{nodes}, stall at {stall_at} ms: {e}"));
                continue;
            }
            if w.stats.grants > 1 {
                lost += 1;
            }
        }
        println!(
            "{nodes}: the holder lost its lock and a waiter was served in {lost} of 40 stalls"
        );
        assert!(unfair.is_empty(), "{}", unfair.join("\n"));
        assert!(
            lost >= 20,
            "{nodes}: the holder lost its lock and a waiter was served in {lost} of 40 stalls only"
        );
    }
}

/// Defect 5's scenario: a holder that cannot reach one node (its key there
/// free) and two processes waiting. Counts the waiters' commands per second
/// of virtual time.
#[test]
fn sim_retry_storm() {
    // Two waiting processes, a holder that cannot reach node 2 (its key there
    // is free), over 20 s of virtual time; with NOLOOP and without (then a
    // process is told of its own writes too).
    for noloop in [true, false] {
        let rate = retry_storm(0x5707, noloop);
        println!("retry storm (noloop {noloop}): {rate:.1} commands/s from the two waiters");
        // What remains: the holder's extensions of keys 0 and 1 are writes,
        // so every round invalidates both waiters, once per key: the first
        // wakes an attempt (3 acquisitions, the delete of the free key 2),
        // the second may arrive while it is open and run it again. Waking on
        // the waiters' own or each other's writes of the free key (defect 5)
        // would make this a loop at network speed; the bound catches that.
        assert!(rate < 100.0, "retry storm: {rate:.1} commands/s");
    }
}

/// Returns the waiters' commands per virtual second.
fn retry_storm(seed: u64, noloop: bool) -> f64 {
    let mut k = Knobs::from_seed(seed);
    k.apply("procs=3,names=1,nodes=3,majority=2,validity=1000,fencing=off,tracking=1,noloop=1,handover=32,faults=0,force=0,steps=1000000,ppm=0,delay=2,terms=0,permits=0,fair=0");
    k.apply(if noloop { "noloop=1" } else { "noloop=0" });
    let mut w = World::new(&k, std::env::var("SIM_TRACE").is_ok());
    w.stop_workload = true;
    w.add_caller_id(0, 0, RequestKind::Wait, None, true)
        .expect("request");
    w.run_until(500 * MS).expect("holder acquires");
    // Process 0 loses node 2 for good, silently.
    w.conns[0][2].link = network::Link::Cut;
    w.add_caller_id(1, 0, RequestKind::Wait, None, false)
        .expect("request");
    w.add_caller_id(2, 0, RequestKind::Wait, None, false)
        .expect("request");
    // Let the key on node 2 expire and the pattern settle, then measure.
    w.run_until(3_000 * MS).expect("runs");
    let before = w.stats.cmds[1] + w.stats.cmds[2];
    w.run_until(23_000 * MS).expect("runs");
    let sent = w.stats.cmds[1] + w.stats.cmds[2] - before;
    print_trace(&w);
    sent as f64 / 20.0
}
