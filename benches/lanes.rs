//! Which connection a lock's commands take, measured (issue #11): the one
//! task loop of lock + release, through seven transports in alternated
//! rounds on one server (each round in another order), each as a ratio to
//! the raw floor of the same round; then ten tasks on ten names each
//! (`uncontended/*/10` of the locks bench) through five of them; then the
//! one-task loop again through those five and `lean`, spawned on a worker
//! of the runtime, as the locks bench runs it, instead of on the thread
//! that blocks on the runtime. Each round also gives the server's CPU (`INFO
//! cpu`), this process's CPU and voluntary context switches, the server's
//! commands (`INFO commandstats`, a script's own commands included), its
//! time in the commands the transport sends (the same statistics' `usec`
//! of script calls, and of the floor's `SET`s) and its reads and writes of
//! client sockets (`INFO stats`) per lock + release: on a machine of two
//! cores shared by the
//! server and the client, the sum of the two CPUs bounds what ten tasks
//! can do, and the `script` stand-ins show what the acquire script alone
//! costs, with no engine at all.
//!
//! The engine as built sends every command from its own thread (its runtime,
//! its fred connection), which costs a wake-up of that thread and one back per
//! round trip. The transports below move the commands to a connection the
//! caller's runtime drives itself, and differ in how the holder would still
//! hear of a loss at once, which is what the engine's connection is for
//! (`CLIENT TRACKING` invalidations; README, "How it works"):
//!
//! - `floor`: `SET NX PX` then the compare-and-delete script, one fred
//!   client on the caller's runtime (the floor of the other benches).
//! - `script`: the same client runs an acquire script with the commands
//!   valkeylock's runs for a free key (`EXISTS` of the fair queue,
//!   `SET NX PXAT`, `GET`), then the compare-and-delete. Nobody would hear
//!   of a loss: the ceiling of any transport.
//! - `script+verify`: `script`, and after each acquisition a read-only check
//!   of the key sent by an "engine" (a thread with its own current-thread
//!   runtime and RESP3 connection with tracking on, as the engine's), which
//!   arms tracking there: what the engine would add if the caller's
//!   connection did not track.
//! - `script+redirect`: `script` on a caller's connection with
//!   `CLIENT TRACKING ON REDIRECT <the engine's connection> NOLOOP`: its
//!   reads arm tracking, and the invalidations go to the engine's
//!   connection. Checked before the rounds: a key the caller's connection
//!   read, deleted by another client, reaches the engine as an invalidation.
//! - `lean`: the commands of `script+redirect` for a free key, sent as
//!   plain commands written together (`SET NX PXAT`, the `GET` that arms
//!   tracking, `EXISTS` of the fair queue, in one write), then the
//!   compare-and-delete script, on a plain RESP2 connection with no client
//!   library (the tests' `RawConn`: a tokio socket; tracking redirected
//!   to the engine's connection). fred writes and flushes each command on its
//!   own, a pipeline's too, so a script call is its cheapest single write;
//!   this is what a connection that writes several commands at once would
//!   allow (BENCHMARKS.md, "What limits", item 2). Unlike the script,
//!   not atomic: a measure of the transport, not a lock.
//! - `valkeylock`: `Locker::lock` then `LockGuard::release`, as built: its
//!   acquisitions and releases go on a direct connection (the caller's
//!   runtime drives it, its tracking redirected to the engine's
//!   connection; `LockerOptions::direct_connections`, on by default).
//! - `valkeylock (engine)`: the same with `direct_connections` off, every
//!   command from the engine's thread.
//!
//! A last part measures the hand-over between lockers instead: two, then
//! four lockers in this process contend for one name, one task each, each
//! with connections of its own (`cross_locker/*/{2,4}` of the locks bench),
//! through three transports:
//!
//! - `floor`: the floor above; a waiter spins on `SET NX PX`, so its next
//!   attempt is already on its way when the holder's delete lands.
//! - `woken stand-in`: what valkeylock's design asks of a waiter, with no
//!   engine and no thread between: the acquire script on a RESP3
//!   connection of the contender's own with tracking on, and, when the
//!   key is held, a wait for that connection's invalidation of it before
//!   the next attempt. The bound of any locker woken by invalidations.
//! - `handed stand-in`: a protocol valkeylock does not have, measured before
//!   it is built: an acquisition that finds the key held leaves a claim
//!   beside it (its token and channel, in a sorted set scored by when the
//!   claim lapses), and a release hands a key with a live claim to the
//!   oldest claimant (writes its token, expiring when the claim would
//!   have) and publishes that token on the claimant's channel. The
//!   claimant holds the key when told, with no command of its own.
//! - `valkeylock`: a `Locker` per contender, `lock` then `release`.
//! - `valkeylock (hand-over)`: the same with `handover` on, which is the
//!   handed stand-in's protocol, built.
//! - `valkeylock (hand-over, fencing)`: the same with `fencing` on too: on
//!   one server the release moves the counter as it hands the key over,
//!   and the message carries the claimant's token.
//!
//! After each count of lockers it prints, by transport, the busiest
//! locker's operations over the least busy one's.
//!
//! Run: `cargo bench --bench lanes` (`CI=1`: one short round);
//! `cargo bench --bench lanes -- handover` runs the last part alone.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{expiry, median, order, Args, Raw};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, RespVersion};
use support::proxy::{RawConn, Resp};
use support::ValkeyServer;
use tokio::sync::Notify;
use valkeylock::Locker;

/// A free key's commands in valkeylock's acquire script, in its order.
const ACQUIRE: &str = common::STAND_IN_ACQUIRE;

/// valkeylock's read-only check of a key it holds.
const VERIFY: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return redis.call('PTTL', KEYS[1]) end
return cur
"#;

const VARIANTS: [&str; 7] = [
    "floor",
    "script",
    "script+verify",
    "script+redirect",
    "lean",
    "valkeylock",
    "valkeylock (engine)",
];

/// The transports of the ten-task rounds: `script+verify` is left out (its
/// stand-in checks each acquisition from one more thread, which ten tasks
/// would turn into a measure of that thread).
const TEN_TASKS: [&str; 5] = [
    "floor",
    "script",
    "script+redirect",
    "valkeylock",
    "valkeylock (engine)",
];

/// The transports of the one-task rounds on a worker: those of the ten-task
/// rounds, and `lean` (one connection, for one task at a time). Here its
/// task drives its socket from a worker, where fred's connection task
/// runs: it crosses the threads the others cross. On the thread that
/// blocks on the runtime, each fred command crosses to fred's connection
/// task on a worker and back, where `lean`'s task is woken only by the
/// runtime's I/O driver.
const ON_A_WORKER: [&str; 6] = [
    "floor",
    "script",
    "script+redirect",
    "lean",
    "valkeylock",
    "valkeylock (engine)",
];

/// The transports of the hand-over part: lockers contending for one name.
const HANDOVER: [&str; 6] = [
    "floor",
    "woken stand-in",
    "handed stand-in",
    "valkeylock",
    "valkeylock (hand-over)",
    "valkeylock (hand-over, fencing)",
];

/// Lockers of the hand-over part, as in `cross_locker/*/{2,4}` of the locks
/// bench.
const LOCKERS: [usize; 2] = [2, 4];

/// How long a stand-in waits for an invalidation (the woken one) or a
/// hand-over (the handed one) before it tries again anyway (counted, and
/// printed after the part: a wait ended so is a lost wake-up).
const FALLBACK: Duration = Duration::from_millis(100);

/// Tasks of the second part, as in `uncontended/*/10` of the locks bench.
const TASKS: usize = 10;

/// Where a part's tasks run.
#[derive(Clone, Copy)]
enum Tasks {
    /// One task, on the thread that blocks on the runtime (as since this
    /// bench began): not a worker of the runtime.
    Caller,
    /// This many tasks spawned on the runtime's workers, as the locks
    /// bench's criterion and fixed-duration rows run theirs, and as a
    /// server's request handlers run.
    Spawned(usize),
}

impl Tasks {
    fn count(self) -> usize {
        match self {
            Tasks::Caller => 1,
            Tasks::Spawned(n) => n,
        }
    }
}

fn main() {
    let args = Args::parse();
    // `-- handover` runs the hand-over part alone.
    if args.list || !args.wants("lanes handover") {
        return;
    }
    let all_parts = args.wants("lanes");
    let quick = args.quick();
    let (rounds, each) = if quick {
        (1, Duration::from_millis(300))
    } else {
        (8, Duration::from_secs(2))
    };
    let server = ValkeyServer::start();
    let url = server.url();
    let rt = common::runtime();
    println!("# lanes bench: {}", common::machine());
    let tck = common::clk_tck();
    if all_parts {
        let engine = Engine::start(&url);
        rt.block_on(transports(&url, engine, rounds, each, tck));
    }
    rt.block_on(async {
        let handover = Handover::connect(&url, *LOCKERS.iter().max().unwrap_or(&2)).await;
        for n in LOCKERS {
            let title = format!("Hand-over, {n} lockers, ");
            let all = rounds_of(
                &handover,
                &HANDOVER,
                Tasks::Spawned(n),
                rounds,
                each,
                tck,
                &title,
            )
            .await;
            println!();
            medians_of(&all, &HANDOVER, &title);
            println!();
            let mut spread = handover.spread.lock().expect("spread").clone();
            for v in HANDOVER {
                let rounds = spread.entry((n, v)).or_default();
                println!(
                    "{v}: the busiest locker's operations over the least busy one's, median of the rounds {:.2} (from {:.2} to {:.2})",
                    median(rounds),
                    rounds.first().copied().unwrap_or(f64::NAN),
                    rounds.last().copied().unwrap_or(f64::NAN),
                );
            }
        }
        println!();
        println!(
            "woken and handed stand-ins: {} of their waits ended by the {} ms fallback, not by an invalidation or a hand-over",
            handover.fallbacks.load(Ordering::SeqCst),
            FALLBACK.as_millis()
        );
        handover.close().await;
    });
}

/// The first three parts: one task, ten tasks, one task on a worker, through
/// each transport.
async fn transports(url: &str, engine: Engine, rounds: usize, each: Duration, tck: u64) {
    let url = url.to_owned();
    let raw = Raw::connect(&url).await;
    let plain = common::raw_client(&url).await;
    let redirected = common::raw_client(&url).await;
    let _: Value = redirected
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec![
                "TRACKING".to_owned(),
                "ON".into(),
                "REDIRECT".into(),
                engine.id.to_string(),
                "NOLOOP".into(),
            ],
        )
        .await
        .expect("CLIENT TRACKING ON REDIRECT");
    let acquire: String = plain.script_load(ACQUIRE).await.expect("SCRIPT LOAD");
    let release: String = plain
        .script_load(common::RELEASE_LUA)
        .await
        .expect("SCRIPT LOAD");
    let locker = Locker::connect(common::valkeylock_options(std::slice::from_ref(&url), 1))
        .await
        .expect("connect");
    let engine_only = Locker::connect(
        common::valkeylock_options(std::slice::from_ref(&url), 1).with_direct_connections(false),
    )
    .await
    .expect("connect");

    // The redirect carries invalidations to the engine's connection.
    let before = engine.invalidations.load(Ordering::SeqCst);
    let _: Value = redirected
        .evalsha(&acquire, "lanes-check", vec!["t".to_owned(), expiry()])
        .await
        .expect("acquire");
    let _: i64 = plain.del("lanes-check").await.expect("DEL");
    let start = Instant::now();
    while engine.invalidations.load(Ordering::SeqCst) == before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no invalidation reached the engine's connection through the redirect"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("redirect check: the engine's connection got the invalidation of a key the caller's connection read");
    let lean = Lean::connect(&url, engine.id, release.clone()).await;
    let lane = Lane {
        raw,
        plain,
        redirected,
        lean: Arc::new(tokio::sync::Mutex::new(lean)),
        acquire,
        release,
        locker,
        engine_only,
        checks: engine.checks.clone(),
        checks_sent: Arc::new(AtomicU64::new(0)),
        checks_done: engine.checks_done.clone(),
        tokens: Arc::new(AtomicU64::new(0)),
    };
    // One task on one name, on the thread that blocks on the runtime
    // (as since this bench began), then ten tasks on ten names each,
    // then one task spawned on a worker.
    let one = rounds_of(&lane, &VARIANTS, Tasks::Caller, rounds, each, tck, "").await;
    println!();
    medians_of(&one, &VARIANTS, "");
    for (tasks, variants, title) in [
        (Tasks::Spawned(TASKS), &TEN_TASKS[..], "Ten tasks, "),
        (
            Tasks::Spawned(1),
            &ON_A_WORKER[..],
            "One task on a worker, ",
        ),
    ] {
        let all = rounds_of(&lane, variants, tasks, rounds, each, tck, title).await;
        println!();
        medians_of(&all, variants, title);
    }
    lane.locker.close().await;
    lane.engine_only.close().await;
    lane.raw.quit().await;
}

/// What a part's rounds run their transports through.
trait Part {
    /// `variant` for `each`, from `tasks`: the operations done.
    async fn run(&self, variant: &'static str, tasks: Tasks, each: Duration) -> u64;

    /// Waits until what a transport left running is done, so that it does
    /// not run into the next one's time.
    async fn settle(&self);

    /// A connection for the server's statistics.
    fn admin(&self) -> &Client;

    /// How the part's tasks use names, for its tables' headings.
    fn names(&self) -> &'static str;
}

/// What each transport needs, shared by the tasks of a round.
#[derive(Clone)]
struct Lane {
    raw: Raw,
    plain: Client,
    redirected: Client,
    /// One task's at a time: the one-task rounds only.
    lean: Arc<tokio::sync::Mutex<Lean>>,
    acquire: String,
    release: String,
    locker: Locker,
    engine_only: Locker,
    checks: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    /// Checks sent to the stand-in engine, and those it has had answered.
    checks_sent: Arc<AtomicU64>,
    checks_done: Arc<AtomicU64>,
    tokens: Arc<AtomicU64>,
}

impl Lane {
    /// One lock + release of `key` through `variant`.
    async fn op(&self, variant: &str, key: &str) {
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        let token = format!("{n:048x}");
        match variant {
            "floor" => {
                let t = self.raw.lock(key).await;
                self.raw.unlock(key, t).await;
            }
            "lean" => self.lean.lock().await.op(key, &token).await,
            "valkeylock" | "valkeylock (engine)" => {
                let locker = if variant == "valkeylock" {
                    &self.locker
                } else {
                    &self.engine_only
                };
                let g = locker.lock(key).await.expect("lock");
                g.release().await.expect("release");
            }
            _ => {
                let client = self.client_for(variant);
                let got: Value = client
                    .evalsha(&self.acquire, key, vec![token.clone(), expiry()])
                    .await
                    .expect("acquire");
                assert!(matches!(got, Value::String(_)), "{got:?}");
                if variant == "script+verify"
                    && self.checks.send((key.to_owned(), token.clone())).is_ok()
                {
                    self.checks_sent.fetch_add(1, Ordering::Relaxed);
                }
                let _: i64 = client
                    .evalsha(&self.release, key, token)
                    .await
                    .expect("release");
            }
        }
    }

    /// The caller's connection a script transport runs on.
    fn client_for(&self, variant: &str) -> &Client {
        if variant == "script+redirect" {
            &self.redirected
        } else {
            &self.plain
        }
    }

    async fn run_one(self, variant: &'static str, key: String, each: Duration) -> u64 {
        let t0 = Instant::now();
        let mut ops = 0u64;
        while t0.elapsed() < each {
            self.op(variant, &key).await;
            ops += 1;
        }
        ops
    }
}

impl Part for Lane {
    /// `variant` for `each`, from `tasks` on names of their own: the
    /// operations done.
    async fn run(&self, variant: &'static str, tasks: Tasks, each: Duration) -> u64 {
        let slug = slug(variant);
        let n = match tasks {
            Tasks::Caller => {
                return self
                    .clone()
                    .run_one(variant, format!("lanes-{slug}"), each)
                    .await
            }
            Tasks::Spawned(n) => n,
        };
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let lane = self.clone();
                tokio::spawn(lane.run_one(variant, format!("lanes-{slug}-{i}"), each))
            })
            .collect();
        let mut ops = 0;
        for h in handles {
            ops += h.await.expect("a lane task");
        }
        ops
    }

    /// Waits (at most 10 s) until the stand-in engine has had every check
    /// answered: `script+verify` leaves it a backlog, which must not run
    /// into the next transport's time.
    async fn settle(&self) {
        let start = Instant::now();
        while self.checks_done.load(Ordering::SeqCst) < self.checks_sent.load(Ordering::SeqCst)
            && start.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn admin(&self) -> &Client {
        &self.plain
    }

    fn names(&self) -> &'static str {
        "each on its own name"
    }
}

/// One transport's measurements in one round.
#[derive(Clone, Copy)]
struct Measured {
    us_per_op: f64,
    ops: u64,
    /// `us_per_op` over the floor's of the same round.
    ratio: f64,
    server_cpu: f64,
    client_cpu: f64,
    commands: f64,
    /// The server's time in the commands the transport sent (`INFO
    /// commandstats`): its script calls, and the floor's `SET`s. A script's
    /// own commands run inside its call's time, so they are not added again.
    command_us: f64,
    /// Reads and writes of client sockets by the server (`INFO stats`,
    /// `total_reads_processed` and `total_writes_processed`): how many
    /// commands each of its system calls carried.
    reads: f64,
    writes: f64,
    /// Voluntary context switches of this process's threads: how often a
    /// thread went to sleep and was woken again.
    switches: f64,
}

/// The server's time so far, in µs, in the commands a transport sends
/// itself: script calls, and `SET` when `sets` (the floor's acquisitions;
/// for every other transport a `SET` runs inside a script, whose time
/// already counts it).
async fn command_usec(admin: &Client, sets: bool) -> f64 {
    common::command_usec(admin)
        .await
        .into_iter()
        .filter(|(name, _)| matches!(name.as_str(), "evalsha" | "eval") || (sets && name == "set"))
        .map(|(_, usec)| usec)
        .sum()
}

/// The server's reads and writes of client sockets so far.
async fn server_io(admin: &Client) -> (u64, u64) {
    let info: String = admin
        .info(Some(fred::types::InfoKind::Stats))
        .await
        .unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("total_reads_processed"),
        field("total_writes_processed"),
    )
}

/// Alternated rounds of `variants` (the first is the floor), each round in
/// an order of its own (`order`): no transport always follows the same one
/// (another's leftover work, a warm cache). Until this bench measured ten
/// tasks, each round only started one transport later, which kept every
/// transport behind the same one in all but one round of six. Prints the
/// rounds' table with each transport's place in its round; returns every
/// round's measurements, by transport.
async fn rounds_of(
    lane: &impl Part,
    variants: &[&'static str],
    tasks: Tasks,
    rounds: usize,
    each: Duration,
    tck: u64,
    title: &str,
) -> Vec<Vec<Measured>> {
    println!();
    let n = tasks.count();
    println!(
        "## {title}Rounds ({rounds} of {each:?} per transport, {n} task(s), {})",
        lane.names()
    );
    println!();
    println!("| round | transport | place in the round | µs per lock + release | ops | × floor of the round | server CPU µs/op | client CPU µs/op | server commands/op | server reads/op | server writes/op | client context switches/op | server µs in commands/op |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut all: Vec<Vec<Measured>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        let mut got: Vec<Option<Measured>> = vec![None; variants.len()];
        let order = order(variants.len(), round);
        for &v in &order {
            let sets = variants[v] == "floor";
            let io_before = server_io(lane.admin()).await;
            let usec_before = command_usec(lane.admin(), sets).await;
            let before = common::Cost::now(lane.admin()).await;
            let switched = common::context_switches().0;
            let t0 = Instant::now();
            let ops = lane.run(variants[v], tasks, each).await;
            let us = t0.elapsed().as_secs_f64() * 1e6 / ops.max(1) as f64;
            let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / ops.max(1) as f64;
            let switches = per(common::context_switches().0, switched);
            lane.settle().await;
            let after = common::Cost::now(lane.admin()).await;
            let io_after = server_io(lane.admin()).await;
            let usec_after = command_usec(lane.admin(), sets).await;
            let (commands, server_cpu, client_cpu) = after.per_op(&before, ops, tck);
            got[v] = Some(Measured {
                us_per_op: us,
                ops,
                // Filled in once the round's floor is known.
                ratio: f64::NAN,
                server_cpu,
                client_cpu,
                commands,
                command_us: (usec_after - usec_before) / ops.max(1) as f64,
                reads: per(io_after.0, io_before.0),
                writes: per(io_after.1, io_before.1),
                switches,
            });
        }
        let floor = got[0].map_or(f64::NAN, |m| m.us_per_op);
        for (v, variant) in variants.iter().enumerate() {
            let place = order.iter().position(|&o| o == v).unwrap_or(v) + 1;
            let Some(mut m) = got[v] else { continue };
            m.ratio = m.us_per_op / floor;
            all[v].push(m);
            let Measured {
                us_per_op: us,
                ops,
                ratio,
                server_cpu,
                client_cpu,
                commands,
                reads,
                writes,
                switches,
                command_us,
            } = m;
            println!(
                "| {round} | {variant} | {place} | {us:.1} | {ops} | {} | {server_cpu:.1} | {client_cpu:.1} | {commands:.2} | {reads:.2} | {writes:.2} | {switches:.2} | {command_us:.2} |",
                common::fmt_ratio(ratio)
            );
        }
    }
    all
}

/// The medians over the rounds, by transport.
fn medians_of(all: &[Vec<Measured>], variants: &[&str], title: &str) {
    println!("## {title}Medians over the rounds");
    println!();
    println!("| transport | median µs per lock + release | median × floor of the round | median server CPU µs/op | median client CPU µs/op | server commands/op | median server reads/op | median server writes/op | median client context switches/op | median server µs in commands/op |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (v, variant) in variants.iter().enumerate() {
        let pick = |f: fn(&Measured) -> f64| median(&mut all[v].iter().map(f).collect::<Vec<_>>());
        println!(
            "| {variant} | {:.1} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            pick(|m| m.us_per_op),
            common::fmt_ratio(pick(|m| m.ratio)),
            pick(|m| m.server_cpu),
            pick(|m| m.client_cpu),
            pick(|m| m.commands),
            pick(|m| m.reads),
            pick(|m| m.writes),
            pick(|m| m.switches),
            pick(|m| m.command_us),
        );
    }
}

/// The `lean` transport's connection: the tests' plain RESP2 connection
/// (`support::proxy::RawConn`), the commands of one step written together.
struct Lean {
    conn: RawConn,
    release: String,
}

impl Lean {
    /// Connects to `url`'s server with tracking redirected to `engine`.
    async fn connect(url: &str, engine: i64, release: String) -> Lean {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the server's url");
        let mut conn = RawConn::connect(port, &[]).await.expect("lean connect");
        let engine = engine.to_string();
        let ok = conn
            .cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &engine, "NOLOOP"])
            .await
            .expect("CLIENT TRACKING ON REDIRECT");
        assert_eq!(ok, Resp::Simple("OK".into()), "CLIENT TRACKING ON REDIRECT");
        Lean { conn, release }
    }

    /// One lock + release of `key` under `token`.
    async fn op(&mut self, key: &str, token: &str) {
        let queue = format!("{{{key}}}:q");
        let at = expiry();
        let (key, token) = (key.as_bytes(), token.as_bytes());
        let got = self
            .conn
            .together(&[
                &[b"SET", key, token, b"NX", b"PXAT", at.as_bytes()],
                &[b"GET", key],
                &[b"EXISTS", queue.as_bytes()],
            ])
            .await
            .expect("lean acquire");
        assert_eq!(got[0], Resp::Simple("OK".into()), "SET NX of a free key");
        assert_eq!(got[1], Resp::Bulk(Some(token.to_vec())), "GET: not ours");
        assert_eq!(got[2], Resp::Int(0), "EXISTS of the queue");
        let deleted = self
            .conn
            .together(&[&[b"EVALSHA", self.release.as_bytes(), b"1", key, token]])
            .await
            .expect("lean release");
        assert_eq!(deleted[0], Resp::Int(1), "compare-and-delete");
    }
}

/// `variant` as a part of a key's name.
fn slug(variant: &str) -> String {
    variant
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The hand-over part: lockers contending for one name, each with
/// connections of its own (the `cross_locker` rows of the locks bench, in
/// one process).
#[derive(Clone)]
struct Handover {
    contenders: Vec<Contender>,
    admin: Client,
    acquire: String,
    release: String,
    handed_acquire: String,
    handed_release: String,
    tokens: Arc<AtomicU64>,
    /// Waits of the woken and handed stand-ins that `FALLBACK` ended.
    fallbacks: Arc<AtomicU64>,
    /// By lockers and transport, each round's operations of the busiest
    /// contender over the least busy one's.
    spread: Arc<Mutex<Spread>>,
}

/// By lockers and transport, a value per round.
type Spread = BTreeMap<(usize, &'static str), Vec<f64>>;

/// One contender's connections, one per transport.
#[derive(Clone)]
struct Contender {
    raw: Raw,
    /// RESP3 with tracking on (`NOLOOP`, no redirect): the invalidations of
    /// the keys its reads touched come to this connection, on the caller's
    /// runtime, with no engine and no thread between.
    woken: Client,
    invalidated: Arc<Notify>,
    /// The handed stand-in's channel, and the tokens the keys handed to it
    /// carry, as they come.
    channel: String,
    handed: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    locker: Locker,
    /// The same with `handover` on.
    handing: Locker,
    /// The same with `handover` and `fencing` on.
    fenced: Locker,
}

impl Handover {
    async fn connect(url: &str, n: usize) -> Handover {
        let admin = common::raw_client(url).await;
        let acquire: String = admin.script_load(ACQUIRE).await.expect("SCRIPT LOAD");
        let release: String = admin
            .script_load(common::RELEASE_LUA)
            .await
            .expect("SCRIPT LOAD");
        let handed_acquire: String = admin
            .script_load(common::HANDED_ACQUIRE)
            .await
            .expect("SCRIPT LOAD");
        let handed_release: String = admin
            .script_load(common::HANDED_RELEASE)
            .await
            .expect("SCRIPT LOAD");
        let mut contenders = Vec::with_capacity(n);
        for i in 0..n {
            let mut config = Config::from_url(url).expect("url");
            config.version = RespVersion::RESP3;
            let woken = Builder::from_config(config)
                .with_connection_config(|c| c.tcp.nodelay = Some(true))
                .build()
                .expect("fred client");
            woken.init().await.expect("connect");
            let _: () = woken
                .start_tracking(Vec::<String>::new(), false, false, false, true)
                .await
                .expect("CLIENT TRACKING");
            let invalidated = Arc::new(Notify::new());
            let notify = invalidated.clone();
            // A permit is kept when nobody waits yet: an invalidation that
            // comes before its waiter is not lost.
            let _task = woken.on_invalidation(move |_| {
                notify.notify_one();
                Ok(())
            });
            // RESP3: the channel's messages come on the same connection
            // as the replies.
            let channel = format!("lanes-handed-{i}");
            woken.subscribe(channel.as_str()).await.expect("SUBSCRIBE");
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let mut messages = woken.message_rx();
            tokio::spawn(async move {
                while let Ok(m) = messages.recv().await {
                    if let Some(token) = m.value.as_string() {
                        if tx.send(token).is_err() {
                            break;
                        }
                    }
                }
            });
            contenders.push(Contender {
                raw: Raw::connect(url).await,
                woken,
                invalidated,
                channel,
                handed: Arc::new(tokio::sync::Mutex::new(rx)),
                locker: Locker::connect(common::valkeylock_options(&[url.to_owned()], 1))
                    .await
                    .expect("connect"),
                handing: Locker::connect(
                    common::valkeylock_options(&[url.to_owned()], 1).with_handover(true),
                )
                .await
                .expect("connect"),
                fenced: Locker::connect(
                    common::valkeylock_options(&[url.to_owned()], 1)
                        .with_handover(true)
                        .with_fencing(true),
                )
                .await
                .expect("connect"),
            });
        }
        Handover {
            contenders,
            admin,
            acquire,
            release,
            handed_acquire,
            handed_release,
            tokens: Arc::new(AtomicU64::new(0)),
            fallbacks: Arc::new(AtomicU64::new(0)),
            spread: Arc::default(),
        }
    }

    /// One lock + release of `key` by `c` through `variant`.
    async fn op(&self, c: &Contender, variant: &str, key: &str) {
        match variant {
            "floor" => {
                let t = c.raw.lock(key).await;
                c.raw.unlock(key, t).await;
            }
            "valkeylock" => {
                let g = c.locker.lock(key).await.expect("lock");
                g.release().await.expect("release");
            }
            "valkeylock (hand-over)" => {
                let g = c.handing.lock(key).await.expect("lock");
                g.release().await.expect("release");
            }
            "valkeylock (hand-over, fencing)" => {
                let g = c.fenced.lock(key).await.expect("lock");
                g.release().await.expect("release");
            }
            "handed stand-in" => self.stand_in(c, key, true).await,
            _ => self.stand_in(c, key, false).await,
        }
    }

    /// A stand-in's lock + release. The woken stand-in waits, while the
    /// key is held, for its connection's invalidation of the key, then
    /// tries again. The handed one (`handed`) leaves a claim instead and
    /// waits for the holder's release to hand the key over (a message on
    /// its channel with its token), with no attempt of its own after that.
    async fn stand_in(&self, c: &Contender, key: &str, handed: bool) {
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        let token = format!("{n:048x}");
        let (acquire, release, keys) = if handed {
            let claims = format!("{{{key}}}:h");
            (
                &self.handed_acquire,
                &self.handed_release,
                vec![key.to_owned(), claims],
            )
        } else {
            (&self.acquire, &self.release, vec![key.to_owned()])
        };
        loop {
            let args = if handed {
                let life = common::TTL_MS.to_string();
                vec![token.clone(), life.clone(), life, c.channel.clone()]
            } else {
                vec![token.clone(), expiry()]
            };
            let got: Value = c
                .woken
                .evalsha(acquire, keys.clone(), args)
                .await
                .expect("acquire");
            match got.as_str() {
                Some(holder) if holder == token.as_str() => break,
                // Held: the read armed tracking (and left a claim).
                Some(_) => {
                    let ended = if handed {
                        let ours = async {
                            // Tokens of earlier operations, handed after
                            // their claimant had the key anyway, are passed
                            // over.
                            let mut handed_to = c.handed.lock().await;
                            while let Some(t) = handed_to.recv().await {
                                if t == token {
                                    return true;
                                }
                            }
                            false
                        };
                        tokio::time::timeout(FALLBACK, ours).await.unwrap_or(false)
                    } else {
                        let woken = c.invalidated.notified();
                        tokio::time::timeout(FALLBACK, woken).await.is_ok()
                    };
                    if !ended {
                        self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    } else if handed {
                        break;
                    }
                }
                // Freed between the reads: at once again.
                None => {}
            }
        }
        let _: i64 = c
            .woken
            .evalsha(release, keys, token)
            .await
            .expect("release");
    }

    async fn close(self) {
        for c in self.contenders {
            c.locker.close().await;
            c.handing.close().await;
            c.fenced.close().await;
            c.raw.quit().await;
            let _ = c.woken.quit().await;
        }
        let _ = self.admin.quit().await;
    }
}

impl Part for Handover {
    async fn run(&self, variant: &'static str, tasks: Tasks, each: Duration) -> u64 {
        let slug = slug(variant);
        let key = format!("lanes-handover-{slug}");
        let t0 = Instant::now();
        let n = tasks.count().min(self.contenders.len());
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (part, key) = (self.clone(), key.clone());
                tokio::spawn(async move {
                    let mut ops = 0u64;
                    while t0.elapsed() < each {
                        part.op(&part.contenders[i], variant, &key).await;
                        ops += 1;
                    }
                    ops
                })
            })
            .collect();
        let mut each_ops = Vec::with_capacity(n);
        for h in handles {
            each_ops.push(h.await.expect("a contender"));
        }
        let (most, least) = (
            each_ops.iter().max().copied().unwrap_or(0),
            each_ops.iter().min().copied().unwrap_or(0),
        );
        self.spread
            .lock()
            .expect("spread")
            .entry((n, variant))
            .or_default()
            .push(most as f64 / least.max(1) as f64);
        each_ops.iter().sum()
    }

    async fn settle(&self) {}

    fn admin(&self) -> &Client {
        &self.admin
    }

    fn names(&self) -> &'static str {
        "all on one name, each with connections of its own"
    }
}

/// A stand-in for the engine: its own thread and current-thread runtime, a
/// RESP3 connection with tracking on (`NOLOOP`), counting the invalidations
/// it gets, and running checks sent to it without the sender waiting.
struct Engine {
    id: i64,
    invalidations: Arc<AtomicU64>,
    checks: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    /// Checks answered.
    checks_done: Arc<AtomicU64>,
}

impl Engine {
    fn start(url: &str) -> Engine {
        let (checks, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let (id_tx, id_rx) = std::sync::mpsc::channel();
        let invalidations = Arc::new(AtomicU64::new(0));
        let checks_done = Arc::new(AtomicU64::new(0));
        let (url, count, done) = (url.to_owned(), invalidations.clone(), checks_done.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("engine runtime");
            rt.block_on(async move {
                let mut config = Config::from_url(&url).expect("url");
                config.version = RespVersion::RESP3;
                let client = Builder::from_config(config).build().expect("client");
                client.init().await.expect("engine connect");
                let _: () = client
                    .start_tracking(Vec::<String>::new(), false, false, false, true)
                    .await
                    .expect("CLIENT TRACKING");
                let _task = client.on_invalidation(move |_| {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                });
                let verify: String = client.script_load(VERIFY).await.expect("SCRIPT LOAD");
                let id: i64 = client
                    .custom(
                        CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
                        vec!["ID"],
                    )
                    .await
                    .expect("CLIENT ID");
                let _ = id_tx.send(id);
                while let Some((key, token)) = rx.recv().await {
                    let (client, verify, done) = (client.clone(), verify.clone(), done.clone());
                    tokio::spawn(async move {
                        let _: Result<Value, _> = client.evalsha(&verify, key, token).await;
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
        });
        Engine {
            id: id_rx.recv().expect("the engine's connection id"),
            invalidations,
            checks,
            checks_done,
        }
    }
}
