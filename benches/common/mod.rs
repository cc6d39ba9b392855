//! Shared by the bench binaries: run modes (full, `CI`), the three
//! implementations compared (valkeylock, rslock, the raw command floor), timed
//! workloads, percentiles, `/proc` readers and criterion's saved estimates.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::TcpConfig;
use fred::types::{Expiration, SetOptions};
use tokio::time::Instant;
use valkeylock::{Locker, LockerOptions};

/// TTL of every key in the throughput benches (ms), for all implementations.
pub(crate) const TTL_MS: u64 = 5000;

/// The compare-and-delete the floor sends (the same text as valkeylock's release
/// script and rslock's unlock script, modulo whitespace).
pub(crate) const RELEASE_LUA: &str =
    "if redis.call('GET',KEYS[1])==ARGV[1] then return redis.call('DEL',KEYS[1]) end return 0";

/// True when the environment variable `CI` is set (to anything but empty):
/// short runs, fewer samples.
pub(crate) fn ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Command-line view shared by the binaries: criterion's `--test` / `--list`
/// modes, and the positional filter (substring) that also gates the
/// non-criterion sections.
#[derive(Debug, Clone, Default)]
pub(crate) struct Args {
    pub(crate) filter: Option<String>,
    pub(crate) test: bool,
    pub(crate) list: bool,
}

impl Args {
    pub(crate) fn parse() -> Args {
        // Criterion options that take a value: their value is not a filter.
        const WITH_VALUE: &[&str] = &[
            "--save-baseline",
            "-s",
            "--baseline",
            "-b",
            "--baseline-lenient",
            "--load-baseline",
            "--measurement-time",
            "--warm-up-time",
            "--sample-size",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
            "--color",
            "-c",
            "--output-format",
            "--plotting-backend",
            "--format",
        ];
        let mut args = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--test" {
                args.test = true;
            } else if a == "--list" {
                args.list = true;
            } else if WITH_VALUE.contains(&a.as_str()) {
                let _ = it.next();
            } else if !a.starts_with('-') && args.filter.is_none() {
                args.filter = Some(a);
            }
        }
        args
    }

    /// Should the section `name` run?
    pub(crate) fn wants(&self, name: &str) -> bool {
        !self.list && self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// Short runs: `CI` set, or criterion's `--test` (`cargo test --benches`).
    pub(crate) fn quick(&self) -> bool {
        self.test || ci()
    }
}

/// The runtime every bench uses: tokio multi-threaded, one worker per core
/// (2 on the reference machine), shared with the servers' CPU.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// valkeylock's options for one server: `key_majority` 1 (one key per lock),
/// default 5 s validity.
pub(crate) fn valkeylock_options(urls: &[String], key_majority: usize) -> LockerOptions {
    LockerOptions::new(urls.iter().cloned())
        .with_key_majority(key_majority)
        .with_key_validity(Duration::from_millis(TTL_MS))
}

/// The "raw floor": the commands of a lock and nothing else, through one fred
/// client: `SET key token NX PX 5000` until it succeeds, then the
/// compare-and-delete script by `EVALSHA`. No queue, no wake-ups, no
/// extension, no loss detection.
#[derive(Clone)]
pub(crate) struct Raw {
    inner: Arc<RawInner>,
}

struct RawInner {
    client: Client,
    sha: String,
    seed: u64,
    next: AtomicU64,
}

impl Raw {
    pub(crate) async fn connect(url: &str) -> Raw {
        let client = raw_client(url).await;
        let sha: String = client.script_load(RELEASE_LUA).await.expect("SCRIPT LOAD");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Raw {
            inner: Arc::new(RawInner {
                client,
                sha,
                seed,
                next: AtomicU64::new(0),
            }),
        }
    }

    /// A fresh 48-character token per acquisition (valkeylock's are 48 hex
    /// characters too); unique, not random.
    fn token(&self) -> String {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:032x}", self.inner.seed, n)
    }

    /// Spins `SET NX PX` until it succeeds; returns the token.
    pub(crate) async fn lock(&self, key: &str) -> String {
        let token = self.token();
        loop {
            let ok: Option<String> = self
                .inner
                .client
                .set(
                    key,
                    token.as_str(),
                    Some(Expiration::PX(TTL_MS as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .expect("SET NX");
            if ok.is_some() {
                return token;
            }
        }
    }

    /// Compare-and-delete by `EVALSHA`, not waited for: the command is
    /// handed to the connection now (its future polled once), so the next
    /// `SET` goes right behind it, and its reply is taken by a task.
    pub(crate) fn unlock_nowait(&self, key: &str, token: String) {
        let (raw, key) = (self.clone(), key.to_owned());
        let mut del = Box::pin(async move { raw.unlock(&key, token).await });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if std::future::Future::poll(del.as_mut(), &mut cx).is_pending() {
            tokio::spawn(del);
        }
    }

    /// Compare-and-delete by `EVALSHA`.
    pub(crate) async fn unlock(&self, key: &str, token: String) {
        let _: i64 = self
            .inner
            .client
            .evalsha(self.inner.sha.as_str(), key, token)
            .await
            .expect("EVALSHA");
    }

    /// The fred client underneath.
    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    pub(crate) async fn quit(&self) {
        let _ = self.inner.client.quit().await;
    }
}

/// A plain fred client (RESP2 by default, `TCP_NODELAY` like valkeylock's).
pub(crate) async fn raw_client(url: &str) -> Client {
    let config = Config::from_url(url).expect("url");
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            }
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
        .build()
        .expect("fred client");
    client.init().await.expect("connect");
    client
}

/// One of the implementations compared.
#[derive(Clone)]
pub(crate) enum Imp {
    Valkeylock(Locker),
    /// rslock's `LockManager` with `set_retry(1, _)`: one attempt per
    /// `lock()`, no sleep, and `acquire()` loops on it: a spin, like the floor.
    Rslock(rslock::LockManager),
    Raw(Raw),
    /// valkeylock with the guard dropped instead of `release().await`ed (as
    /// the Go valkeylock's `cancel()`, which does not wait for the delete).
    ValkeylockDrop(Locker),
    /// The floor with its delete not waited for ([`Raw::unlock_nowait`]).
    RawNoWait(Raw),
}

/// Which implementation, for connecting and for labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Valkeylock,
    Rslock,
    Raw,
    /// Not in [`Kind::ALL`]: the one-task loop only.
    ValkeylockDrop,
    /// Not in [`Kind::ALL`]: the one-task loop only.
    RawNoWait,
    /// valkeylock with `handover` on. Not in [`Kind::ALL`]: the
    /// cross-locker rows only ([`Kind::HANDOVER`]).
    ValkeylockHandover,
}

impl Kind {
    pub(crate) const ALL: [Kind; 3] = [Kind::Valkeylock, Kind::Rslock, Kind::Raw];

    /// The cross-locker rows: every kind, and valkeylock with hand-over.
    pub(crate) const HANDOVER: [Kind; 4] = [
        Kind::Valkeylock,
        Kind::ValkeylockHandover,
        Kind::Rslock,
        Kind::Raw,
    ];

    /// The kind whose [`Kind::label`] is `label`.
    pub(crate) fn from_label(label: &str) -> Option<Kind> {
        Kind::HANDOVER.into_iter().find(|k| k.label() == label)
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Valkeylock => "valkeylock",
            Kind::Rslock => "rslock",
            Kind::Raw => "raw",
            Kind::ValkeylockDrop => "valkeylock-drop",
            Kind::RawNoWait => "raw-nowait",
            Kind::ValkeylockHandover => "valkeylock-handover",
        }
    }

    /// A lock name in this implementation's own key space, so that keys of
    /// different implementations never collide on a shared server.
    pub(crate) fn name(self, base: &str) -> String {
        format!("bench-{}-{base}", self.label())
    }

    /// Connects one instance (its own connections) to `urls`. valkeylock uses
    /// `key_majority = urls.len() / 2 + 1` (1 for one server, 2 for three),
    /// rslock its quorum `n/2 + 1`; the floor only supports one server.
    pub(crate) async fn connect(self, urls: &[String]) -> Imp {
        match self {
            Kind::Valkeylock => {
                let m = urls.len() / 2 + 1;
                Imp::Valkeylock(
                    Locker::connect(valkeylock_options(urls, m))
                        .await
                        .expect("valkeylock connect"),
                )
            }
            Kind::Rslock => {
                let mut m = rslock::LockManager::new(urls.to_vec());
                m.set_retry(1, Duration::from_millis(1));
                // Open the connections now rather than inside the first
                // measured operation.
                let g = m
                    .acquire("bench-rslock-warmup", Duration::from_millis(TTL_MS))
                    .await
                    .expect("rslock");
                let _ = g.release().await;
                Imp::Rslock(m)
            }
            Kind::Raw => {
                assert_eq!(urls.len(), 1, "the raw floor talks to one server");
                Imp::Raw(Raw::connect(&urls[0]).await)
            }
            Kind::ValkeylockHandover => {
                let m = urls.len() / 2 + 1;
                Imp::Valkeylock(
                    Locker::connect(valkeylock_options(urls, m).with_handover(true))
                        .await
                        .expect("valkeylock connect"),
                )
            }
            Kind::ValkeylockDrop => match Box::pin(Kind::Valkeylock.connect(urls)).await {
                Imp::Valkeylock(l) => Imp::ValkeylockDrop(l),
                _ => unreachable!("a valkeylock instance"),
            },
            Kind::RawNoWait => match Box::pin(Kind::Raw.connect(urls)).await {
                Imp::Raw(r) => Imp::RawNoWait(r),
                _ => unreachable!("a raw instance"),
            },
        }
    }
}

impl Imp {
    /// One lock + unlock of `name`; returns how long the lock took to get
    /// (the wait, including contention).
    pub(crate) async fn op(&self, name: &str) -> Duration {
        let start = Instant::now();
        match self {
            Imp::Valkeylock(l) => {
                let g = l.lock(name).await.expect("valkeylock lock");
                let wait = start.elapsed();
                let _ = g.release().await;
                wait
            }
            Imp::Rslock(m) => {
                let g = m
                    .acquire(name, Duration::from_millis(TTL_MS))
                    .await
                    .expect("rslock acquire");
                let wait = start.elapsed();
                let _ = g.release().await;
                wait
            }
            Imp::Raw(r) => {
                let token = r.lock(name).await;
                let wait = start.elapsed();
                r.unlock(name, token).await;
                wait
            }
            Imp::ValkeylockDrop(l) => {
                let g = l.lock(name).await.expect("valkeylock lock");
                let wait = start.elapsed();
                drop(g);
                wait
            }
            Imp::RawNoWait(r) => {
                let token = r.lock(name).await;
                let wait = start.elapsed();
                r.unlock_nowait(name, token);
                wait
            }
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Imp::Valkeylock(l) | Imp::ValkeylockDrop(l) => l.close().await,
            Imp::Rslock(_) => {}
            Imp::Raw(r) | Imp::RawNoWait(r) => r.quit().await,
        }
    }
}

/// A workload: `tasks` tasks, task `i` using `clients[i % clients.len()]`, all
/// on one name (`shared_name`) or each on its own.
#[derive(Clone)]
pub(crate) struct Workload {
    pub(crate) clients: Vec<Imp>,
    pub(crate) tasks: usize,
    pub(crate) names: Vec<String>,
}

impl Workload {
    pub(crate) fn new(
        clients: Vec<Imp>,
        tasks: usize,
        base: &str,
        kind: Kind,
        shared_name: bool,
    ) -> Workload {
        let names = (0..tasks)
            .map(|i| {
                if shared_name {
                    kind.name(base)
                } else {
                    kind.name(&format!("{base}-{i}"))
                }
            })
            .collect();
        Workload {
            clients,
            tasks,
            names,
        }
    }

    /// Runs exactly `ops` lock+unlock operations, spread over the tasks (each
    /// takes a ticket before locking), and returns the wall time.
    pub(crate) async fn run_ops(&self, ops: u64) -> Duration {
        let tickets = Arc::new(AtomicU64::new(ops));
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.tasks {
            let client = self.clients[i % self.clients.len()].clone();
            let name = self.names[i].clone();
            let tickets = tickets.clone();
            set.spawn(async move {
                while tickets
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    client.op(&name).await;
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("bench task");
        }
        start.elapsed()
    }

    /// Runs for `duration`: every task loops until the deadline. Returns the
    /// per-task op counts and every wait (ns).
    pub(crate) async fn run_for(&self, duration: Duration) -> RunStats {
        let start = Instant::now();
        let end = start + duration;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.tasks {
            let client = self.clients[i % self.clients.len()].clone();
            let name = self.names[i].clone();
            set.spawn(async move {
                let mut waits = Vec::with_capacity(1 << 16);
                while Instant::now() < end {
                    waits.push(client.op(&name).await.as_nanos() as u64);
                }
                (i, waits)
            });
        }
        let mut per_task = vec![0u64; self.tasks];
        let mut waits = Vec::new();
        while let Some(r) = set.join_next().await {
            let (i, w) = r.expect("bench task");
            per_task[i] = w.len() as u64;
            waits.extend(w);
        }
        RunStats {
            elapsed: start.elapsed(),
            per_task,
            waits,
        }
    }
}

/// What a fixed-duration run measured.
#[derive(Debug, Clone)]
pub(crate) struct RunStats {
    pub(crate) elapsed: Duration,
    pub(crate) per_task: Vec<u64>,
    pub(crate) waits: Vec<u64>,
}

impl RunStats {
    pub(crate) fn ops(&self) -> u64 {
        self.per_task.iter().sum()
    }

    pub(crate) fn ops_per_sec(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64()
    }

    /// max/min ops per task; infinite when a task got none.
    pub(crate) fn fairness(&self) -> f64 {
        max_over_min(&self.per_task)
    }
}

/// max/min of `counts` (ops per task, per locker, per process); infinite when
/// one of them is 0.
pub(crate) fn max_over_min(counts: &[u64]) -> f64 {
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    if min == 0 {
        f64::INFINITY
    } else {
        max as f64 / min as f64
    }
}

/// p50, p99, p99.9 and max of `waits` (ns, sorted in place), in µs: the wait
/// columns of the fixed-duration tables.
pub(crate) fn wait_columns(waits: &mut [u64]) -> [f64; 4] {
    [0.50, 0.99, 0.999, 1.0].map(|q| us(quantile(waits, q)))
}

/// An actor that does nothing, to price an actor's life cycle and memory.
pub(crate) struct Nop;

impl ractor::Actor for Nop {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _me: ractor::ActorRef<()>,
        _args: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

/// The `q`-quantile (0..=1) of `values` (sorted in place), nearest rank.
pub(crate) fn quantile(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

pub(crate) fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

pub(crate) fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "∞ (a task got 0)".to_owned()
    }
}

/// Context switches of all of this process's threads so far: (voluntary,
/// involuntary), from `/proc/self/task/*/status`. A voluntary switch is a
/// thread going to sleep, for a tokio worker mostly parking when it runs out
/// of tasks, to be woken again by a futex or epoll.
pub(crate) fn context_switches() -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let value = |l: &str| l.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                total.0 += value(v);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                total.1 += value(v);
            }
        }
    }
    total
}

/// VmRSS of this process in KiB.
pub(crate) fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of this process, in clock ticks (`getconf CLK_TCK`, 100 on
/// Linux).
pub(crate) fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let get = |field: usize| {
        fields
            .get(field - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// Seconds of CPU a server has used (`used_cpu_sys + used_cpu_user` of
/// `INFO cpu`, all its threads).
pub(crate) async fn server_cpu_secs(admin: &Client) -> f64 {
    let info: String = admin
        .info(Some(fred::types::InfoKind::Cpu))
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "used_cpu_sys" | "used_cpu_user").then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Commands a server executed (all `INFO commandstats` calls except `INFO`
/// itself).
pub(crate) fn total_calls(calls: &std::collections::BTreeMap<String, u64>) -> u64 {
    calls
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(_, v)| *v)
        .sum()
}

/// Server and client cost of a stretch of work: commands executed, server CPU,
/// this process's CPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cost {
    calls: u64,
    server_cpu: f64,
    ticks: u64,
}

impl Cost {
    pub(crate) async fn now(admin: &Client) -> Cost {
        Cost {
            calls: total_calls(&command_calls(admin).await),
            server_cpu: server_cpu_secs(admin).await,
            ticks: cpu_ticks(),
        }
    }

    /// Per op since `earlier`: (commands, server CPU µs, client CPU µs).
    pub(crate) fn per_op(&self, earlier: &Cost, ops: u64, tck: u64) -> (f64, f64, f64) {
        let ops = ops.max(1) as f64;
        (
            (self.calls - earlier.calls) as f64 / ops,
            (self.server_cpu - earlier.server_cpu) * 1e6 / ops,
            (self.ticks - earlier.ticks) as f64 * 1e6 / tck as f64 / ops,
        )
    }
}

/// Clock ticks per second for [`cpu_ticks`].
pub(crate) fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

pub(crate) use crate::support::command_calls;

/// Where criterion writes its results: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else `target/criterion` of this package.
pub(crate) fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("criterion")
}

/// Criterion's estimate for `id` (`group/function/parameter`) from this run:
/// the slope (what criterion prints as `time:`) when it has one, else the
/// mean; (lower, point, upper) in ns.
pub(crate) fn criterion_estimate(id: &str) -> Option<(f64, f64, f64)> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let e = if v.get("slope").is_some_and(|s| !s.is_null()) {
        &v["slope"]
    } else {
        &v["mean"]
    };
    let ci = &e["confidence_interval"];
    Some((
        ci["lower_bound"].as_f64()?,
        e["point_estimate"].as_f64()?,
        ci["upper_bound"].as_f64()?,
    ))
}

/// Machine facts for the report header.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cores} cores, {cpu}, {:.1} GiB RAM; load average at start {}",
        mem as f64 / 1024.0 / 1024.0,
        load.join(" ")
    )
}

/// Locker `a` holds `name`, `b` waits for it, `a` releases: ns from the
/// release call until `b`'s acquisition returns (a wake-up by
/// invalidation across lockers).
pub(crate) async fn lock_wakeup(a: &Locker, b: &Locker, name: &str) -> u64 {
    let held = a.lock(name).await.expect("A lock");
    let waiter = tokio::spawn({
        let (b, name) = (b.clone(), name.to_owned());
        async move {
            let got = b.lock(&name).await.expect("B lock");
            let at = Instant::now();
            let _ = got.release().await;
            at
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t0 = Instant::now();
    let _ = held.release().await;
    let at = waiter.await.expect("waiter");
    at.saturating_duration_since(t0).as_nanos() as u64
}

/// The order of round `round`'s `n` variants: a shuffle drawn from a
/// fixed seed (the same orders in every run), so that which variant runs
/// before which changes from round to round.
pub(crate) fn order(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    // splitmix64 of the round number.
    let mut x = (round as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
}

/// The median of `values` (the upper one of an even count), sorting them.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A free key's commands in valkeylock's acquire script, in its order, bare
/// (`EXISTS` of the fair queue, `SET … NX PXAT`, `GET`): the stand-in of
/// the lanes and script_cost benches. `ARGV`: the token, the expiry (Unix
/// ms). Reply: the key's value after the write (the token when taken).
pub(crate) const STAND_IN_ACQUIRE: &str = r#"
if redis.call('EXISTS', '{' .. KEYS[1] .. '}:q') == 1 then return {1, 0} end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2])
return redis.call('GET', KEYS[1])
"#;

/// The handed stand-in's acquisition (the lanes and script_cost benches): the stand-in's script, and, when the
/// key is held, a claim on it: the caller's token and channel in the
/// sorted set `{key}:h`, scored by when the claim lapses (the server's
/// milliseconds). `ARGV`: token, validity (ms), claim life (ms), channel.
pub(crate) const HANDED_ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return cur end
if cur then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1] .. ' ' .. ARGV[4])
  return cur
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('GET', KEYS[1])
"#;

/// The handed stand-in's release: the compare-and-delete, except that a
/// key with a live claim goes to the oldest claim instead, expiring when the
/// claim would have, and its claimant is told on its channel.
pub(crate) const HANDED_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if head[1] then
  redis.call('ZREM', KEYS[2], head[1])
  local sp = string.find(head[1], ' ', 1, true)
  local token = string.sub(head[1], 1, sp - 1)
  redis.call('SET', KEYS[1], token, 'PX', math.max(1, tonumber(head[2]) - now))
  redis.call('PUBLISH', string.sub(head[1], sp + 1), token)
  return 2
end
return redis.call('DEL', KEYS[1])
"#;

/// The server's time so far in each command, in µs (`INFO commandstats`,
/// `usec`), by command name. A script's own commands count both inside
/// its call and under their own names.
pub(crate) async fn command_usec(admin: &Client) -> std::collections::BTreeMap<String, f64> {
    crate::support::command_stat(admin, "usec").await
}

/// The benches' validity from now, as a Unix time in milliseconds (`PXAT`).
pub(crate) fn expiry() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_millis() + u128::from(TTL_MS)).to_string()
}
