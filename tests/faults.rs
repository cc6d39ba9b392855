//! Safety under faults (issue #3): no two holders, no lost data, no stuck
//! waiters, under network, server and actor faults.
//!
//! - `nemesis_*`: a Jepsen-style workload (8 lockers × 2 workers hammering
//!   1–3 names) with a nemesis injecting faults on a random schedule from a
//!   fixed seed, and a checker over the recorded history (see
//!   `support::history`). `VALKEYLOCK_SEED` overrides the seed,
//!   `VALKEYLOCK_NEMESIS_SECS` the duration (default 20 s per setup).
//! - `nemesis_semaphore_*` (issue #13): the same workload and in-model
//!   faults on 1–2 semaphores of 3 permits (`acquire`, `acquire_with` a
//!   wait limit, `try_acquire`); the checker allows 3 holders per name and
//!   one per slot.
//! - `nemesis_election_*` (issue #14): 8 lockers campaigning in 1–2
//!   elections under the faults that keep the servers' data; never two
//!   leaders at once, terms increasing in grant order, and two observers
//!   per election, cut off by the faults too, that report every granted
//!   term in order.
//! - `nemesis_three_processes`: the same with lockers in three child
//!   processes (this binary re-run as workers), timestamps on
//!   `CLOCK_MONOTONIC`.
//! - `nemesis_out_of_model`: faults the safety rule cannot cover (a third
//!   party writes lock keys, a server restarts empty at once); overlaps they
//!   explain are reported with their length, anything else still fails.
//! - `scenario_*`: deterministic scenarios (a)–(e) of the issue, each
//!   measuring and printing its margins.
//! - `contention_without_faults` (`VALKEYLOCK_BASELINE=1`): the same workload
//!   without faults, as a baseline.
//!
//! A waiter counts as stuck when the lock was free (nobody else held it, no
//! fault or its aftermath in effect) for more than 3 × `key_validity` during
//! its wait, or when its `lock()` is still pending `END_GRACE` after the
//! workload stopped. A long wait while other lockers take turns is
//! starvation (there is no fairness across lockers): reported, not failed.
//! `VALKEYLOCK_HISTORY_OUT=<dir>` writes each run's history for analysis.
//! Results and their meaning: `docs/SAFETY.md`.
//!
//! Needs the `fault-injection` feature:
//! `cargo test --all-features --test faults -- --nocapture`.
#![allow(missing_docs)]

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::history::*;
use support::proxy::*;
use support::*;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use valkeylock::{
    Election, Error, Leader, Leadership, LockGuard, LockRequest, Locker, LockerOptions, LostReason,
    PermitGuard, ReadGuard, Semaphore, WriteGuard, MAX_READERS,
};

const VALIDITY: Duration = Duration::from_secs(1);
/// The default drift allowance for `VALIDITY`: 1 % + 2 ms.
const DRIFT: Duration = Duration::from_millis(12);
const DEFAULT_SEED: u64 = 0x5EED_0003;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The tests here measure timing: run them one at a time, each on its own
/// runtime, so one's load does not skew another's figures.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial<F: Future<Output = ()>>(f: F) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The lockers' defaults, whatever a run that failed midway left.
    FENCING.store(false, Ordering::SeqCst);
    FAIR.store(false, Ordering::SeqCst);
    HANDOVER.store(false, Ordering::SeqCst);
    DEDICATED.store(true, Ordering::SeqCst);
    init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f);
}

/// Whether the lockers of the current nemesis run use fencing tokens (runs
/// are serialised by `serial`).
static FENCING: AtomicBool = AtomicBool::new(false);

/// Whether they use fair queueing.
static FAIR: AtomicBool = AtomicBool::new(false);

/// Whether they hand released locks to the waiters of other lockers
/// (`handover`).
static HANDOVER: AtomicBool = AtomicBool::new(false);

/// Whether their engines run on threads of their own (the default), or on
/// the test's runtime (`dedicated_runtime` off).
static DEDICATED: AtomicBool = AtomicBool::new(true);

/// Fencing tokens seen by the current run: (name, acquired at, token).
static FENCE_LOG: Mutex<Vec<(String, u64, u64)>> = Mutex::new(Vec::new());

fn options(urls: Vec<String>, majority: usize, prefix: &str) -> LockerOptions {
    LockerOptions::new(urls)
        .with_key_majority(majority)
        .with_key_validity(VALIDITY)
        .with_key_prefix(prefix)
        .with_connect_timeout(ms(1000))
        .with_fencing(FENCING.load(Ordering::SeqCst))
        .with_fair_queueing(FAIR.load(Ordering::SeqCst))
        .with_handover(HANDOVER.load(Ordering::SeqCst))
        .with_dedicated_runtime(DEDICATED.load(Ordering::SeqCst))
}

async fn connect(urls: Vec<String>, majority: usize, prefix: &str) -> Locker {
    Locker::connect(options(urls, majority, prefix))
        .await
        .expect("connect")
}

/// [`connect`] for a child process of the multi-process run. The parent
/// starts its nemesis as soon as the children are spawned, so a child may
/// connect while every node is frozen or cut off: a connection error is
/// then the fault's doing, not a failure of the run (CI once saw a child's
/// three nodes all time out at start-up, on a loaded machine). It tries
/// again for up to 15 s, which the parent's wait for its children covers.
async fn connect_through_faults(urls: Vec<String>, majority: usize, prefix: &str) -> Locker {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match Locker::connect(options(urls.clone(), majority, prefix)).await {
            Ok(locker) => return locker,
            Err(e @ Error::Connection { .. }) if Instant::now() < deadline => {
                eprintln!("connect failed during the faults, trying again: {e}");
                sleep(ms(200)).await;
            }
            Err(e) => panic!("connect: {e:?}"),
        }
    }
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ===== the cluster: servers, and one proxy per (client group, node) =====

struct Cluster {
    servers: Vec<ValkeyServer>,
    /// `links[group][node]`: the proxy a group of lockers uses for a node.
    links: Vec<Vec<Proxy>>,
    majority: usize,
    prefix: String,
}

impl Cluster {
    async fn start(nodes: usize, groups: usize, majority: usize) -> Cluster {
        let servers: Vec<ValkeyServer> = (0..nodes).map(|_| ValkeyServer::start()).collect();
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let mut links = Vec::new();
        for _ in 0..groups {
            // Ranked like the servers, so that every group (and a locker
            // listing the servers directly) places each key on one server.
            links.push(Proxy::start_all(&ports).await);
        }
        Cluster {
            servers,
            links,
            majority,
            prefix: unique("vlf"),
        }
    }

    fn urls(&self, group: usize) -> Vec<String> {
        self.links[group].iter().map(Proxy::url).collect()
    }

    fn direct_urls(&self) -> Vec<String> {
        self.servers.iter().map(ValkeyServer::url).collect()
    }

    fn total(&self) -> usize {
        2 * self.majority - 1
    }

    fn key(&self, i: usize, name: &str) -> String {
        format!("{}:{i}:{name}", self.prefix)
    }

    /// The server holding key `i`, as the engine places it.
    fn node_of(&self, i: usize) -> usize {
        LockerOptions::new(self.direct_urls())
            .with_key_majority(self.majority)
            .node_of_key(i)
            .expect("valid options")
    }

    fn heal_all(&self) {
        for row in &self.links {
            for p in row {
                p.heal();
            }
        }
        for s in &self.servers {
            s.resume();
        }
    }

    /// Keys of our prefix still on the servers once every key has had the
    /// time to expire: a lock key within the validity, a fair queue's keys
    /// within another half of it (they expire half a place's life after
    /// their last deadline, so that a stall shorter than a place's life
    /// keeps them: docs/SAFETY.md, "Fair queueing", guarantee 3). Call it
    /// when the lockers are closed.
    async fn leftover_after_expiry(&self) -> Vec<String> {
        sleep(VALIDITY + ms(300)).await;
        let prefix = format!("{{{}:", self.prefix);
        let queue = |k: &String| {
            k.starts_with(&prefix) && [":q", ":qd", ":qt"].iter().any(|s| k.ends_with(s))
        };
        let (mut queues, mut left): (Vec<String>, Vec<String>) =
            self.leftover_keys().await.into_iter().partition(queue);
        if !queues.is_empty() {
            sleep(VALIDITY / 2).await;
            queues = self
                .leftover_keys()
                .await
                .into_iter()
                .filter(queue)
                .collect();
        }
        left.extend(queues);
        left
    }

    /// Keys of our prefix still on the servers (fair queues included).
    async fn leftover_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.servers {
            let queues = format!("{{{}:*", self.prefix);
            if let Ok(Resp::Array(Some(items))) = command(s.port, &["KEYS", &queues]).await {
                out.extend(items.iter().filter_map(Resp::text));
            }
            let pattern = format!("{}:*", self.prefix);
            if let Ok(Resp::Array(Some(items))) = command(s.port, &["KEYS", &pattern]).await {
                // Fencing counters and elections' logs never expire, by
                // design.
                let fence = format!("{}:fence:", self.prefix);
                let terms = format!("{}:terms:", self.prefix);
                out.extend(
                    items
                        .iter()
                        .filter_map(Resp::text)
                        .filter(|k| !k.starts_with(&fence) && !k.starts_with(&terms)),
                );
            }
        }
        out
    }
}

// ===== workers =====

/// What the workers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Locks (`lock`, `try_lock`): capacity 1 per name.
    Lock,
    /// Permits of semaphores of `permits` (`acquire`, `acquire_with` a
    /// wait limit, `try_acquire`): capacity `permits` per name, each permit
    /// the lock of one slot.
    Semaphore { permits: u32 },
    /// Leadership of elections (`campaign`, `try_campaign`): one leader per
    /// name, terms increasing, observers seeing every term.
    Election,
    /// Read-write locks (`read`, `write`, `try_read`, `try_write`): any
    /// number of readers or one writer per name, never both.
    RwLock,
}

impl Workload {
    /// The engine's lock name for a target of `name` (for a semaphore, one
    /// of its slots, drawn from `rng`).
    fn lock_name(self, name: &str, rng: &mut Rng) -> String {
        match self {
            Workload::Lock => name.to_owned(),
            Workload::Semaphore { permits } => {
                format!("{name}:permit:{}", rng.below(u64::from(permits)))
            }
            Workload::Election => format!("{name}:election"),
            // The engine's internal names (see `rwlock` in the engine).
            Workload::RwLock => {
                if rng.chance(0.5) {
                    format!("{name}\u{1f}w")
                } else {
                    format!("{name}\u{1f}r{}", rng.below(u64::from(MAX_READERS)))
                }
            }
        }
    }
}

/// A grant a worker holds: a lock, or a permit of a semaphore.
enum Held {
    Lock(LockGuard),
    Permit(PermitGuard),
    Leader(Leadership),
    Read(ReadGuard),
    Write(WriteGuard),
}

impl Held {
    /// The lock behind it (for a permit, its slot's).
    fn guard(&self) -> &LockGuard {
        match self {
            Held::Lock(g) => g,
            Held::Permit(p) => p,
            Held::Leader(l) => l,
            Held::Read(r) => r,
            Held::Write(w) => w,
        }
    }

    /// The name the history records it under: the lock's, or the
    /// semaphore's.
    fn name(&self) -> &str {
        match self {
            Held::Lock(g) => g.name(),
            Held::Permit(p) => p.name(),
            Held::Leader(l) => l.name(),
            Held::Read(r) => r.name(),
            Held::Write(w) => w.name(),
        }
    }

    fn slot(&self) -> Option<u32> {
        match self {
            Held::Lock(_) | Held::Leader(_) | Held::Write(_) => None,
            Held::Permit(p) => Some(p.slot()),
            Held::Read(r) => Some(r.slot()),
        }
    }

    async fn release(self) -> Result<(), Error> {
        match self {
            Held::Lock(g) => g.release().await,
            Held::Permit(p) => p.release().await,
            Held::Leader(l) => l.resign().await,
            Held::Read(r) => r.release().await,
            Held::Write(w) => w.release().await,
        }
    }
}

/// A holder the nemesis can aim at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    /// The holder's client group (its locker, and its proxies).
    group: usize,
    /// The engine's lock name (for a permit, its slot's).
    lock: String,
}

/// What each client currently holds, for the nemesis to aim at holders.
#[derive(Default)]
struct Holding {
    by_client: Mutex<HashMap<String, Target>>,
}

impl Holding {
    fn set(&self, client: &str, target: Target) {
        self.by_client
            .lock()
            .expect("holding")
            .insert(client.to_owned(), target);
    }
    fn clear(&self, client: &str) {
        self.by_client.lock().expect("holding").remove(client);
    }
    fn pick(&self, rng: &mut Rng) -> Option<Target> {
        let m = self.by_client.lock().expect("holding");
        let mut all: Vec<&Target> = m.values().collect();
        all.sort();
        if all.is_empty() {
            return None;
        }
        Some(all[rng.below(all.len() as u64) as usize].clone())
    }
}

/// The protected data: a counter per lock (for a semaphore, per slot),
/// updated read-modify-write only while `is_held()`. Two holders of one lock
/// or slot at once would lose updates.
#[derive(Default)]
struct Protected {
    value: Mutex<HashMap<String, u64>>,
    committed: AtomicU64,
}

#[derive(Clone)]
struct WorkerCtx {
    client: String,
    group: usize,
    locker: Locker,
    names: Arc<Vec<String>>,
    history: History,
    stop: Arc<AtomicBool>,
    holding: Arc<Holding>,
    data: Arc<Protected>,
    seed: u64,
    workload: Workload,
}

/// Once the workload stops (nobody holds anything for long any more), a
/// `lock()` still pending after this long is stuck: the lock is free and
/// every node reachable, so only zombie keys (at most one validity) and a
/// reconnect (backoff capped at 2 s) may stand in the way.
const END_GRACE: Duration = Duration::from_millis(3 * 1000 + 2500);

/// A `try_lock()` is one attempt: bounded by `try_next_after` per node (a
/// `try_acquire()`, one attempt per slot).
const TRY_BOUND: Duration = Duration::from_secs(5);

/// Runs an acquisition to completion, unless the workload stopped and it
/// is still pending `END_GRACE` later (`None`: stuck).
async fn acquire_until_stopped<T, F>(fut: F, stop: &AtomicBool) -> Option<Result<T, Error>>
where
    F: Future<Output = Result<T, Error>>,
{
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return Some(r),
            _ = sleep(ms(50)) => {
                if stop.load(Ordering::SeqCst) {
                    return timeout(END_GRACE, &mut fut).await.ok();
                }
            }
        }
    }
}

/// One acquisition of `ctx.names[i]`: waiting (within `limit`, if any) or a
/// single attempt.
async fn acquire_one(
    ctx: &WorkerCtx,
    semaphores: &[Semaphore],
    elections: &[Election],
    i: usize,
    waits: bool,
    writes: bool,
    limit: Option<Duration>,
) -> Result<Held, Error> {
    let name = &ctx.names[i];
    match (ctx.workload, waits) {
        (Workload::Lock, true) => ctx.locker.lock(name).await.map(Held::Lock),
        (Workload::Lock, false) => ctx.locker.try_lock(name).await.map(Held::Lock),
        (Workload::Semaphore { .. }, true) => match limit {
            Some(limit) => {
                semaphores[i]
                    .acquire_with(&LockRequest::new().wait(limit))
                    .await
            }
            None => semaphores[i].acquire().await,
        }
        .map(Held::Permit),
        (Workload::Semaphore { .. }, false) => semaphores[i].try_acquire().await.map(Held::Permit),
        (Workload::Election, true) => elections[i].campaign(&ctx.client).await.map(Held::Leader),
        (Workload::Election, false) => elections[i]
            .try_campaign(&ctx.client)
            .await
            .map(Held::Leader),
        (Workload::RwLock, waits) => {
            let rw = ctx.locker.rw_lock(name).expect("rw_lock");
            match (writes, waits) {
                (true, true) => rw.write().await.map(Held::Write),
                (true, false) => rw.try_write().await.map(Held::Write),
                (false, true) => rw.read().await.map(Held::Read),
                (false, false) => rw.try_read().await.map(Held::Read),
            }
        }
    }
}

async fn worker(ctx: WorkerCtx, stream: u64) {
    let mut rng = Rng::fork(ctx.seed, stream);
    let semaphores: Vec<Semaphore> = match ctx.workload {
        Workload::Semaphore { permits } => ctx
            .names
            .iter()
            .map(|n| ctx.locker.semaphore(n, permits).expect("semaphore"))
            .collect(),
        _ => Vec::new(),
    };
    let elections: Vec<Election> = match ctx.workload {
        Workload::Election => ctx
            .names
            .iter()
            .map(|n| ctx.locker.election(n).expect("election"))
            .collect(),
        _ => Vec::new(),
    };
    while !ctx.stop.load(Ordering::SeqCst) {
        let i = rng.below(ctx.names.len() as u64) as usize;
        let name = ctx.names[i].clone();
        let waits = !rng.chance(0.1);
        // Semaphores: a third of the waits have a limit (`acquire_with`).
        let limit = match ctx.workload {
            Workload::Lock | Workload::Election | Workload::RwLock => None,
            Workload::Semaphore { .. } => (waits && rng.chance(0.33)).then(|| rng.ms(200, 3000)),
        };
        // Read-write locks: a quarter of the acquisitions write.
        let writes = ctx.workload == Workload::RwLock && rng.chance(0.25);
        let started = mono_ns();
        let res = if waits {
            acquire_until_stopped(
                acquire_one(&ctx, &semaphores, &elections, i, true, writes, limit),
                &ctx.stop,
            )
            .await
        } else {
            timeout(
                TRY_BOUND,
                acquire_one(&ctx, &semaphores, &elections, i, false, writes, None),
            )
            .await
            .ok()
        };
        let ended = mono_ns();
        let outcome = match &res {
            None => "timeout".to_owned(),
            Some(Ok(_)) => "ok".to_owned(),
            Some(Err(Error::NotLocked { .. })) => "not_locked".to_owned(),
            Some(Err(Error::Timeout { .. })) => "wait_limit".to_owned(),
            Some(Err(Error::Closed)) => "closed".to_owned(),
            Some(Err(e)) => format!("error:{}", e.to_string().replace(' ', "_")),
        };
        ctx.history.wait(WaitRecord {
            client: ctx.client.clone(),
            name: name.clone(),
            started,
            ended,
            outcome,
            waits,
        });
        if let Some(Ok(held)) = res {
            hold(&ctx, &mut rng, held).await;
        }
        sleep(rng.ms(0, 20)).await;
    }
}

/// Holds `held` for a random time, acting on the protected data every few
/// ms while `is_held()`, and records the grant.
async fn hold(ctx: &WorkerCtx, rng: &mut Rng, held: Held) {
    let acquired = mono_ns();
    let guard = held.guard();
    let (name, slot) = (held.name().to_owned(), held.slot());
    // The engine's lock: the name itself, or the permit's slot.
    let lock = guard.name().to_owned();
    if guard.fencing_token() > 0 {
        FENCE_LOG
            .lock()
            .expect("fence log")
            .push((lock.clone(), acquired, guard.fencing_token()));
    }
    let mut last_held = acquired;
    let mut valid_until = guard.valid_until().map(mono_of);
    ctx.holding.set(
        &ctx.client,
        Target {
            group: ctx.group,
            lock: lock.clone(),
        },
    );
    // Mostly short holds (many hand-overs), some across extensions. Leaders
    // lead longer: terms come a few per second, so that an observer cut off
    // for the longest fault (2.2 s) misses fewer than the log keeps (64).
    let hold_for = match (ctx.workload, rng.weighted(&[80, 17, 3])) {
        (Workload::Election, 0) => rng.ms(50, 200),
        (_, 0) => rng.ms(1, 30),
        (_, 1) => rng.ms(30, 500),
        _ => rng.ms(600, 2500),
    };
    let until = Instant::now() + hold_for;
    let (told, reason) = loop {
        tokio::select! {
            biased;
            r = guard.lost() => break (mono_ns(), r.as_str().to_owned()),
            _ = sleep(ms(3)) => {}
        }
        if !guard.is_held() {
            let why = guard
                .lost_reason()
                .map_or("validity_passed".to_owned(), |r| r.as_str().to_owned());
            break (mono_ns(), why);
        }
        // The critical section: read, yield, write if still held.
        let v = *ctx
            .data
            .value
            .lock()
            .expect("data")
            .entry(lock.clone())
            .or_insert(0);
        tokio::task::yield_now().await;
        if guard.is_held() {
            if let Some(v) = guard.valid_until() {
                valid_until = Some(mono_of(v));
            }
            ctx.data
                .value
                .lock()
                .expect("data")
                .insert(lock.clone(), v + 1);
            ctx.data.committed.fetch_add(1, Ordering::SeqCst);
            last_held = mono_ns();
        }
        if Instant::now() >= until || ctx.stop.load(Ordering::SeqCst) {
            break (mono_ns(), "released".to_owned());
        }
    };
    ctx.holding.clear(&ctx.client);
    if reason == "released" {
        let t = Instant::now();
        if timeout(Duration::from_secs(5), held.release())
            .await
            .is_err()
        {
            ctx.history.wait(WaitRecord {
                client: ctx.client.clone(),
                name: name.clone(),
                started: mono_of(t),
                ended: mono_ns(),
                outcome: "release_hung".to_owned(),
                waits: false,
            });
        }
    } else {
        drop(held);
    }
    ctx.history.grant(GrantRecord {
        client: ctx.client.clone(),
        name,
        acquired,
        last_held,
        told,
        valid_until,
        reason,
        slot,
    });
}

// ===== the nemesis =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Silent partition of one client group (preferably a holder's) from
    /// every node.
    FreezeHolder,
    /// Silent partition of one node from every client.
    FreezeNode,
    /// One client-to-node link frozen.
    FreezeLink,
    /// A holder's requests pass, its replies are held back.
    FreezeReplies,
    /// 20–150 ms each way on one node's links.
    Delay,
    /// Every connection to one node (or of one client group) closed.
    DropConns,
    /// `CLIENT KILL TYPE normal` on one node.
    ClientKill,
    /// SIGSTOP … SIGCONT of one node.
    Pause,
    /// `DEBUG SLEEP` on one node.
    DebugSleep,
    /// kill -9, wait longer than the validity, restart empty.
    KillRestartDelayed,
    /// kill -9 and restart empty at once (outside the model).
    RestartNow,
    /// `Faults::kill_node` on one locker.
    KillNodeActor,
    /// `Faults::kill_lock` on one locker (a holder's, when there is one).
    KillLockActor,
    /// A third party deletes one key of a lock (outside the model).
    DelKey,
    /// A third party overwrites one key of a lock (outside the model).
    Overwrite,
    /// `FLUSHALL` on one node (outside the model).
    FlushAll,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::FreezeHolder => "freeze_client",
            Fault::FreezeNode => "freeze_node",
            Fault::FreezeLink => "freeze_link",
            Fault::FreezeReplies => "freeze_replies",
            Fault::Delay => "delay",
            Fault::DropConns => "drop_conns",
            Fault::ClientKill => "client_kill",
            Fault::Pause => "sigstop",
            Fault::DebugSleep => "debug_sleep",
            Fault::KillRestartDelayed => "restart_delayed",
            Fault::RestartNow => "restart_now",
            Fault::KillNodeActor => "kill_node_actor",
            Fault::KillLockActor => "kill_lock_actor",
            Fault::DelKey => "del_key",
            Fault::Overwrite => "overwrite_key",
            Fault::FlushAll => "flushall",
        }
    }

    fn out_of_model(self) -> bool {
        matches!(
            self,
            Fault::RestartNow | Fault::DelKey | Fault::Overwrite | Fault::FlushAll
        )
    }
}

const NET_FAULTS: &[(Fault, u32)] = &[
    (Fault::FreezeHolder, 4),
    (Fault::FreezeNode, 2),
    (Fault::FreezeLink, 2),
    (Fault::FreezeReplies, 2),
    (Fault::Delay, 2),
    (Fault::DropConns, 3),
];
const SERVER_FAULTS: &[(Fault, u32)] = &[
    (Fault::ClientKill, 2),
    (Fault::Pause, 2),
    (Fault::DebugSleep, 1),
    (Fault::KillRestartDelayed, 1),
];
const ACTOR_FAULTS: &[(Fault, u32)] = &[(Fault::KillNodeActor, 2), (Fault::KillLockActor, 2)];
const OUT_OF_MODEL_FAULTS: &[(Fault, u32)] = &[
    (Fault::RestartNow, 1),
    (Fault::DelKey, 1),
    (Fault::Overwrite, 1),
    (Fault::FlushAll, 1),
];

struct NemesisCtx<'a> {
    kinds: Vec<(Fault, u32)>,
    lockers: &'a [Locker],
    holding: &'a Holding,
    names: &'a [String],
    history: &'a History,
    /// What the names are: for a semaphore, faults aimed at a name hit one
    /// of its slots.
    workload: Workload,
}

async fn inject(cl: &mut Cluster, ctx: &NemesisCtx<'_>, rng: &mut Rng) {
    let weights: Vec<u32> = ctx.kinds.iter().map(|k| k.1).collect();
    let kind = ctx.kinds[rng.weighted(&weights)].0;
    let nodes = cl.servers.len();
    let holder = if rng.chance(0.75) {
        ctx.holding.pick(rng)
    } else {
        None
    };
    let group = holder
        .as_ref()
        .map_or_else(|| rng.below(cl.links.len() as u64) as usize, |h| h.group);
    // The engine's lock to aim at: the holder's, or one of a random name.
    let lock = holder.map_or_else(
        || {
            let name = &ctx.names[rng.below(ctx.names.len() as u64) as usize];
            ctx.workload.lock_name(name, rng)
        },
        |h| h.lock,
    );
    let node = rng.below(nodes as u64) as usize;
    let dur = rng.ms(200, 2200);
    // The links of every group to a node heal one after another, from a
    // group the fault's duration picks (no new draw: the schedules of the
    // seeds stay as they were), so that no group's held-up commands always
    // reach the server first.
    let groups = cl.links.len();
    let first = dur.as_millis() as usize % groups;
    let heal_node = |cl: &Cluster| {
        for g in (first..groups).chain(0..first) {
            cl.links[g][node].heal();
        }
    };
    let injected = mono_ns();
    let mut fault_name = "*".to_owned();
    let target = match kind {
        Fault::FreezeHolder => {
            cl.links[group].iter().for_each(Proxy::freeze);
            sleep(dur).await;
            cl.links[group].iter().for_each(Proxy::heal);
            format!("group{group}/{}ms", dur.as_millis())
        }
        Fault::FreezeNode => {
            cl.links.iter().for_each(|row| row[node].freeze());
            sleep(dur).await;
            heal_node(cl);
            format!("node{node}/{}ms", dur.as_millis())
        }
        Fault::FreezeLink => {
            cl.links[group][node].freeze();
            sleep(dur).await;
            cl.links[group][node].heal();
            format!("group{group}-node{node}/{}ms", dur.as_millis())
        }
        Fault::FreezeReplies => {
            cl.links[group].iter().for_each(Proxy::freeze_replies);
            sleep(dur).await;
            cl.links[group].iter().for_each(Proxy::heal);
            format!("group{group}/{}ms", dur.as_millis())
        }
        Fault::Delay => {
            let d = rng.ms(20, 150);
            cl.links.iter().for_each(|row| row[node].delay(d));
            sleep(dur).await;
            heal_node(cl);
            format!("node{node}/{}ms/{}ms", d.as_millis(), dur.as_millis())
        }
        Fault::DropConns => {
            if rng.chance(0.5) {
                let n: usize = cl.links.iter().map(|row| row[node].drop_all()).sum();
                format!("node{node}/{n}conns")
            } else {
                let n: usize = cl.links[group].iter().map(Proxy::drop_all).sum();
                format!("group{group}/{n}conns")
            }
        }
        Fault::ClientKill => {
            let r = command(cl.servers[node].port, &["CLIENT", "KILL", "TYPE", "normal"]).await;
            format!(
                "node{node}/{}",
                r.ok().and_then(|r| r.text()).unwrap_or_default()
            )
        }
        Fault::Pause => {
            cl.servers[node].pause();
            sleep(dur).await;
            cl.servers[node].resume();
            format!("node{node}/{}ms", dur.as_millis())
        }
        Fault::DebugSleep => {
            let secs = format!("{:.3}", dur.as_secs_f64());
            let mut c = RawConn::connect(cl.servers[node].port, &[])
                .await
                .expect("admin connection");
            let r = c
                .cmd_bytes(
                    &[b"DEBUG", b"SLEEP", secs.as_bytes()],
                    dur + Duration::from_secs(5),
                )
                .await;
            assert!(r.is_ok(), "DEBUG SLEEP: {r:?}");
            format!("node{node}/{}ms", dur.as_millis())
        }
        Fault::KillRestartDelayed => {
            block(|| cl.servers[node].kill());
            let down = VALIDITY + rng.ms(200, 800);
            sleep(down).await;
            block(|| cl.servers[node].restart());
            format!("node{node}/down{}ms", down.as_millis())
        }
        Fault::RestartNow => {
            block(|| cl.servers[node].restart());
            format!("node{node}")
        }
        Fault::KillNodeActor => {
            let ok = ctx.lockers[group].faults().kill_node(node);
            format!("locker{group}-node{node}/{ok}")
        }
        Fault::KillLockActor => {
            let ok = ctx.lockers[group].faults().kill_lock(&lock);
            fault_name = lock.clone();
            format!("locker{group}/{ok}")
        }
        Fault::DelKey | Fault::Overwrite => {
            let i = rng.below(cl.total() as u64) as usize;
            let key = cl.key(i, &lock);
            let port = cl.servers[cl.node_of(i)].port;
            let validity = VALIDITY.as_millis().to_string();
            let r = if kind == Fault::DelKey {
                command(port, &["DEL", &key]).await
            } else {
                command(port, &["SET", &key, "intruder", "PX", &validity]).await
            };
            fault_name = lock.clone();
            format!(
                "key{i}/{}",
                r.ok().and_then(|r| r.text()).unwrap_or_default()
            )
        }
        Fault::FlushAll => {
            let _ = command(cl.servers[node].port, &["FLUSHALL"]).await;
            format!("node{node}")
        }
    };
    ctx.history.fault(FaultRecord {
        kind: kind.label().to_owned(),
        target,
        injected,
        healed: mono_ns(),
        name: fault_name,
        out_of_model: kind.out_of_model(),
    });
}

async fn run_nemesis(cl: &mut Cluster, ctx: &NemesisCtx<'_>, seed: u64, dur: Duration) {
    let mut rng = Rng::fork(seed, 0xFA17);
    let end = Instant::now() + dur;
    sleep(ms(300)).await;
    if ctx.kinds.is_empty() {
        sleep_until(end).await;
    }
    while Instant::now() < end {
        inject(cl, ctx, &mut rng).await;
        sleep(rng.ms(100, 800)).await;
    }
    cl.heal_all();
}

// ===== in-process nemesis runs =====

struct Setup {
    label: &'static str,
    nodes: usize,
    majority: usize,
    lockers: usize,
    workers_per_locker: usize,
    kinds: Vec<(Fault, u32)>,
    default_secs: f64,
    /// Lockers use fencing tokens; the run checks they increase per name in
    /// grant order.
    fencing: bool,
    /// Lockers use fair queueing; the run checks no waiter was starved by
    /// waiters that came after it.
    fair: bool,
    /// Lockers hand released locks to the waiters of other lockers.
    handover: bool,
    /// Lockers run their engines on threads of their own (the default);
    /// false: on the test's runtime, beside the workers' tasks.
    dedicated_runtime: bool,
    workload: Workload,
}

/// The lock nemesis: eight lockers of two workers each, every in-model
/// fault, default options (no fencing, no fair queueing, engines on threads
/// of their own).
fn lock_nemesis(label: &'static str, nodes: usize, majority: usize, default_secs: f64) -> Setup {
    Setup {
        label,
        nodes,
        majority,
        lockers: 8,
        workers_per_locker: 2,
        kinds: in_model_faults(),
        default_secs,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::Lock,
    }
}

/// Every fault within the model: network, server (restarts delayed past
/// the validity) and actor faults.
fn in_model_faults() -> Vec<(Fault, u32)> {
    [NET_FAULTS, SERVER_FAULTS, ACTOR_FAULTS].concat()
}

/// The bounds the checker applies (see `support::history`).
fn report(label: &str, seed: u64, h: &History) -> Report {
    let excuse = VALIDITY + Duration::from_millis(2500);
    let aftermath = VALIDITY + Duration::from_millis(2500);
    let stuck_bound = VALIDITY * 3;
    Report::build(label, seed, h, excuse, aftermath, stuck_bound, VALIDITY)
}

async fn nemesis_in_process(setup: Setup) {
    let seed = seed_from_env(DEFAULT_SEED);
    let dur = nemesis_duration(setup.default_secs);
    let out_of_model = setup.kinds.iter().any(|k| k.0.out_of_model());
    eprintln!(
        "[{}] seed {seed:#x} (VALKEYLOCK_SEED), {:?} (VALKEYLOCK_NEMESIS_SECS)",
        setup.label, dur
    );
    FENCING.store(setup.fencing, Ordering::SeqCst);
    FAIR.store(setup.fair, Ordering::SeqCst);
    HANDOVER.store(setup.handover, Ordering::SeqCst);
    DEDICATED.store(setup.dedicated_runtime, Ordering::SeqCst);
    FENCE_LOG.lock().expect("fence log").clear();
    let mut cl = Cluster::start(setup.nodes, setup.lockers, setup.majority).await;
    let mut rng = Rng::fork(seed, 1);
    let base = unique("n");
    // 1–3 locks, or 1–2 semaphores.
    let count = match setup.workload {
        Workload::Lock => 1 + rng.below(3),
        Workload::Semaphore { .. } | Workload::Election | Workload::RwLock => 1 + rng.below(2),
    };
    let names: Vec<String> = (0..count).map(|i| format!("{base}-{i}")).collect();
    let names = Arc::new(names);
    let history = History::new();
    if let Workload::Semaphore { permits } = setup.workload {
        for n in names.iter() {
            history.set_capacity(n, permits as usize);
        }
    }
    if setup.workload == Workload::RwLock {
        // Readers share: the generic check counts no more holders than the
        // slots (and one per slot); `check_rw` keeps writers alone.
        for n in names.iter() {
            history.set_capacity(n, MAX_READERS as usize + 1);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let holding = Arc::new(Holding::default());
    let data = Arc::new(Protected::default());
    let mut lockers = Vec::new();
    for l in 0..setup.lockers {
        lockers.push(connect(cl.urls(l), setup.majority, &cl.prefix.clone()).await);
    }
    // Elections: two observers of each, in lockers 0 and 1 (their
    // connections go through proxies the nemesis cuts too).
    let observers: Vec<Observed> = if setup.workload == Workload::Election {
        names
            .iter()
            .flat_map(|name| {
                lockers[..2].iter().enumerate().map(move |(l, locker)| {
                    let observer = locker
                        .election(name)
                        .expect("election")
                        .observe()
                        .expect("observe");
                    Observed::start(format!("l{l}:{name}"), name, observer)
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    if !observers.is_empty() {
        // Their first looks (a round trip each) come before the first term:
        // every granted term is then one they must report.
        sleep(ms(500)).await;
    }
    let mut tasks = Vec::new();
    for (l, locker) in lockers.iter().enumerate() {
        for w in 0..setup.workers_per_locker {
            let ctx = WorkerCtx {
                client: format!("l{l}w{w}"),
                group: l,
                locker: locker.clone(),
                names: names.clone(),
                history: history.clone(),
                stop: stop.clone(),
                holding: holding.clone(),
                data: data.clone(),
                seed,
                workload: setup.workload,
            };
            tasks.push(tokio::spawn(worker(ctx, (l * 16 + w) as u64 + 100)));
        }
    }
    let nctx = NemesisCtx {
        kinds: setup.kinds.clone(),
        lockers: &lockers,
        holding: &holding,
        names: &names,
        history: &history,
        workload: setup.workload,
    };
    let started = Instant::now();
    run_nemesis(&mut cl, &nctx, seed, dur).await;
    stop.store(true, Ordering::SeqCst);
    let mut hung = 0;
    for t in tasks {
        if timeout(END_GRACE + Duration::from_secs(10), t)
            .await
            .is_err()
        {
            hung += 1;
        }
    }
    let ran = started.elapsed();
    let observed = check_observers(observers, seed).await;
    for l in &lockers {
        timeout(Duration::from_secs(5), l.close())
            .await
            .expect("close() hung");
    }
    // Keys left by killed actors or unreleasable grants expire within the
    // validity; nothing may outlive it (a fair queue's keys, another half).
    let leftover = cl.leftover_after_expiry().await;
    let r = report(setup.label, seed, &history);
    eprintln!("{}", r.summary());
    Report::dump(
        &history,
        &format!("{}-{seed:#x}.txt", setup.label.replace([' ', ','], "_")),
    );
    if setup.workload == Workload::RwLock {
        check_rw(&history, seed, setup.label);
    }
    let values: u64 = data.value.lock().expect("data").values().sum();
    let committed = data.committed.load(Ordering::SeqCst);
    let errors: Vec<WaitRecord> = history
        .waits()
        .into_iter()
        .filter(|w| !matches!(w.outcome.as_str(), "ok" | "not_locked" | "wait_limit"))
        .collect();
    let wait_limits = history
        .waits()
        .iter()
        .filter(|w| w.outcome == "wait_limit")
        .count();
    eprintln!(
        "[{}] ran {ran:?}; protected updates {committed}, counters sum {values}; leftover keys {}; unexpected call outcomes {}",
        setup.label,
        leftover.len(),
        errors.len()
    );
    eprintln!(
        "[{}] {:.1} grants/s; most holders at once {:?}; waits ended by their limit {wait_limits}",
        setup.label,
        r.grants as f64 / ran.as_secs_f64(),
        r.most_holders
    );
    assert_eq!(hung, 0, "{hung} workers hung (seed {seed:#x})");
    if out_of_model {
        // A third party writing lock keys breaks exclusion by construction;
        // what matters is how long, reported by the checker as "excused".
        eprintln!(
            "[{}] protected updates lost to out-of-model faults: {}",
            setup.label,
            committed - values
        );
    } else {
        assert_eq!(
            values, committed,
            "lost updates of the protected data (seed {seed:#x})"
        );
    }
    assert!(
        leftover.is_empty(),
        "keys outlived their validity: {leftover:?}"
    );
    assert!(errors.is_empty(), "unexpected outcomes: {errors:?}");
    assert!(
        r.grants >= 20,
        "too few grants to mean anything: {}",
        r.grants
    );
    if let Some((terms, observers)) = observed {
        eprintln!(
            "[{}] observers: {observers}, each saw every granted term of its election, in order ({terms} term checks)",
            setup.label
        );
    }
    if setup.fencing || setup.workload == Workload::Election {
        let mut log = FENCE_LOG.lock().expect("fence log").clone();
        log.sort_by_key(|(name, acquired, _)| (name.clone(), *acquired));
        let checked = log.len();
        for w in log.windows(2) {
            if w[0].0 == w[1].0 {
                assert!(
                    w[1].2 > w[0].2,
                    "fencing token did not increase in grant order: {:?} then {:?} (seed {seed:#x})",
                    w[0],
                    w[1]
                );
            }
        }
        eprintln!(
            "[{}] fencing tokens checked in grant order: {checked}, all increasing",
            setup.label
        );
        assert!(checked >= 20, "too few fenced grants: {checked}");
    }
    FENCING.store(false, Ordering::SeqCst);
    FAIR.store(false, Ordering::SeqCst);
    HANDOVER.store(false, Ordering::SeqCst);
    DEDICATED.store(true, Ordering::SeqCst);
    r.assert_ok();
    if setup.fair {
        assert_eq!(
            r.overtaken_starved, 0,
            "fair queueing: waiters starved by later arrivals (seed {seed:#x})"
        );
    }
    if let Workload::Semaphore { permits } = setup.workload {
        // The workload must have filled the semaphore, or the capacity
        // check above checked nothing.
        let most = r.most_holders.values().copied().max().unwrap_or(0);
        assert_eq!(
            most, permits as usize,
            "the semaphore was never full (seed {seed:#x})"
        );
    }
}

/// Read-write exclusion over the recorded grants: a writer's grant overlaps
/// no other grant of its name (reader or writer), by the told ends and by
/// the acted ends. Readers are one client for the check, so readers
/// sharing is no overlap; the generic checker (capacity `MAX_READERS + 1`,
/// one holder per slot) runs too. Writes are recorded without a slot.
fn check_rw(history: &History, seed: u64, label: &str) {
    let grants: Vec<GrantRecord> = history
        .grants()
        .into_iter()
        .map(|g| match g.slot {
            Some(_) => GrantRecord {
                client: "readers".to_owned(),
                ..g
            },
            None => g,
        })
        .collect();
    let writes = grants.iter().filter(|g| g.slot.is_none()).count();
    let reads = grants.len() - writes;
    let told = overlaps(&grants, &[], Duration::ZERO, |_| 1, |g| g.told);
    let acted = overlaps(&grants, &[], Duration::ZERO, |_| 1, |g| g.last_held);
    eprintln!(
        "[{label}] read-write: {reads} read grants, {writes} write grants; a writer beside anyone: {} (told ends), {} (acted ends)",
        told.len(),
        acted.len()
    );
    assert!(
        told.is_empty() && acted.is_empty(),
        "a writer beside another holder (seed {seed:#x}): {told:#?} {acted:#?}"
    );
    assert!(
        writes >= 5 && reads >= 5,
        "too few reads or writes to mean anything"
    );
}

/// One observer of an election during a nemesis run: what it reported.
struct Observed {
    label: String,
    name: String,
    seen: Arc<Mutex<Vec<Leader>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observed {
    fn start(label: String, name: &str, mut observer: valkeylock::LeaderObserver) -> Observed {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok(leader) = observer.next().await {
                    seen.lock().expect("seen").push(leader);
                }
            }
        });
        Observed {
            label,
            name: name.to_owned(),
            seen,
            task,
        }
    }

    fn terms(&self) -> Vec<u64> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .map(|l| l.term)
            .collect()
    }
}

/// Once the workload stopped: every observer catches up with the last
/// granted term of its election (within 15 s), reported its terms in
/// strictly increasing order, and missed none of the granted terms (the
/// fence log's: every term whose `campaign` returned). `None` without
/// observers; else the granted terms checked and the observers.
async fn check_observers(observers: Vec<Observed>, seed: u64) -> Option<(usize, usize)> {
    if observers.is_empty() {
        return None;
    }
    let granted = |name: &str| -> Vec<u64> {
        let lock = format!("{name}:election");
        let mut terms: Vec<u64> = FENCE_LOG
            .lock()
            .expect("fence log")
            .iter()
            .filter(|(l, _, _)| *l == lock)
            .map(|(_, _, t)| *t)
            .collect();
        terms.sort_unstable();
        terms
    };
    let mut checked = 0;
    for o in &observers {
        let want = granted(&o.name);
        let last = want.last().copied().unwrap_or(0);
        let caught_up = eventually(Duration::from_secs(15), || async {
            o.terms().last().copied().unwrap_or(0) >= last
        })
        .await;
        let terms = o.terms();
        assert!(
            caught_up,
            "observer {} did not reach term {last}: saw {terms:?} (seed {seed:#x})",
            o.label
        );
        assert!(
            terms.windows(2).all(|w| w[0] < w[1]),
            "observer {} reported terms out of order: {terms:?} (seed {seed:#x})",
            o.label
        );
        let missing: Vec<u64> = want
            .iter()
            .filter(|t| terms.binary_search(t).is_err())
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "observer {} missed granted terms {missing:?} (seed {seed:#x})",
            o.label
        );
        checked += want.len();
        o.task.abort();
    }
    Some((checked, observers.len()))
}

/// Leader election under the nemesis: network, actor and server faults
/// that keep the data (an instance restarted empty loses the fencing
/// counter, and with it the terms: documented as outside the guarantee).
/// Never two leaders at once, terms strictly increasing in grant order,
/// and two observers per election (cut off by the faults like everyone)
/// that report every granted term, in order, each once.
fn election_faults() -> Vec<(Fault, u32)> {
    let kept: Vec<(Fault, u32)> = SERVER_FAULTS
        .iter()
        .copied()
        .filter(|(f, _)| *f != Fault::KillRestartDelayed)
        .collect();
    [NET_FAULTS, &kept, ACTOR_FAULTS].concat()
}

#[test]
fn nemesis_election_one_instance() {
    serial(nemesis_in_process(Setup {
        label: "election, 1 instance, key_majority 1",
        nodes: 1,
        majority: 1,
        lockers: 8,
        workers_per_locker: 1,
        kinds: election_faults(),
        default_secs: 12.0,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::Election,
    }));
}

#[test]
fn nemesis_election_three_instances() {
    serial(nemesis_in_process(Setup {
        label: "election, 3 instances, key_majority 2",
        nodes: 3,
        majority: 2,
        lockers: 8,
        workers_per_locker: 1,
        kinds: election_faults(),
        default_secs: 12.0,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::Election,
    }));
}

/// Read-write locks under the in-model faults: 8 lockers × 2 workers
/// reading (three quarters) and writing 1–2 names. Never a writer beside a
/// reader or another writer, one reader per slot, no lost update, no stuck
/// waiter.
#[test]
fn nemesis_rwlock_one_instance() {
    serial(nemesis_in_process(Setup {
        label: "read-write lock, 1 instance, key_majority 1",
        nodes: 1,
        majority: 1,
        lockers: 8,
        workers_per_locker: 2,
        kinds: in_model_faults(),
        default_secs: 12.0,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::RwLock,
    }));
}

#[test]
fn nemesis_rwlock_three_instances() {
    serial(nemesis_in_process(Setup {
        label: "read-write lock, 3 instances, key_majority 2",
        nodes: 3,
        majority: 2,
        lockers: 8,
        workers_per_locker: 2,
        kinds: in_model_faults(),
        default_secs: 12.0,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::RwLock,
    }));
}

/// Fencing tokens under the nemesis: three instances, network and actor
/// faults (server restarts are left out: an instance that restarts empty
/// loses its counter, which fencing documents as out of its guarantee).
#[test]
fn nemesis_fencing_three_instances() {
    serial(nemesis_in_process(Setup {
        label: "3 instances, key_majority 2, fencing",
        nodes: 3,
        majority: 2,
        lockers: 8,
        workers_per_locker: 2,
        kinds: [NET_FAULTS, ACTOR_FAULTS].concat(),
        default_secs: 12.0,
        fencing: true,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::Lock,
    }));
}

#[test]
fn nemesis_one_instance() {
    serial(nemesis_in_process(lock_nemesis(
        "1 instance, key_majority 1",
        1,
        1,
        20.0,
    )));
}

#[test]
fn nemesis_three_instances() {
    serial(nemesis_in_process(lock_nemesis(
        "3 instances, key_majority 2",
        3,
        2,
        20.0,
    )));
}

/// The lock nemesis with the engines on the test's own runtime
/// (`dedicated_runtime` off): their actors, pumps and connections share its
/// two workers with the workers' tasks, and acquisitions and releases go on
/// direct connections driven by those tasks.
#[test]
fn nemesis_one_instance_engine_on_the_callers_runtime() {
    serial(nemesis_in_process(Setup {
        dedicated_runtime: false,
        ..lock_nemesis(
            "1 instance, key_majority 1, engine on the callers' runtime",
            1,
            1,
            12.0,
        )
    }));
}

#[test]
fn nemesis_three_instances_engine_on_the_callers_runtime() {
    serial(nemesis_in_process(Setup {
        dedicated_runtime: false,
        ..lock_nemesis(
            "3 instances, key_majority 2, engine on the callers' runtime",
            3,
            2,
            12.0,
        )
    }));
}

/// Fair queueing under the in-model faults: everything the lock nemesis
/// checks, and no waiter starved by waiters that came after it.
#[test]
fn nemesis_fair_one_instance() {
    serial(nemesis_in_process(Setup {
        fair: true,
        ..lock_nemesis("1 instance, key_majority 1, fair", 1, 1, 12.0)
    }));
}

#[test]
fn nemesis_fair_three_instances() {
    serial(nemesis_in_process(Setup {
        fair: true,
        ..lock_nemesis("3 instances, key_majority 2, fair", 3, 2, 12.0)
    }));
}

/// Hand-over across lockers under the in-model faults: a release gives
/// the lock to the claim of another locker's waiter and tells it; the
/// history must still show no overlap, no stuck waiter and no leaked key.
#[test]
fn nemesis_handover_one_instance() {
    serial(nemesis_in_process(Setup {
        handover: true,
        ..lock_nemesis("1 instance, key_majority 1, hand-over", 1, 1, 12.0)
    }));
}

#[test]
fn nemesis_handover_three_instances() {
    serial(nemesis_in_process(Setup {
        handover: true,
        ..lock_nemesis("3 instances, key_majority 2, hand-over", 3, 2, 12.0)
    }));
}

/// Hand-over with fencing tokens under the fencing nemesis's faults (no
/// server restarts: a counter lost with its instance is out of fencing's
/// guarantee): tokens still increase in grant order, whether the key was
/// handed over or taken. One instance moves the counter in the acquire
/// script, three by the fencing step.
fn handover_fencing(label: &'static str, nodes: usize, majority: usize) -> Setup {
    Setup {
        kinds: [NET_FAULTS, ACTOR_FAULTS].concat(),
        fencing: true,
        handover: true,
        ..lock_nemesis(label, nodes, majority, 12.0)
    }
}

#[test]
fn nemesis_handover_fencing_one_instance() {
    serial(nemesis_in_process(handover_fencing(
        "1 instance, key_majority 1, hand-over, fencing",
        1,
        1,
    )));
}

#[test]
fn nemesis_handover_fencing_three_instances() {
    serial(nemesis_in_process(handover_fencing(
        "3 instances, key_majority 2, hand-over, fencing",
        3,
        2,
    )));
}

/// No faults at all: the baseline the nemesis runs compare with (grant rate,
/// waits). Runs only with `VALKEYLOCK_BASELINE=1`.
#[test]
fn contention_without_faults() {
    if std::env::var("VALKEYLOCK_BASELINE").is_err() {
        return;
    }
    serial(nemesis_in_process(Setup {
        label: "1 instance, key_majority 1, no faults",
        nodes: 1,
        majority: 1,
        lockers: 8,
        workers_per_locker: 2,
        kinds: Vec::new(),
        default_secs: 20.0,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::Lock,
    }));
}

/// Faults outside the model (a third party deletes, overwrites or flushes
/// lock keys; a server restarts empty at once), mixed with network faults.
/// Exclusion cannot hold across them: the checker blames overlaps that
/// follow them on them ("excused") and reports how long they lasted; any
/// other overlap, a stuck waiter or a leaked key still fails.
#[test]
fn nemesis_out_of_model() {
    serial(nemesis_in_process(Setup {
        label: "1 instance, key_majority 1, out-of-model faults",
        nodes: 1,
        majority: 1,
        lockers: 8,
        workers_per_locker: 2,
        kinds: [OUT_OF_MODEL_FAULTS, NET_FAULTS].concat(),
        default_secs: 10.0,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::Lock,
    }));
}

/// Semaphores under the same nemesis (issue #13): 8 lockers × 2 workers on
/// 1–2 semaphores of 3 permits (`acquire`, `acquire_with` a wait limit,
/// `try_acquire`), with every in-model fault of the lock runs. Never more
/// than 3 holders of a semaphore at once, never two of one slot, no lost
/// update of a slot's data, no stuck waiter.
#[test]
fn nemesis_semaphore_one_instance() {
    serial(nemesis_in_process(Setup {
        label: "semaphore of 3 permits, 1 instance, key_majority 1",
        nodes: 1,
        majority: 1,
        lockers: 8,
        workers_per_locker: 2,
        kinds: in_model_faults(),
        default_secs: 12.0,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::Semaphore { permits: 3 },
    }));
}

#[test]
fn nemesis_semaphore_three_instances() {
    serial(nemesis_in_process(Setup {
        label: "semaphore of 3 permits, 3 instances, key_majority 2",
        nodes: 3,
        majority: 2,
        lockers: 8,
        workers_per_locker: 2,
        kinds: in_model_faults(),
        default_secs: 12.0,
        fencing: false,
        fair: false,
        handover: false,
        dedicated_runtime: true,
        workload: Workload::Semaphore { permits: 3 },
    }));
}

// ===== the checker itself =====

/// A grant of `name` by `client` over `[from, to]` ms (both ends).
fn grant(client: &str, name: &str, from: u64, to: u64, slot: Option<u32>) -> GrantRecord {
    GrantRecord {
        client: client.to_owned(),
        name: name.to_owned(),
        acquired: from * 1_000_000,
        last_held: to * 1_000_000,
        told: to * 1_000_000,
        valid_until: None,
        reason: "released".to_owned(),
        slot,
    }
}

fn checked(h: &History) -> Report {
    report("checker", 0, h)
}

/// `N + 1` permits of one semaphore held at once is a violation, reported
/// with its instant, its witnesses and its length; `N` is not.
#[test]
fn checker_counts_holders_against_the_capacity() {
    let h = History::new();
    h.set_capacity("pool", 3);
    for (i, (from, to)) in [(0, 100), (10, 90), (20, 80)].into_iter().enumerate() {
        h.grant(grant(&format!("c{i}"), "pool", from, to, Some(i as u32)));
    }
    // Hand-overs: a fourth client starts as one ends (not at once).
    h.grant(grant("c3", "pool", 100, 150, Some(0)));
    h.grant(grant("c4", "pool", 80, 150, Some(2)));
    let r = checked(&h);
    assert!(
        r.overlaps_told.is_empty() && r.overlaps_acted.is_empty(),
        "{}",
        r.summary()
    );
    assert_eq!(r.most_holders.get("pool"), Some(&3));
    r.assert_ok();

    // A fourth holder at 30 ms, while the three are in force until 80 ms.
    h.grant(grant("c5", "pool", 30, 60, Some(1)));
    let r = checked(&h);
    assert_eq!(r.overlaps_told.len(), 1, "{}", r.summary());
    let o = &r.overlaps_told[0];
    assert_eq!((o.name.as_str(), o.capacity, o.at), ("pool", 3, 30_000_000));
    let clients: Vec<&str> = o.grants.iter().map(|g| g.client.as_str()).collect();
    assert_eq!(clients, ["c0", "c1", "c2", "c5"]);
    assert!((o.overlap_ms - 30.0).abs() < 1e-9, "{o:?}");
    assert_eq!(r.overlaps_acted.len(), 1);
    // c5 shares slot 1 with c1.
    assert_eq!(r.slot_overlaps_told.len(), 1, "{}", r.summary());
    assert_eq!(r.slot_overlaps_told[0].name, "pool:permit:1");
    assert_eq!(r.most_holders.get("pool"), Some(&4));
    assert!(r
        .summary()
        .contains("OVERLAP 30.000 ms at 30000000 (pool held by 4 > capacity 3)"));
    let failed = std::panic::catch_unwind(|| r.assert_ok());
    assert!(failed.is_err(), "assert_ok passed a violation");

    // One client's own grants never count twice.
    let h = History::new();
    h.set_capacity("pool", 2);
    h.grant(grant("a", "pool", 0, 50, Some(0)));
    h.grant(grant("a", "pool", 10, 50, Some(1)));
    h.grant(grant("b", "pool", 20, 50, Some(1)));
    let r = checked(&h);
    assert!(r.overlaps_told.is_empty(), "{}", r.summary());
    // … but two clients on one slot do, within the capacity.
    assert_eq!(r.slot_overlaps_told.len(), 1, "{}", r.summary());
}

/// Two permits of one slot: a violation even with the semaphore not full.
#[test]
fn checker_reports_two_holders_of_one_slot() {
    let h = History::new();
    h.set_capacity("pool", 3);
    h.grant(grant("a", "pool", 0, 50, Some(2)));
    h.grant(grant("b", "pool", 40, 90, Some(2)));
    let r = checked(&h);
    assert!(r.overlaps_told.is_empty());
    assert_eq!(r.slot_overlaps_told.len(), 1);
    assert_eq!(r.slot_overlaps_acted.len(), 1);
    let o = &r.slot_overlaps_told[0];
    assert_eq!((o.capacity, o.at), (1, 40_000_000));
    assert!((o.overlap_ms - 10.0).abs() < 1e-9, "{o:?}");
}

/// Today's pairwise check of locks, as it was before capacities, kept to
/// show the generalised one reports exactly the same for capacity 1.
fn pairwise_reference(
    grants: &[GrantRecord],
    faults: &[FaultRecord],
    excuse_window: Duration,
    end: impl Fn(&GrantRecord) -> u64,
) -> Vec<(GrantRecord, GrantRecord, f64, Option<FaultRecord>)> {
    let mut by_name: std::collections::BTreeMap<&str, Vec<&GrantRecord>> = Default::default();
    for g in grants {
        by_name.entry(g.name.as_str()).or_default().push(g);
    }
    let mut out = Vec::new();
    for (name, mut gs) in by_name {
        gs.sort_by_key(|g| g.acquired);
        for (i, a) in gs.iter().enumerate() {
            let a_end = end(a);
            for b in &gs[i + 1..] {
                if b.acquired >= a_end {
                    break;
                }
                if a.client == b.client {
                    continue;
                }
                let both_end = a_end.min(end(b));
                if both_end <= b.acquired {
                    continue;
                }
                let wiped = matches!(a.reason.as_str(), "deleted" | "overwritten");
                let excused_by = faults
                    .iter()
                    .find(|f| {
                        f.out_of_model
                            && (f.name == "*" || f.name == name)
                            && f.injected <= b.acquired
                            && b.acquired <= f.healed + excuse_window.as_nanos() as u64
                            && (a.acquired <= f.healed || wiped)
                    })
                    .cloned();
                out.push((
                    (*a).clone(),
                    (*b).clone(),
                    ms_between(b.acquired, both_end),
                    excused_by,
                ));
            }
        }
    }
    out
}

/// Capacity 1 (locks): on random histories full of overlaps (up to five
/// holders at once) and out-of-model faults, the generalised checker
/// reports exactly the pairs, lengths and excuses the pairwise one did, in
/// the same order, for both ends.
#[test]
fn checker_capacity_one_is_the_pairwise_check() {
    let mut rng = Rng::new(seed_from_env(DEFAULT_SEED));
    let window = Duration::from_millis(30);
    let mut compared = 0;
    for _ in 0..200 {
        let mut grants = Vec::new();
        for _ in 0..rng.below(25) {
            let acquired = rng.below(1_000);
            let told = acquired + rng.below(120);
            let last_held = acquired + rng.below(told - acquired + 1);
            let reason = ["released", "deleted", "overwritten", "expired"][rng.below(4) as usize];
            grants.push(GrantRecord {
                client: format!("c{}", rng.below(5)),
                name: format!("n{}", rng.below(2)),
                acquired,
                last_held,
                told,
                valid_until: None,
                reason: reason.to_owned(),
                slot: None,
            });
        }
        let mut faults = Vec::new();
        for _ in 0..rng.below(4) {
            let injected = rng.below(1_000);
            faults.push(FaultRecord {
                kind: "del_key".to_owned(),
                target: "-".to_owned(),
                injected,
                healed: injected + rng.below(50),
                name: ["*", "n0", "n1"][rng.below(3) as usize].to_owned(),
                out_of_model: rng.chance(0.7),
            });
        }
        let ends: [fn(&GrantRecord) -> u64; 2] = [|g| g.told, |g| g.last_held];
        for end in ends {
            let want = pairwise_reference(&grants, &faults, window, end);
            let got: Vec<_> = overlaps(&grants, &faults, window, |_| 1, end)
                .into_iter()
                .map(|o| {
                    assert_eq!(o.grants.len(), 2);
                    assert_eq!(o.at, o.grants[1].acquired);
                    (
                        o.grants[0].clone(),
                        o.grants[1].clone(),
                        o.overlap_ms,
                        o.excused_by,
                    )
                })
                .collect();
            assert_eq!(got, want);
            compared += want.len();
        }
    }
    assert!(compared > 1000, "too few overlaps compared: {compared}");
}

/// A waiter is stuck when fewer than `capacity` others held the name for
/// longer than the bound, not while all permits were taken.
#[test]
fn checker_stuck_waiters_count_free_permits() {
    let wait = |from: u64, to: u64| WaitRecord {
        client: "w".to_owned(),
        name: "pool".to_owned(),
        started: from * 1_000_000,
        ended: to * 1_000_000,
        outcome: "ok".to_owned(),
        waits: true,
    };
    let full = [
        grant("a", "pool", 0, 10_000, Some(0)),
        grant("b", "pool", 0, 10_000, Some(1)),
        grant("c", "pool", 0, 6_000, Some(2)),
        grant("d", "pool", 6_000, 10_000, Some(2)),
    ];
    let bound = VALIDITY * 3;
    let check = |grants: &[GrantRecord], capacity: usize| {
        stuck_waiters(
            grants,
            &[wait(100, 9_900)],
            &[],
            |_| capacity,
            Duration::ZERO,
            bound,
        )
    };
    // Three permits, all held throughout the wait (one handed over).
    let (stuck, worst) = check(&full, 3);
    assert!(stuck.is_empty() && worst == 0.0, "{stuck:?} {worst}");
    // Four permits: one was free all along.
    let (stuck, worst) = check(&full, 4);
    assert_eq!(stuck.len(), 1);
    assert!((worst - 9_800.0).abs() < 1e-6, "{worst}");
    // Three permits, but slot 2 free from 6 s on: 3.9 s on a free permit.
    let (stuck, worst) = check(&full[..3], 3);
    assert_eq!(stuck.len(), 1);
    assert!((worst - 3_900.0).abs() < 1e-6, "{worst}");
    // As a lock (capacity 1): somebody held it throughout.
    let (stuck, _) = check(&full[..3], 1);
    assert!(stuck.is_empty());
}

/// Grants keep their slot, and names their capacity, through the lines a
/// child process writes.
#[test]
fn checker_history_lines_keep_slots_and_capacities() {
    let h = History::new();
    h.set_capacity("pool", 3);
    h.grant(grant("a", "pool", 0, 5, Some(2)));
    h.grant(grant("b", "lock", 0, 5, None));
    let back = History::new();
    assert_eq!(back.absorb_lines(&h.to_lines()), 3);
    assert_eq!(back.grants(), h.grants());
    assert_eq!(back.capacities(), h.capacities());
}

// ===== multi-process =====

const CHILD_ENV: &str = "VALKEYLOCK_FAULTS_CHILD";

/// Not a test on its own: the body of a child process of
/// `nemesis_three_processes` (does nothing unless `VALKEYLOCK_FAULTS_CHILD`
/// is set).
#[test]
fn multiprocess_child() {
    let Ok(cfg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cfg: HashMap<String, String> = cfg
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let get = |k: &str| cfg.get(k).cloned().unwrap_or_default();
    let id: u64 = get("id").parse().expect("id");
    let urls: Vec<String> = get("urls").split(',').map(str::to_owned).collect();
    let names: Vec<String> = get("names").split(',').map(str::to_owned).collect();
    let secs: f64 = get("secs").parse().expect("secs");
    let seed: u64 = get("seed").parse().expect("seed");
    let majority: usize = get("majority").parse().expect("majority");
    let lockers_n: usize = get("lockers").parse().expect("lockers");
    let prefix = get("prefix");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let history = History::new();
            let stop = Arc::new(AtomicBool::new(false));
            let holding = Arc::new(Holding::default());
            let data = Arc::new(Protected::default());
            let names = Arc::new(names);
            let mut lockers = Vec::new();
            for _ in 0..lockers_n {
                lockers.push(connect_through_faults(urls.clone(), majority, &prefix).await);
            }
            let mut tasks = Vec::new();
            for (l, locker) in lockers.iter().enumerate() {
                let ctx = WorkerCtx {
                    client: format!("p{id}l{l}"),
                    group: l,
                    locker: locker.clone(),
                    names: names.clone(),
                    history: history.clone(),
                    stop: stop.clone(),
                    holding: holding.clone(),
                    data: data.clone(),
                    seed,
                    workload: Workload::Lock,
                };
                tasks.push(tokio::spawn(worker(ctx, id * 64 + l as u64 + 1000)));
            }
            // Actor faults from inside: only this process can reach its actors.
            let mut rng = Rng::fork(seed, id * 64 + 7);
            let end = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < end {
                sleep(rng.ms(700, 2500)).await;
                let l = rng.below(lockers.len() as u64) as usize;
                let injected = mono_ns();
                let (kind, target, name) = if rng.chance(0.5) {
                    let node = rng.below(urls.len() as u64) as usize;
                    let ok = lockers[l].faults().kill_node(node);
                    ("kill_node_actor", format!("p{id}l{l}-node{node}/{ok}"), "*")
                } else {
                    let held = holding.pick(&mut rng);
                    let (l, name) = held.map_or((l, names[0].clone()), |t| (t.group, t.lock));
                    let ok = lockers[l].faults().kill_lock(&name);
                    let label = format!("p{id}l{l}/{ok}");
                    history.fault(FaultRecord {
                        kind: "kill_lock_actor".to_owned(),
                        target: label,
                        injected,
                        healed: mono_ns(),
                        name,
                        out_of_model: false,
                    });
                    continue;
                };
                history.fault(FaultRecord {
                    kind: kind.to_owned(),
                    target,
                    injected,
                    healed: mono_ns(),
                    name: name.to_owned(),
                    out_of_model: false,
                });
            }
            stop.store(true, Ordering::SeqCst);
            for t in tasks {
                let _ = timeout(END_GRACE + Duration::from_secs(10), t).await;
            }
            for l in &lockers {
                let _ = timeout(Duration::from_secs(5), l.close()).await;
            }
            let values: u64 = data.value.lock().expect("data").values().sum();
            print!("{}", history.to_lines());
            println!(
                "VLH data p{id} {values} {}",
                data.committed.load(Ordering::SeqCst)
            );
            println!("VLH done p{id}");
        });
}

#[test]
fn nemesis_three_processes() {
    serial(async {
        let seed = seed_from_env(DEFAULT_SEED);
        let dur = nemesis_duration(12.0);
        let (children, lockers_per_child, nodes, majority) = (3usize, 3usize, 3usize, 2usize);
        eprintln!(
            "[3 processes] seed {seed:#x}, {dur:?}, {children} processes × {lockers_per_child} lockers, {nodes} instances"
        );
        let mut cl = Cluster::start(nodes, children, majority).await;
        let base = unique("mp");
        let names: Vec<String> = (0..2).map(|i| format!("{base}-{i}")).collect();
        let exe = std::env::current_exe().expect("current_exe");
        let mut procs = Vec::new();
        for c in 0..children {
            let cfg = format!(
                "id={c};urls={};names={};secs={};seed={seed};majority={majority};lockers={lockers_per_child};prefix={}",
                cl.urls(c).join(","),
                names.join(","),
                dur.as_secs_f64(),
                cl.prefix
            );
            let mut child = Command::new(&exe)
                .args([
                    "multiprocess_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, cfg)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn child");
            let mut out = child.stdout.take().expect("stdout");
            let reader = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut out, &mut s);
                s
            });
            procs.push((child, reader));
        }
        let history = History::new();
        let holding = Holding::default();
        let mut kinds: Vec<(Fault, u32)> = Vec::new();
        kinds.extend_from_slice(NET_FAULTS);
        kinds.extend_from_slice(SERVER_FAULTS);
        let nctx = NemesisCtx {
            kinds,
            lockers: &[],
            holding: &holding,
            names: &names,
            history: &history,
            workload: Workload::Lock,
        };
        run_nemesis(&mut cl, &nctx, seed, dur).await;
        let deadline = Instant::now() + END_GRACE + Duration::from_secs(30);
        let mut outputs = Vec::new();
        for (mut child, reader) in procs {
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("a child process hung (seed {seed:#x})");
                }
                sleep(ms(50)).await;
            }
            outputs.push(reader.join().expect("reader"));
        }
        let mut data_ok = true;
        for (c, out) in outputs.iter().enumerate() {
            assert!(
                out.contains(&format!("VLH done p{c}")),
                "child {c} did not finish:\n{out}"
            );
            history.absorb_lines(out);
            for line in out.lines().filter(|l| l.starts_with("VLH data")) {
                let f: Vec<&str> = line.split(' ').collect();
                data_ok &= f.len() == 5 && f[3] == f[4];
            }
        }
        let leftover = cl.leftover_after_expiry().await;
        let r = report(
            "3 processes × 3 lockers, 3 instances, key_majority 2",
            seed,
            &history,
        );
        eprintln!("{}", r.summary());
        Report::dump(&history, &format!("3-processes-{seed:#x}.txt"));
        let errors: Vec<WaitRecord> = history
            .waits()
            .into_iter()
            .filter(|w| !matches!(w.outcome.as_str(), "ok" | "not_locked"))
            .collect();
        eprintln!(
            "[3 processes] leftover keys {}; unexpected call outcomes {}",
            leftover.len(),
            errors.len()
        );
        assert!(data_ok, "a child saw lost updates of its protected data");
        assert!(
            leftover.is_empty(),
            "keys outlived their validity: {leftover:?}"
        );
        assert!(errors.is_empty(), "unexpected outcomes: {errors:?}");
        assert!(r.grants >= 20, "too few grants: {}", r.grants);
        r.assert_ok();
    });
}

// ===== deterministic scenarios =====

/// Samples a guard every ms until it is no longer held; returns the moment
/// the holder was told (the earlier of `lost()` firing and `is_held()`
/// turning false), the reason, and the last `valid_until` it was shown.
async fn watch_until_lost(guard: &LockGuard, within: Duration) -> (u64, LostReason, Option<u64>) {
    let watcher = guard.watcher();
    let lost = tokio::spawn(async move {
        let r = watcher.lost().await;
        (mono_ns(), r)
    });
    let mut valid_until = guard.valid_until().map(mono_of);
    let deadline = Instant::now() + within;
    let not_held_at = loop {
        if !guard.is_held() {
            break mono_ns();
        }
        if let Some(v) = guard.valid_until() {
            valid_until = Some(mono_of(v));
        }
        assert!(
            Instant::now() < deadline,
            "the holder was not told within {within:?}"
        );
        sleep(ms(1)).await;
    };
    let (lost_at, reason) = timeout(Duration::from_secs(5), lost)
        .await
        .expect("lost() did not fire after is_held() turned false")
        .expect("join");
    (not_held_at.min(lost_at), reason, valid_until)
}

/// Another client takes `name`: with `poll`, `try_lock` every ms (the
/// earliest moment it can), else a waiting `lock()`.
fn take(other: &Locker, name: &str, poll: bool) -> tokio::task::JoinHandle<(u64, LockGuard)> {
    let (other, name) = (other.clone(), name.to_owned());
    tokio::spawn(async move {
        if poll {
            loop {
                match other.try_lock(&name).await {
                    Ok(g) => return (mono_ns(), g),
                    Err(Error::NotLocked { .. }) => sleep(ms(1)).await,
                    Err(e) => panic!("try_lock: {e}"),
                }
            }
        }
        let g = other.lock(&name).await.expect("lock()");
        (mono_ns(), g)
    })
}

#[derive(Debug)]
struct Round {
    setup: &'static str,
    poll: bool,
    /// Freeze → holder told.
    detect_ms: f64,
    /// Holder told → the other client got the lock (must be > 0).
    margin_ms: f64,
    /// Holder told − the last `valid_until` it was shown.
    late_ms: f64,
    reason: LostReason,
}

async fn freeze_round(
    setup: &'static str,
    holder: &Locker,
    links: &[&Proxy],
    other: &Locker,
    poll: bool,
    phase: Duration,
) -> Round {
    let name = unique("a");
    let guard = timeout(Duration::from_secs(10), holder.lock(&name))
        .await
        .expect("holder lock() hung")
        .expect("holder lock()");
    sleep(phase).await;
    let frozen_at = mono_ns();
    links.iter().for_each(|p| p.freeze());
    let taker = take(other, &name, poll);
    let (told, reason, valid_until) = watch_until_lost(&guard, VALIDITY * 2).await;
    let (taken_at, g) = timeout(Duration::from_secs(10), taker)
        .await
        .expect("the other client never got the lock")
        .expect("join");
    links.iter().for_each(|p| p.heal());
    let _ = g.release().await;
    drop(guard);
    Round {
        setup,
        poll,
        detect_ms: ms_between(frozen_at, told),
        margin_ms: ms_between(told, taken_at),
        late_ms: valid_until.map_or(f64::NAN, |v| ms_between(v, told)),
        reason,
    }
}

fn print_rounds(title: &str, rounds: &[Round]) {
    eprintln!("--- {title} ---");
    for r in rounds {
        eprintln!(
            "  {:<34} {:<8} told {:>7.1} ms after the freeze ({}), {:>+6.1} ms vs valid_until; other got it {:>7.1} ms later",
            r.setup,
            if r.poll { "poller" } else { "waiter" },
            r.detect_ms,
            r.reason,
            r.late_ms,
            r.margin_ms
        );
    }
}

/// (a) The holder's link freezes silently (no RST): its `lost()` fires
/// before any other client can acquire the lock. The other client either
/// polls `try_lock` every ms (the earliest moment it could) or waits in
/// `lock()`.
#[test]
fn scenario_a_frozen_holder_link() {
    serial(async {
        let mut rng = Rng::fork(seed_from_env(DEFAULT_SEED), 0xA);
        let mut rounds = Vec::new();
        // One instance, key_majority 1.
        let server = ValkeyServer::start();
        let proxy = Proxy::start(server.port).await;
        let prefix = unique("a");
        let holder = connect(vec![proxy.url()], 1, &prefix).await;
        let other = connect(vec![server.url()], 1, &prefix).await;
        for i in 0..6 {
            let phase = rng.ms(0, 600);
            rounds.push(
                freeze_round("1 instance", &holder, &[&proxy], &other, i % 3 != 2, phase).await,
            );
        }
        // Three instances, key_majority 2: the holder is cut from two of
        // them and keeps the third.
        let servers: Vec<ValkeyServer> = (0..3).map(|_| ValkeyServer::start()).collect();
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let proxies = Proxy::start_all(&ports).await;
        let prefix = unique("a3");
        let holder3 = connect(proxies.iter().map(Proxy::url).collect(), 2, &prefix).await;
        let other3 = connect(servers.iter().map(ValkeyServer::url).collect(), 2, &prefix).await;
        for i in 0..6 {
            let phase = rng.ms(0, 600);
            let keep = rng.below(3) as usize;
            let cut: Vec<&Proxy> = (0..3).filter(|&j| j != keep).map(|j| &proxies[j]).collect();
            rounds.push(
                freeze_round(
                    "3 instances, 2 of 3 links frozen",
                    &holder3,
                    &cut,
                    &other3,
                    i % 3 != 2,
                    phase,
                )
                .await,
            );
        }
        print_rounds("(a) frozen holder link", &rounds);
        let margins: Vec<f64> = rounds
            .iter()
            .filter(|r| r.poll)
            .map(|r| r.margin_ms)
            .collect();
        eprintln!(
            "(a) margin (holder told → earliest acquisition by a poller): min {:.1} ms, p50 {:.1} ms, max {:.1} ms (drift allowance {DRIFT:?})",
            percentile(&margins, 0.0),
            percentile(&margins, 50.0),
            percentile(&margins, 100.0)
        );
        for r in &rounds {
            assert!(
                r.margin_ms > 0.0,
                "another client acquired the lock {:.1} ms BEFORE the holder was told: {r:?}",
                -r.margin_ms
            );
            assert!(
                matches!(r.reason, LostReason::Unreachable | LostReason::Expired),
                "unexpected reason: {r:?}"
            );
            assert!(
                r.detect_ms < (VALIDITY + ms(100)).as_secs_f64() * 1e3,
                "told too late: {r:?}"
            );
        }
        for l in [holder, other, holder3, other3] {
            l.close().await;
        }
    });
}

/// Holds `guard` for `dur` (or until lost), acting every ms while held, and
/// records the grant.
async fn hold_recorded(client: &str, guard: LockGuard, dur: Duration, history: &History) {
    let acquired = mono_ns();
    let name = guard.name().to_owned();
    let mut last_held = acquired;
    let mut valid_until = guard.valid_until().map(mono_of);
    let until = Instant::now() + dur;
    let (told, reason) = loop {
        if !guard.is_held() {
            let r = guard
                .lost_reason()
                .map_or("validity_passed", |r| r.as_str());
            break (mono_ns(), r.to_owned());
        }
        if let Some(v) = guard.valid_until() {
            valid_until = Some(mono_of(v));
        }
        last_held = mono_ns();
        if Instant::now() >= until {
            break (mono_ns(), "released".to_owned());
        }
        sleep(ms(1)).await;
    };
    if reason == "released" {
        let _ = guard.release().await;
    }
    history.grant(GrantRecord {
        client: client.to_owned(),
        name,
        acquired,
        last_held,
        told,
        valid_until,
        reason,
        slot: None,
    });
}

/// (b) The server is paused (SIGSTOP) past the validity: the holder is told
/// before the keys can expire, while the server is still stopped; after
/// SIGCONT the old holder and a waiter race for the lock and never hold it
/// at once.
#[test]
fn scenario_b_sigstop_past_validity() {
    serial(async {
        let server = ValkeyServer::start();
        let prefix = unique("b");
        let h = connect(vec![server.url()], 1, &prefix).await;
        let w = connect(vec![server.url()], 1, &prefix).await;
        let history = History::new();
        let mut rng = Rng::fork(seed_from_env(DEFAULT_SEED), 0xB);
        for round in 0..3 {
            let name = unique("b");
            let guard = h.lock(&name).await.expect("lock");
            let first_grant = mono_ns();
            sleep(rng.ms(0, 500)).await;
            let waiter = {
                let (w, name, history) = (w.clone(), name.clone(), history.clone());
                tokio::spawn(async move {
                    let g = timeout(Duration::from_secs(15), w.lock(&name))
                        .await
                        .expect("waiter hung after SIGCONT")
                        .expect("waiter lock()");
                    let at = mono_ns();
                    hold_recorded("waiter", g, ms(150), &history).await;
                    at
                })
            };
            sleep(ms(30)).await;
            let paused_at = mono_ns();
            server.pause();
            let (told, reason, valid_until) = watch_until_lost(&guard, VALIDITY * 2).await;
            history.grant(GrantRecord {
                client: "holder".into(),
                name: name.clone(),
                acquired: first_grant,
                last_held: told,
                told,
                valid_until,
                reason: reason.as_str().into(),
                slot: None,
            });
            drop(guard);
            let pause = VALIDITY + ms(700);
            sleep(pause.saturating_sub(Duration::from_nanos(mono_ns() - paused_at))).await;
            let resumed_at = mono_ns();
            server.resume();
            // The old holder wants it back at once, racing the waiter.
            let again = timeout(Duration::from_secs(15), h.lock(&name))
                .await
                .expect("old holder hung after SIGCONT")
                .expect("lock");
            let again_at = mono_ns();
            hold_recorded("holder", again, ms(150), &history).await;
            let waiter_at = waiter.await.expect("waiter");
            eprintln!(
                "(b) round {round}: SIGSTOP {:?}; holder told {:.1} ms after SIGSTOP ({reason}, {:+.1} ms vs valid_until), {:.1} ms before SIGCONT; after SIGCONT the waiter got it in {:.1} ms, the old holder in {:.1} ms",
                pause,
                ms_between(paused_at, told),
                valid_until.map_or(f64::NAN, |v| ms_between(v, told)),
                ms_between(told, resumed_at),
                ms_between(resumed_at, waiter_at),
                ms_between(resumed_at, again_at),
            );
            assert!(
                told < resumed_at,
                "holder not told while the server was stopped"
            );
            assert!(
                ms_between(paused_at, told) <= (VALIDITY + ms(20)).as_secs_f64() * 1e3,
                "holder told later than the validity after the pause"
            );
        }
        let r = report("(b) SIGSTOP", 0, &history);
        eprintln!("{}", r.summary());
        r.assert_ok();
        h.close().await;
        w.close().await;
    });
}

/// (c) The server restarts empty under a waiter. Restarted at once (outside
/// the model): the waiter gets the lock soon (no hang) and the old holder is
/// told; how long both "held" it is printed. Restarted after the validity
/// (within the model): the old holder is told before the restart, nobody
/// holds it twice.
#[test]
fn scenario_c_restart_empty_under_waiter() {
    serial(async {
        let mut server = ValkeyServer::start();
        let prefix = unique("c");
        let h = connect(vec![server.url()], 1, &prefix).await;
        let w = connect(vec![server.url()], 1, &prefix).await;
        for delayed in [false, true] {
            for round in 0..2 {
                let name = unique("c");
                let guard = h.lock(&name).await.expect("lock");
                let waiter = {
                    let (w, name) = (w.clone(), name.clone());
                    tokio::spawn(async move {
                        let g = timeout(VALIDITY * 3 + Duration::from_secs(3), w.lock(&name))
                            .await
                            .expect("waiter hung after the restart")
                            .expect("waiter lock()");
                        (mono_ns(), g)
                    })
                };
                sleep(ms(50)).await;
                let watch = tokio::spawn(async move {
                    let r = watch_until_lost(&guard, VALIDITY * 3).await;
                    drop(guard);
                    r
                });
                let killed_at = mono_ns();
                let restarted_at = if delayed {
                    block(|| server.kill());
                    sleep(VALIDITY + ms(300)).await;
                    block(|| server.restart());
                    mono_ns()
                } else {
                    block(|| server.restart());
                    mono_ns()
                };
                let (told, reason, _) = watch.await.expect("watch");
                let (got_at, g) = waiter.await.expect("waiter");
                eprintln!(
                    "(c) {} restart, round {round}: holder told {:.1} ms after the kill ({reason}); waiter got the lock {:.1} ms after the restart; {}",
                    if delayed { "delayed" } else { "immediate" },
                    ms_between(killed_at, told),
                    ms_between(restarted_at, got_at),
                    if got_at < told {
                        format!("both held it for {:.1} ms (expected: outside the model)", ms_between(got_at, told))
                    } else {
                        format!("no overlap (margin {:.1} ms)", ms_between(told, got_at))
                    }
                );
                assert!(
                    ms_between(killed_at, told) <= (VALIDITY * 2).as_secs_f64() * 1e3,
                    "old holder told too late"
                );
                if delayed {
                    assert!(
                        told < restarted_at,
                        "holder not told before the delayed restart"
                    );
                    assert!(told < got_at, "overlap despite the delayed restart");
                }
                let _ = g.release().await;
            }
        }
        h.close().await;
        w.close().await;
    });
}

/// Samples `guard` every 5 ms for `dur`; panics if it stops being held.
async fn assert_held_for(guard: &LockGuard, dur: Duration, what: &str) {
    let end = Instant::now() + dur;
    while Instant::now() < end {
        assert!(
            guard.is_held(),
            "{what}: lock lost ({:?}) although the majority survived",
            guard.lost_reason()
        );
        sleep(ms(5)).await;
    }
}

/// Waits until no key of our prefix is left; returns how long that took.
async fn keys_gone_within(cl: &Cluster, bound: Duration, what: &str) -> Duration {
    let t = Instant::now();
    loop {
        let left = cl.leftover_keys().await;
        if left.is_empty() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < bound,
            "{what}: keys still there {:?} later: {left:?}",
            t.elapsed()
        );
        sleep(ms(10)).await;
    }
}

/// (d) A `NodeActor` killed during acquisition, during an extension and
/// during a release (commands in flight, 25 ms each way on the links):
/// acquisition still returns, a lock whose majority survives is kept, a
/// release returns, nobody waits forever, and no key outlives its validity.
/// A killed `LockActor` tells its holder `EngineStopped` at once.
#[test]
fn scenario_d_actor_kills_in_flight() {
    serial(async {
        let cl = Cluster::start(3, 1, 2).await;
        cl.links[0].iter().for_each(|p| p.delay(ms(25)));
        let a = connect(cl.urls(0), 2, &cl.prefix).await;
        let b = connect(cl.direct_urls(), 2, &cl.prefix).await;
        let faults = a.faults();
        let bound = VALIDITY * 3;

        // During acquisition.
        let name = unique("d-acq");
        let t = Instant::now();
        let pending = {
            let (a, name) = (a.clone(), name.clone());
            tokio::spawn(async move { a.lock(&name).await })
        };
        sleep(ms(10)).await;
        assert!(faults.kill_node(0));
        let g = timeout(bound, pending)
            .await
            .expect("lock() hung after a NodeActor kill")
            .expect("join")
            .expect("lock()");
        let acq = t.elapsed();
        assert_held_for(&g, VALIDITY * 2, "acquired during a NodeActor kill").await;
        let _ = g.release().await;
        let gone = keys_gone_within(&cl, VALIDITY + ms(200), "after acquisition kill").await;
        eprintln!("(d) NodeActor killed during acquisition: lock() returned in {acq:?}, held 2 s, keys gone {gone:?} after release");

        // During an extension (extend_interval 500 ms; kill 10 ms after it was sent).
        let name = unique("d-ext");
        let g = a.lock(&name).await.expect("lock");
        let t0 = Instant::now();
        sleep(VALIDITY / 2 + ms(10)).await;
        assert!(faults.kill_node(1));
        assert_held_for(&g, VALIDITY * 2, "NodeActor killed during an extension").await;
        let _ = g.release().await;
        let gone = keys_gone_within(&cl, VALIDITY + ms(200), "after extension kill").await;
        eprintln!(
            "(d) NodeActor killed {:?} into the hold (during the first extension): still held 2 s later, keys gone {gone:?} after release",
            t0.elapsed() - VALIDITY * 2
        );

        // During a release.
        let name = unique("d-rel");
        let g = a.lock(&name).await.expect("lock");
        sleep(ms(100)).await;
        let t = Instant::now();
        let rel = tokio::spawn(g.release());
        sleep(ms(10)).await;
        assert!(faults.kill_node(2));
        let r = timeout(Duration::from_secs(2), rel)
            .await
            .expect("release() hung after a NodeActor kill")
            .expect("join");
        // The killed node's delete may go unanswered: said, not hidden.
        assert!(
            matches!(
                r,
                Ok(()) | Err(valkeylock::Error::ReleaseUnconfirmed { .. })
            ),
            "{r:?}"
        );
        let released = t.elapsed();
        let t = Instant::now();
        let g = timeout(bound, b.lock(&name))
            .await
            .expect("a waiter hung after a release with a killed NodeActor")
            .expect("lock");
        let other = t.elapsed();
        let _ = g.release().await;
        let gone = keys_gone_within(&cl, VALIDITY + ms(200), "after release kill").await;
        eprintln!("(d) NodeActor killed during release: release() returned in {released:?}, another client got the lock {other:?} later, keys gone {gone:?} after");

        // A LockActor killed while holding: EngineStopped at once; the keys
        // are not extended any more and expire.
        let name = unique("d-lock");
        let g = a.lock(&name).await.expect("lock");
        let taker = take(&b, &name, true);
        sleep(ms(200)).await;
        let killed = mono_ns();
        assert!(faults.kill_lock(&name));
        let reason = timeout(ms(500), g.lost())
            .await
            .expect("lost() did not fire after the LockActor was killed");
        let told = mono_ns();
        assert_eq!(reason, LostReason::EngineStopped);
        assert!(!g.is_held());
        let (taken, g2) = timeout(bound, taker)
            .await
            .expect("nobody got the lock after a LockActor kill")
            .expect("join");
        assert!(taken > told);
        eprintln!(
            "(d) LockActor killed while holding: told {reason} {:.2} ms after the kill; another client got the lock {:.0} ms after the kill (keys left to expire)",
            ms_between(killed, told),
            ms_between(killed, taken)
        );
        let _ = g2.release().await;
        drop(g);

        // A LockActor killed during acquisition: the call is re-sent to a
        // fresh actor and still returns.
        let name = unique("d-lockacq");
        let t = Instant::now();
        let pending = {
            let (a, name) = (a.clone(), name.clone());
            tokio::spawn(async move { a.lock(&name).await })
        };
        sleep(ms(10)).await;
        let killed = faults.kill_lock(&name);
        let g = timeout(bound, pending)
            .await
            .expect("lock() hung after a LockActor kill")
            .expect("join")
            .expect("lock()");
        eprintln!(
            "(d) LockActor killed during acquisition (killed: {killed}): lock() returned in {:?}",
            t.elapsed()
        );
        assert!(g.is_held());
        let _ = g.release().await;
        let gone = keys_gone_within(&cl, VALIDITY + ms(200), "after LockActor kills").await;
        eprintln!("(d) keys gone {gone:?} after the last release");

        // One instance, key_majority 1: no majority survives a NodeActor
        // kill, but nobody hangs either.
        let server = ValkeyServer::start();
        let prefix = unique("d1");
        let c = connect(vec![server.url()], 1, &prefix).await;
        let name = unique("d1");
        let t = Instant::now();
        let pending = {
            let (c, name) = (c.clone(), name.clone());
            tokio::spawn(async move { c.lock(&name).await })
        };
        assert!(c.faults().kill_node(0));
        let g = timeout(bound, pending)
            .await
            .expect("lock() hung after the only NodeActor was killed")
            .expect("join")
            .expect("lock()");
        eprintln!(
            "(d) 1 instance, only NodeActor killed during acquisition: lock() returned in {:?}",
            t.elapsed()
        );
        let _ = g.release().await;

        // The Supervisor killed (and with it every actor of the locker):
        // the holder hears EngineStopped, later calls fail, nothing hangs.
        let e = connect(vec![server.url()], 1, &prefix).await;
        let name = unique("d-sup");
        let g = e.lock(&name).await.expect("lock");
        let killed = mono_ns();
        e.faults().kill_supervisor();
        let reason = timeout(ms(500), g.lost())
            .await
            .expect("lost() did not fire after the Supervisor was killed");
        let told = mono_ns();
        assert_eq!(reason, LostReason::EngineStopped);
        assert!(!g.is_held());
        let r = timeout(Duration::from_secs(2), e.lock(&unique("d-sup2")))
            .await
            .expect("lock() hung after the Supervisor was killed");
        eprintln!(
            "(d) Supervisor killed while holding: told {reason} {:.2} ms after the kill; a later lock() returned {r:?}",
            ms_between(killed, told)
        );
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
        let t = Instant::now();
        let g2 = timeout(bound, c.lock(&name))
            .await
            .expect("nobody got the lock after a Supervisor kill")
            .expect("lock");
        eprintln!(
            "(d) another locker got that lock {:?} later (keys left to expire)",
            t.elapsed()
        );
        let _ = g2.release().await;
        drop(g);
        timeout(Duration::from_secs(5), e.close())
            .await
            .expect("close() hung after the Supervisor was killed");
        for l in [a, b, c] {
            l.close().await;
        }
        cl.heal_all();
    });
}

/// Reads every key of `name`: its value, and its expiry on the [`mono_ns`]
/// scale (from the server's absolute `PEXPIRETIME`, so the round trip of
/// the read does not blur it), `None` without one.
async fn read_keys(
    conns: &mut [RawConn],
    cl: &Cluster,
    name: &str,
) -> Vec<(Option<String>, Option<u64>)> {
    const LUA: &str =
        "return {redis.call('GET', KEYS[1]) or '', redis.call('PEXPIRETIME', KEYS[1])}";
    let mut out = Vec::new();
    for i in 0..cl.total() {
        let node = cl.node_of(i);
        let key = cl.key(i, name);
        let r = conns[node]
            .cmd(&["EVAL", LUA, "1", &key])
            .await
            .expect("read keys");
        let (value, at) = match r {
            Resp::Array(Some(v)) if v.len() == 2 => (v[0].text(), v[1].int().unwrap_or(-2)),
            other => panic!("unexpected reply {other:?}"),
        };
        let value = value.filter(|v| !v.is_empty());
        let expiry = (at > 0).then(|| mono_of_unix_ms(at as u64));
        out.push((value, expiry));
    }
    out
}

/// (e) A lock held across many extend intervals while its connections are
/// dropped (proxy) and killed (`CLIENT KILL`) again and again: either held
/// continuously with its keys verified on the servers, or reported lost —
/// never held without a majority of keys behind it. Every sample while
/// `is_held()` checks that `M` keys hold our token and live at least until
/// the `valid_until()` the holder was shown.
#[test]
fn scenario_e_connection_drops_while_held() {
    serial(async {
        let mut rng = Rng::fork(seed_from_env(DEFAULT_SEED), 0xE);
        for (nodes, m) in [(1usize, 1usize), (3, 2)] {
            let cl = Cluster::start(nodes, 1, m).await;
            let h = connect(cl.urls(0), m, &cl.prefix).await;
            let mut conns = Vec::new();
            for s in &cl.servers {
                conns.push(RawConn::connect(s.port, &[]).await.expect("admin"));
            }
            let name = unique("e");
            let g = h.lock(&name).await.expect("lock");
            let token = {
                let keys = read_keys(&mut conns, &cl, &name).await;
                let mut counts: HashMap<String, usize> = HashMap::new();
                for (v, _) in keys {
                    if let Some(v) = v {
                        *counts.entry(v).or_default() += 1;
                    }
                }
                counts
                    .into_iter()
                    .max_by_key(|c| c.1)
                    .expect("no key after lock()")
                    .0
            };
            let end = Instant::now() + Duration::from_secs(6);
            let mut next_fault = Instant::now() + rng.ms(150, 600);
            let (mut checks, mut drops, mut kills) = (0u64, 0u64, 0u64);
            let mut min_slack = f64::INFINITY;
            let mut violations = Vec::new();
            let (mut last_fault, mut last_fault_at) = (String::new(), mono_ns());
            while Instant::now() < end {
                if Instant::now() >= next_fault {
                    let node = rng.below(nodes as u64) as usize;
                    last_fault_at = mono_ns();
                    if rng.chance(0.5) {
                        drops += cl.links[0][node].drop_all() as u64;
                        last_fault = format!("proxy drop node {node}");
                    } else {
                        let r = conns[node].cmd(&["CLIENT", "KILL", "TYPE", "normal"]).await;
                        kills += r.ok().and_then(|r| r.int()).unwrap_or(0) as u64;
                        last_fault = format!("CLIENT KILL node {node}");
                    }
                    next_fault = Instant::now() + rng.ms(150, 600);
                }
                let shown = g.valid_until();
                if !g.is_held() {
                    break;
                }
                let keys = read_keys(&mut conns, &cl, &name).await;
                if g.is_held() {
                    checks += 1;
                    let now = mono_ns();
                    let mut expiries: Vec<u64> = keys
                        .iter()
                        .filter(|(v, _)| v.as_deref() == Some(token.as_str()))
                        .filter_map(|(_, e)| *e)
                        .filter(|&e| e > now)
                        .collect();
                    expiries.sort_unstable_by(|a, b| b.cmp(a));
                    match (expiries.get(m - 1), shown) {
                        (None, _) => violations.push(format!(
                            "held but only {} of {m} keys ours: {keys:?}",
                            expiries.len()
                        )),
                        (Some(&e), Some(v)) => {
                            // PEXPIRETIME is whole ms: 1 ms of rounding.
                            let slack = ms_between(mono_of(v), e) + 1.0;
                            min_slack = min_slack.min(slack);
                            if slack < 0.0 {
                                violations.push(format!(
                                    "the {m}-th key expires {:.1} ms before valid_until (keys {keys:?}, valid_until {}, {:.1} ms since the last fault {last_fault})",
                                    -slack,
                                    mono_of(v),
                                    ms_between(last_fault_at, mono_ns()),
                                ));
                            }
                        }
                        (Some(_), None) => {}
                    }
                }
                sleep(ms(5)).await;
            }
            let outcome = match g.lost_reason() {
                None => "held throughout".to_owned(),
                Some(r) => format!("reported lost ({r})"),
            };
            eprintln!(
                "(e) {nodes} instance(s), key_majority {m}: {outcome}; {checks} checks of the keys while held, {drops} proxy connections dropped, {kills} clients killed by CLIENT KILL, smallest margin of the {m}-th key's expiry over valid_until {min_slack:.1} ms; violations {}",
                violations.len()
            );
            assert!(
                violations.is_empty(),
                "unprotected while held: {violations:?}"
            );
            assert!(checks > 100, "too few checks: {checks}");
            if g.lost_reason().is_none() {
                let _ = g.release().await;
            }
            h.close().await;
        }
    });
}

/// A release hands the lock to a task of the same process that waits for it
/// even while the engine's thread is stalled: requests and releases run the
/// lock core on the callers' threads, and a local hand-over sends no command.
/// (Before, both crossed into the engine's thread, and the waiter got the
/// lock only when the stall ended.) A hand-over happens only within 10 ms of
/// the keys' acquisition, which a loaded machine can miss: up to ten tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_hand_over_needs_no_engine_thread() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    let faults = locker.faults();
    let name = unique("stalled-handover");
    let stall = Duration::from_millis(1500);
    let mut tries = Vec::new();
    for _ in 0..10 {
        let first = locker.lock(&name).await.unwrap();
        // Polled once: its request is queued behind `first` (fed on this
        // thread), and it waits.
        let mut second = Box::pin(locker.lock(&name));
        tokio::select! {
            biased;
            _ = &mut second => panic!("granted while held"),
            _ = std::future::ready(()) => {}
        }
        let stalled = faults.stall_engine(stall).await;
        timeout(stall * 4, first.release())
            .await
            .expect("release() hung")
            .expect("a hand-over is a clean release");
        let released_stalled = stalled.load(Ordering::SeqCst);
        let guard = timeout(stall * 4, &mut second)
            .await
            .expect("the waiter hung")
            .expect("the waiter got the lock");
        let granted_stalled = stalled.load(Ordering::SeqCst);
        assert!(guard.is_held());
        tries.push((released_stalled, granted_stalled));
        let ended = eventually(stall * 4, || async { !stalled.load(Ordering::SeqCst) }).await;
        assert!(ended, "the stall did not end");
        guard.release().await.unwrap();
        if granted_stalled {
            break;
        }
    }
    eprintln!("(released while stalled, granted while stalled) per try: {tries:?}");
    assert!(
        tries.iter().any(|&(r, g)| r && g),
        "no hand-over while the engine was stalled in {} tries: {tries:?}",
        tries.len()
    );
    locker.close().await;
}
