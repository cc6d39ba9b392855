//! A Jepsen-style history of lock grants, waits and faults, on one clock, and
//! the checker that reads it.
//!
//! # The clock
//! Every timestamp is nanoseconds of `CLOCK_MONOTONIC` ([`mono_ns`]). It is
//! system-wide on Linux, so timestamps taken in different processes of one
//! machine compare directly (the multi-process test relies on it). `std`'s
//! and tokio's `Instant` are the same clock on Linux; [`mono_of`] converts one.
//!
//! # What a grant interval is
//! A grant starts when `lock()` returned to the holder. It ends at
//! - `told`: the earliest of (the holder calls `release`, the holder observes
//!   `lost()` firing, the holder observes `is_held() == false`) — the moment
//!   the library told the holder, measured from the holder's side, so
//!   scheduling latency can only make it later (conservative);
//! - `last_held`: the last moment the holder *acted* believing it held the
//!   lock (it checked `is_held()` and then took a timestamp). A holder that
//!   checks `is_held()` before each action never acts after this.
//!
//! # Capacity
//! Each name has a capacity: 1 for a lock (the default), `permits` for a
//! semaphore ([`History::set_capacity`]). A permit's grant is recorded under
//! the semaphore's name, with its slot.
//!
//! The checker reports every instant at which more than `capacity` clients
//! held grants of one name, under both definitions of the end; for a lock
//! that is any overlap of two clients' intervals. Each violation is
//! witnessed by `capacity + 1` grants of different clients, all in force
//! when the last of them started. A permit's slot is a lock of its own, so
//! two clients' grants of one slot must not overlap either. Faults outside
//! the model (a third party deleting or overwriting keys, a server restarted
//! empty at once) are recorded as such, and a violation that they explain is
//! reported apart ("excused").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn mono_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A tokio (or std) `Instant` on the [`mono_ns`] scale.
pub fn mono_of(i: tokio::time::Instant) -> u64 {
    let (now_i, now_m) = (tokio::time::Instant::now(), mono_ns());
    if i >= now_i {
        now_m + (i - now_i).as_nanos() as u64
    } else {
        now_m.saturating_sub((now_i - i).as_nanos() as u64)
    }
}

/// A Unix time in ms (as a `valkey-server` on this machine stores key
/// expiries: `PEXPIRETIME`) on the [`mono_ns`] scale, using the current
/// offset between `CLOCK_REALTIME` and `CLOCK_MONOTONIC`.
pub fn mono_of_unix_ms(unix_ms: u64) -> u64 {
    let rt = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let real_ns = rt.tv_sec as u64 * 1_000_000_000 + rt.tv_nsec as u64;
    let offset = real_ns.saturating_sub(mono_ns());
    (unix_ms * 1_000_000).saturating_sub(offset)
}

/// Milliseconds between two [`mono_ns`] stamps, as a float (`b − a`).
pub fn ms_between(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1e6
}

/// The seed: `VALKEYLOCK_SEED` if set (decimal or 0x-hex), else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("VALKEYLOCK_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("VALKEYLOCK_SEED={s:?} is not a number"))
        }
        Err(_) => default,
    }
}

/// The nemesis duration: `VALKEYLOCK_NEMESIS_SECS` if set, else `default`.
pub fn nemesis_duration(default_secs: f64) -> Duration {
    let secs = std::env::var("VALKEYLOCK_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(default_secs);
    Duration::from_secs_f64(secs.max(1.0))
}

/// SplitMix64: a small, fixed, seedable generator (no dependency, same
/// sequence on every platform).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator derived from this seed and a stream number.
    pub fn fork(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Index into `weights`, chosen with probability proportional to weight.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < u64::from(w) {
                return i;
            }
            x -= u64::from(w);
        }
        weights.len() - 1
    }
}

/// One grant, from the holder's side.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantRecord {
    pub client: String,
    pub name: String,
    /// `lock()` returned.
    pub acquired: u64,
    /// The last action taken while `is_held()` was true.
    pub last_held: u64,
    /// Release called, or loss observed (`lost()` or `is_held() == false`).
    pub told: u64,
    /// The last `valid_until()` seen while held.
    pub valid_until: Option<u64>,
    /// `released`, or a `LostReason` label.
    pub reason: String,
    /// The slot, for a permit of a semaphore (`name` is then the
    /// semaphore's name).
    pub slot: Option<u32>,
}

/// One `lock()` / `try_lock()` call.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitRecord {
    pub client: String,
    pub name: String,
    pub started: u64,
    pub ended: u64,
    /// `ok`, `not_locked`, `timeout` (stuck), or an error label.
    pub outcome: String,
    /// A waiting `lock()` (true) or a single attempt (false).
    pub waits: bool,
}

/// One fault the nemesis injected.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRecord {
    pub kind: String,
    pub target: String,
    pub injected: u64,
    pub healed: u64,
    /// The lock name it is aimed at, `*` for all.
    pub name: String,
    /// Outside the system model (a third party writes lock keys, a server
    /// restarts empty at once): overlaps right after it are excused, and
    /// reported apart.
    pub out_of_model: bool,
}

#[derive(Debug, Default)]
struct Data {
    grants: Vec<GrantRecord>,
    waits: Vec<WaitRecord>,
    faults: Vec<FaultRecord>,
    /// Names with a capacity other than 1 (semaphores).
    capacities: BTreeMap<String, usize>,
}

/// A shared, append-only history.
#[derive(Debug, Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Data>>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }
    pub fn grant(&self, g: GrantRecord) {
        self.inner.lock().expect("history").grants.push(g);
    }
    pub fn wait(&self, w: WaitRecord) {
        self.inner.lock().expect("history").waits.push(w);
    }
    pub fn fault(&self, f: FaultRecord) {
        self.inner.lock().expect("history").faults.push(f);
    }
    pub fn grants(&self) -> Vec<GrantRecord> {
        self.inner.lock().expect("history").grants.clone()
    }
    pub fn waits(&self) -> Vec<WaitRecord> {
        self.inner.lock().expect("history").waits.clone()
    }
    pub fn faults(&self) -> Vec<FaultRecord> {
        self.inner.lock().expect("history").faults.clone()
    }
    /// Declares how many clients may hold `name` at once (a semaphore's
    /// permits); names never declared have capacity 1.
    pub fn set_capacity(&self, name: &str, capacity: usize) {
        self.inner
            .lock()
            .expect("history")
            .capacities
            .insert(name.to_owned(), capacity);
    }
    pub fn capacities(&self) -> BTreeMap<String, usize> {
        self.inner.lock().expect("history").capacities.clone()
    }

    /// Serializes one record per line (for a child process's stdout).
    pub fn to_lines(&self) -> String {
        let d = self.inner.lock().expect("history");
        let mut s = String::new();
        for (name, n) in &d.capacities {
            let _ = writeln!(s, "VLH capacity {name} {n}");
        }
        for g in &d.grants {
            let _ = writeln!(s, "{}", grant_line(g));
        }
        for w in &d.waits {
            let _ = writeln!(s, "{}", wait_line(w));
        }
        for f in &d.faults {
            let _ = writeln!(s, "{}", fault_line(f));
        }
        s
    }

    /// Adds the records of lines written by [`grant_line`] / [`wait_line`];
    /// other lines are ignored. Returns how many were read.
    pub fn absorb_lines(&self, text: &str) -> usize {
        let mut n = 0;
        for line in text.lines() {
            if let Some(g) = parse_grant_line(line) {
                self.grant(g);
                n += 1;
            } else if let Some(w) = parse_wait_line(line) {
                self.wait(w);
                n += 1;
            } else if let Some(f) = parse_fault_line(line) {
                self.fault(f);
                n += 1;
            } else if let Some((name, c)) = parse_capacity_line(line) {
                self.set_capacity(&name, c);
                n += 1;
            }
        }
        n
    }
}

/// `VLH grant client name acquired last_held told valid_until|- reason slot|-`.
pub fn grant_line(g: &GrantRecord) -> String {
    format!(
        "VLH grant {} {} {} {} {} {} {} {}",
        g.client,
        g.name,
        g.acquired,
        g.last_held,
        g.told,
        g.valid_until.map_or("-".to_owned(), |v| v.to_string()),
        g.reason,
        g.slot.map_or("-".to_owned(), |v| v.to_string()),
    )
}

fn parse_capacity_line(line: &str) -> Option<(String, usize)> {
    let f: Vec<&str> = line.trim().split(' ').collect();
    if f.len() != 4 || f[0] != "VLH" || f[1] != "capacity" {
        return None;
    }
    Some((f[2].to_owned(), f[3].parse().ok()?))
}

/// `VLH wait client name started ended outcome waits`.
pub fn wait_line(w: &WaitRecord) -> String {
    format!(
        "VLH wait {} {} {} {} {} {}",
        w.client, w.name, w.started, w.ended, w.outcome, w.waits
    )
}

/// `VLH fault kind target injected healed name out_of_model` (no spaces in
/// the fields).
pub fn fault_line(f: &FaultRecord) -> String {
    format!(
        "VLH fault {} {} {} {} {} {}",
        f.kind,
        f.target.replace(' ', "_"),
        f.injected,
        f.healed,
        f.name,
        f.out_of_model
    )
}

fn parse_fault_line(line: &str) -> Option<FaultRecord> {
    let f: Vec<&str> = line.trim().split(' ').collect();
    if f.len() != 8 || f[0] != "VLH" || f[1] != "fault" {
        return None;
    }
    Some(FaultRecord {
        kind: f[2].to_owned(),
        target: f[3].to_owned(),
        injected: f[4].parse().ok()?,
        healed: f[5].parse().ok()?,
        name: f[6].to_owned(),
        out_of_model: f[7].parse().ok()?,
    })
}

fn parse_grant_line(line: &str) -> Option<GrantRecord> {
    let f: Vec<&str> = line.trim().split(' ').collect();
    if f.len() != 10 || f[0] != "VLH" || f[1] != "grant" {
        return None;
    }
    Some(GrantRecord {
        client: f[2].to_owned(),
        name: f[3].to_owned(),
        acquired: f[4].parse().ok()?,
        last_held: f[5].parse().ok()?,
        told: f[6].parse().ok()?,
        valid_until: if f[7] == "-" {
            None
        } else {
            Some(f[7].parse().ok()?)
        },
        reason: f[8].to_owned(),
        slot: if f[9] == "-" {
            None
        } else {
            Some(f[9].parse().ok()?)
        },
    })
}

fn parse_wait_line(line: &str) -> Option<WaitRecord> {
    let f: Vec<&str> = line.trim().split(' ').collect();
    if f.len() != 8 || f[0] != "VLH" || f[1] != "wait" {
        return None;
    }
    Some(WaitRecord {
        client: f[2].to_owned(),
        name: f[3].to_owned(),
        started: f[4].parse().ok()?,
        ended: f[5].parse().ok()?,
        outcome: f[6].to_owned(),
        waits: f[7].parse().ok()?,
    })
}

/// More clients holding one name at once than its capacity allows (for a
/// lock: two grants that overlap).
#[derive(Debug, Clone)]
pub struct Overlap {
    /// The name: a lock's or a semaphore's, or a slot's lock name
    /// (`{name}:permit:{slot}`) for the same-slot check.
    pub name: String,
    /// The capacity exceeded (1 for a lock or a slot).
    pub capacity: usize,
    /// The instant it began: when the last of `grants` was acquired.
    pub at: u64,
    /// The witnesses: `capacity + 1` grants of different clients, all in
    /// force at `at`, in acquisition order.
    pub grants: Vec<GrantRecord>,
    /// How long all of them were held together, in ms.
    pub overlap_ms: f64,
    /// The out-of-model fault that explains it, if any.
    pub excused_by: Option<FaultRecord>,
}

/// At most this many witnesses are reported per grant that breaks a
/// capacity (with more than `capacity` others in force there is one per
/// choice of `capacity` of them). Far above what a lock check can reach
/// with this suite's clients.
const MAX_WITNESSES_PER_GRANT: usize = 256;

/// Whether fault `f` was aimed at `name`: every name, `name` itself, or a
/// slot of semaphore `name`.
fn fault_hits(f: &FaultRecord, name: &str) -> bool {
    f.name == "*"
        || f.name == name
        || f.name
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(":permit:"))
}

/// The choices of `k` members of `pool` (in order) that are pairwise
/// `compatible`, in lexicographic order, at most `limit` of them.
fn choose(
    pool: &[usize],
    k: usize,
    compatible: &dyn Fn(usize, usize) -> bool,
    limit: usize,
) -> Vec<Vec<usize>> {
    fn go(
        pool: &[usize],
        from: usize,
        k: usize,
        compatible: &dyn Fn(usize, usize) -> bool,
        limit: usize,
        cur: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for (p, &c) in pool.iter().enumerate().skip(from) {
            if out.len() >= limit {
                return;
            }
            if cur.iter().all(|&x| compatible(x, c)) {
                cur.push(c);
                go(pool, p + 1, k, compatible, limit, cur, out);
                cur.pop();
            }
        }
    }
    let mut out = Vec::new();
    go(pool, 0, k, compatible, limit, &mut Vec::new(), &mut out);
    out
}

/// Capacity violations with grant intervals `[acquired, end(g)]`: for each
/// grant `b` of a name, every choice of `capacity(name)` grants of other
/// clients (all different) still in force when `b` was acquired, with `b`,
/// is one. With capacity 1 these are the pairs of two clients' grants of
/// one name that overlap, in the order (first grant, second grant).
pub fn overlaps(
    grants: &[GrantRecord],
    faults: &[FaultRecord],
    excuse_window: Duration,
    capacity: impl Fn(&str) -> usize,
    end: impl Fn(&GrantRecord) -> u64,
) -> Vec<Overlap> {
    let mut by_name: BTreeMap<&str, Vec<&GrantRecord>> = BTreeMap::new();
    for g in grants {
        by_name.entry(g.name.as_str()).or_default().push(g);
    }
    let window = excuse_window.as_nanos() as u64;
    let mut out = Vec::new();
    for (name, mut gs) in by_name {
        let cap = capacity(name).max(1);
        gs.sort_by_key(|g| g.acquired);
        let mut found: Vec<(Vec<usize>, Overlap)> = Vec::new();
        for (j, b) in gs.iter().enumerate() {
            if end(b) <= b.acquired {
                continue;
            }
            let in_force: Vec<usize> = (0..j)
                .filter(|&i| gs[i].client != b.client && end(gs[i]) > b.acquired)
                .collect();
            if in_force.len() < cap {
                continue;
            }
            let distinct = |x: usize, y: usize| gs[x].client != gs[y].client;
            for pick in choose(&in_force, cap, &distinct, MAX_WITNESSES_PER_GRANT) {
                let witnesses: Vec<GrantRecord> =
                    pick.iter().map(|&i| gs[i]).chain([*b]).cloned().collect();
                let all_end = witnesses.iter().map(&end).min().unwrap_or(b.acquired);
                // Blamed on an out-of-model fault that hit the name before
                // the last grant, while an earlier one was held — or before
                // it, when the earlier one was told its keys were deleted or
                // overwritten: a grant handed over locally (same keys, no
                // round trip) inherits keys already wiped.
                let excused_by = faults
                    .iter()
                    .find(|f| {
                        f.out_of_model
                            && fault_hits(f, name)
                            && f.injected <= b.acquired
                            && b.acquired <= f.healed + window
                            && pick.iter().any(|&i| {
                                gs[i].acquired <= f.healed
                                    || matches!(gs[i].reason.as_str(), "deleted" | "overwritten")
                            })
                    })
                    .cloned();
                let mut key = pick;
                key.push(j);
                found.push((
                    key,
                    Overlap {
                        name: name.to_owned(),
                        capacity: cap,
                        at: b.acquired,
                        grants: witnesses,
                        overlap_ms: ms_between(b.acquired, all_end),
                        excused_by,
                    },
                ));
            }
        }
        found.sort_by(|x, y| x.0.cmp(&y.0));
        out.extend(found.into_iter().map(|(_, o)| o));
    }
    out
}

/// The same-slot check: each permit's slot is a lock of its own. Permit
/// grants renamed to their slot's lock name, every other grant left out.
pub fn slot_grants(grants: &[GrantRecord]) -> Vec<GrantRecord> {
    grants
        .iter()
        .filter_map(|g| {
            g.slot.map(|s| GrantRecord {
                name: format!("{}:permit:{s}", g.name),
                ..g.clone()
            })
        })
        .collect()
}

/// The stretches during which at least `capacity` of `intervals` are in
/// force (touching intervals count as continuous).
fn at_least(intervals: &[(u64, u64)], capacity: usize) -> Vec<(u64, u64)> {
    let mut events: Vec<(u64, u8)> = Vec::new();
    for &(a, b) in intervals.iter().filter(|(a, b)| b > a) {
        events.push((a, 0));
        events.push((b, 1));
    }
    events.sort_unstable();
    let (mut n, mut open, mut out) = (0usize, 0u64, Vec::new());
    for (t, kind) in events {
        if kind == 0 {
            n += 1;
            if n == capacity {
                open = t;
            }
        } else {
            if n == capacity {
                out.push((open, t));
            }
            n -= 1;
        }
    }
    out
}

/// The most grants of one name held at once (`told` ends; an end and a
/// start at one instant do not meet).
pub fn most_holders(grants: &[GrantRecord]) -> BTreeMap<String, usize> {
    let mut events: BTreeMap<&str, Vec<(u64, u8)>> = BTreeMap::new();
    for g in grants.iter().filter(|g| g.told > g.acquired) {
        let e = events.entry(g.name.as_str()).or_default();
        e.push((g.acquired, 1));
        e.push((g.told, 0));
    }
    events
        .into_iter()
        .map(|(name, mut ev)| {
            ev.sort_unstable();
            let (mut n, mut most) = (0usize, 0usize);
            for (_, start) in ev {
                if start == 1 {
                    n += 1;
                    most = most.max(n);
                } else {
                    n -= 1;
                }
            }
            (name.to_owned(), most)
        })
        .collect()
}

/// How much later than another a waiter must have started for being granted
/// first to count as overtaking it: a place takes a round trip to reach
/// the servers.
pub const ARRIVAL_SLACK: Duration = Duration::from_millis(20);

/// Inversions among granted waiting calls of each name (see
/// [`Report::inversions`]), and the waiters past `bound` that suffered one.
fn order_inversions(
    waits: &[WaitRecord],
    faults: &[FaultRecord],
    bound: Duration,
    lost: Option<(Duration, Duration)>,
) -> (usize, usize) {
    let lost_queue = |w: &WaitRecord| {
        let Some((place_life, aftermath)) = lost else {
            return false;
        };
        let (life, after) = (place_life.as_nanos() as u64, aftermath.as_nanos() as u64);
        faults.iter().any(|f| {
            let all = matches!(
                f.kind.as_str(),
                "restart_delayed" | "restart_now" | "flushall"
            );
            let stalled = matches!(f.kind.as_str(), "freeze_node" | "sigstop" | "debug_sleep")
                && f.healed.saturating_sub(f.injected) >= life;
            (all || stalled) && f.injected < w.ended && f.healed + after > w.started
        })
    };
    let slack = ARRIVAL_SLACK.as_nanos() as u64;
    let mut by_name: BTreeMap<&str, Vec<&WaitRecord>> = BTreeMap::new();
    for w in waits.iter().filter(|w| w.waits && w.outcome == "ok") {
        by_name.entry(&w.name).or_default().push(w);
    }
    // Client `l{g}w{n}` is in group `g`; faults name theirs `group{g}` or
    // `locker{g}`.
    let hit = |w: &WaitRecord| {
        let group = w
            .client
            .strip_prefix('l')
            .and_then(|r| r.split('w').next())
            .unwrap_or("");
        faults.iter().any(|f| {
            f.injected < w.ended
                && f.healed > w.started
                && [format!("group{group}"), format!("locker{group}")]
                    .iter()
                    .any(|t| {
                        f.target == *t
                            || f.target.starts_with(&format!("{t}-"))
                            || f.target.starts_with(&format!("{t}/"))
                    })
        })
    };
    let (mut pairs, mut starved) = (0, 0);
    for ws in by_name.values() {
        for w in ws.iter().filter(|w| !hit(w) && !lost_queue(w)) {
            let overtaking = ws
                .iter()
                .filter(|v| v.started > w.started + slack && v.ended < w.ended)
                .count();
            pairs += overtaking;
            if overtaking > 0 && ms_between(w.started, w.ended) > bound.as_secs_f64() * 1e3 {
                starved += 1;
            }
        }
    }
    (pairs, starved)
}

/// The longest stretch (ns) of `[from, to]` not covered by `intervals`.
fn longest_gap(mut intervals: Vec<(u64, u64)>, from: u64, to: u64) -> u64 {
    intervals.retain(|&(a, b)| b > from && a < to && b > a);
    intervals.sort_unstable();
    let mut longest = 0;
    let mut reached = from;
    for (a, b) in intervals {
        if a > reached {
            longest = longest.max(a - reached);
        }
        reached = reached.max(b);
    }
    if to > reached {
        longest = longest.max(to - reached);
    }
    longest
}

/// A waiter that made no progress while nothing stood in its way.
#[derive(Debug, Clone)]
pub struct Stuck {
    pub wait: WaitRecord,
    /// The longest stretch of the wait during which fewer other clients
    /// than the name's capacity held it and no fault (nor its aftermath)
    /// was in effect, in ms.
    pub unexplained_ms: f64,
}

/// For each waiting `lock()` (or `acquire()`): the longest stretch of its
/// wait during which fewer than `capacity(name)` other clients held the name
/// (for a lock: nobody else) and no fault (nor its aftermath, `aftermath`
/// after healing) was in effect — a lock or permit was free, and still
/// nobody got it. Returns the waits where that exceeds `bound` (or that
/// never returned), and the largest stretch seen (ms).
pub fn stuck_waiters(
    grants: &[GrantRecord],
    waits: &[WaitRecord],
    faults: &[FaultRecord],
    capacity: impl Fn(&str) -> usize,
    aftermath: Duration,
    bound: Duration,
) -> (Vec<Stuck>, f64) {
    let after = aftermath.as_nanos() as u64;
    let fault_windows: Vec<(u64, u64)> = faults
        .iter()
        .map(|f| (f.injected, f.healed + after))
        .collect();
    let mut stuck = Vec::new();
    let mut worst = 0f64;
    for w in waits.iter().filter(|w| w.waits) {
        let held: Vec<(u64, u64)> = grants
            .iter()
            .filter(|g| g.name == w.name && g.client != w.client)
            .map(|g| (g.acquired, g.told))
            .collect();
        let mut busy = at_least(&held, capacity(&w.name).max(1));
        busy.extend_from_slice(&fault_windows);
        let gap = longest_gap(busy, w.started, w.ended);
        let ms = gap as f64 / 1e6;
        worst = worst.max(ms);
        if w.outcome == "timeout" || gap > bound.as_nanos() as u64 {
            stuck.push(Stuck {
                wait: w.clone(),
                unexplained_ms: ms,
            });
        }
    }
    (stuck, worst)
}

/// For each fault: ms from healing to the next grant of any name (`None` if
/// none followed).
pub fn recoveries(
    grants: &[GrantRecord],
    faults: &[FaultRecord],
) -> Vec<(FaultRecord, Option<f64>)> {
    let mut starts: Vec<u64> = grants.iter().map(|g| g.acquired).collect();
    starts.sort_unstable();
    faults
        .iter()
        .map(|f| {
            let i = starts.partition_point(|&s| s < f.healed);
            (f.clone(), starts.get(i).map(|&s| ms_between(f.healed, s)))
        })
        .collect()
}

/// Percentile (0–100) of `v` (sorted copy); NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

/// Everything a nemesis run reports.
#[derive(Debug, Clone)]
pub struct Report {
    pub label: String,
    pub seed: u64,
    pub grants: usize,
    pub grants_by_reason: BTreeMap<String, usize>,
    pub waits: usize,
    pub faults_by_kind: BTreeMap<String, usize>,
    /// Names of capacity other than 1 (semaphores), with their capacity.
    pub capacities: BTreeMap<String, usize>,
    /// Per name, the most clients that held it at once (`told` ends).
    pub most_holders: BTreeMap<String, usize>,
    /// Capacity violations (for a lock: overlaps) with `told` ends, not
    /// excused: must be empty.
    pub overlaps_told: Vec<Overlap>,
    /// Capacity violations with `last_held` ends, not excused: must be
    /// empty.
    pub overlaps_acted: Vec<Overlap>,
    /// Overlaps of two clients' permits of one slot (`told` ends, then
    /// `last_held` ends), not excused: must be empty.
    pub slot_overlaps_told: Vec<Overlap>,
    pub slot_overlaps_acted: Vec<Overlap>,
    /// Violations (of a capacity or of a slot) explained by out-of-model
    /// faults.
    pub excused: Vec<Overlap>,
    pub stuck: Vec<Stuck>,
    pub worst_unexplained_wait_ms: f64,
    /// The longest waiting `lock()` call (ms), and how many waited longer
    /// than the stuck bound while others held the lock all along (no
    /// fairness across lockers: starved, not stuck).
    pub longest_wait_ms: f64,
    pub starved: usize,
    /// Fairness across lockers: pairs of waiting calls on one name where the
    /// one that started later (by more than [`ARRIVAL_SLACK`]) was granted
    /// first; and how many waiters that waited past the stuck bound were
    /// overtaken so (starved by later arrivals). Left out, as the documented
    /// exceptions of fair queueing: a waiter whose own locker was hit by a
    /// fault during its wait (frozen, cut off, its actors killed: it could
    /// not keep its place), and one whose wait overlapped a fault that lost
    /// every place (a server restarted empty or flushed, or stalled for at
    /// least a place's life) or its aftermath (lockers reconnect with
    /// backoff, some after the others have rejoined).
    pub inversions: usize,
    pub overtaken_starved: usize,
    /// The same counts leaving out only the waiters hit by a fault of their
    /// own locker (not those across a lost queue): the measure of a mode
    /// without fair queueing, where no queue is lost.
    pub inversions_own: usize,
    pub overtaken_starved_own: usize,
    /// Per fault kind: recovery times (ms from heal to the next grant).
    pub recovery_ms: BTreeMap<String, Vec<f64>>,
    /// Faults not followed by any grant.
    pub unrecovered: Vec<FaultRecord>,
    /// For grants that ended in a loss: `told − valid_until` in ms (how late
    /// the holder heard compared with the validity it was last shown;
    /// negative = told early).
    pub loss_lateness_ms: Vec<f64>,
}

impl Report {
    /// Builds the report. `excuse_window`: how long after an out-of-model
    /// fault an overlap is blamed on it; `aftermath`: how long after a fault
    /// a slow wait is blamed on it; `stuck_bound`: the largest unexplained
    /// wait allowed.
    pub fn build(
        label: &str,
        seed: u64,
        h: &History,
        excuse_window: Duration,
        aftermath: Duration,
        stuck_bound: Duration,
        place_life: Duration,
    ) -> Report {
        let grants = h.grants();
        let waits = h.waits();
        let faults = h.faults();
        let mut grants_by_reason = BTreeMap::new();
        for g in &grants {
            *grants_by_reason.entry(g.reason.clone()).or_insert(0) += 1;
        }
        let mut faults_by_kind = BTreeMap::new();
        for f in &faults {
            *faults_by_kind.entry(f.kind.clone()).or_insert(0) += 1;
        }
        let capacities = h.capacities();
        let capacity = |name: &str| capacities.get(name).copied().unwrap_or(1);
        let told = overlaps(&grants, &faults, excuse_window, capacity, |g| g.told);
        let acted = overlaps(&grants, &faults, excuse_window, capacity, |g| g.last_held);
        let (mut excused, overlaps_told): (Vec<_>, Vec<_>) =
            told.into_iter().partition(|o| o.excused_by.is_some());
        let overlaps_acted = acted
            .into_iter()
            .filter(|o| o.excused_by.is_none())
            .collect();
        let slots = slot_grants(&grants);
        let (slot_excused, slot_overlaps_told): (Vec<_>, Vec<_>) =
            overlaps(&slots, &faults, excuse_window, |_| 1, |g| g.told)
                .into_iter()
                .partition(|o| o.excused_by.is_some());
        excused.extend(slot_excused);
        let slot_overlaps_acted = overlaps(&slots, &faults, excuse_window, |_| 1, |g| g.last_held)
            .into_iter()
            .filter(|o| o.excused_by.is_none())
            .collect();
        let (stuck, worst) =
            stuck_waiters(&grants, &waits, &faults, capacity, aftermath, stuck_bound);
        let wait_ms = |w: &WaitRecord| ms_between(w.started, w.ended);
        let longest_wait_ms = waits
            .iter()
            .filter(|w| w.waits)
            .map(wait_ms)
            .fold(0f64, f64::max);
        let starved = waits
            .iter()
            .filter(|w| w.waits && wait_ms(w) > stuck_bound.as_secs_f64() * 1e3)
            .count()
            .saturating_sub(stuck.len());
        let (inversions, overtaken_starved) =
            order_inversions(&waits, &faults, stuck_bound, Some((place_life, aftermath)));
        let (inversions_own, overtaken_starved_own) =
            order_inversions(&waits, &faults, stuck_bound, None);
        let mut recovery_ms: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut unrecovered = Vec::new();
        for (f, r) in recoveries(&grants, &faults) {
            match r {
                Some(ms) => recovery_ms.entry(f.kind.clone()).or_default().push(ms),
                None => unrecovered.push(f),
            }
        }
        let loss_lateness_ms = grants
            .iter()
            .filter(|g| g.reason != "released")
            .filter_map(|g| g.valid_until.map(|v| ms_between(v, g.told)))
            .collect();
        Report {
            label: label.to_owned(),
            seed,
            grants: grants.len(),
            grants_by_reason,
            waits: waits.len(),
            faults_by_kind,
            most_holders: most_holders(&grants),
            capacities,
            overlaps_told,
            overlaps_acted,
            slot_overlaps_told,
            slot_overlaps_acted,
            excused,
            stuck,
            worst_unexplained_wait_ms: worst,
            longest_wait_ms,
            starved,
            inversions,
            overtaken_starved,
            inversions_own,
            overtaken_starved_own,
            recovery_ms,
            unrecovered,
            loss_lateness_ms,
        }
    }

    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "=== {} (seed {:#x}) ===", self.label, self.seed);
        let _ = writeln!(
            s,
            "grants checked: {} {:?}; lock calls: {}",
            self.grants, self.grants_by_reason, self.waits
        );
        let total: usize = self.faults_by_kind.values().sum();
        let _ = writeln!(s, "faults: {total} {:?}", self.faults_by_kind);
        let _ = writeln!(
            s,
            "overlaps (told ends): {}; overlaps (acted ends): {}; excused (out-of-model faults): {}",
            self.overlaps_told.len(),
            self.overlaps_acted.len(),
            self.excused.len()
        );
        if !self.capacities.is_empty() {
            let _ = writeln!(
                s,
                "capacity {:?}; most holders at once {:?}; same-slot overlaps (told ends): {}; (acted ends): {}",
                self.capacities,
                self.most_holders,
                self.slot_overlaps_told.len(),
                self.slot_overlaps_acted.len()
            );
        }
        let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for o in &self.excused {
            let f = o.excused_by.as_ref().expect("excused");
            by_kind
                .entry(f.kind.as_str())
                .or_default()
                .push(o.overlap_ms);
        }
        for (kind, v) in &by_kind {
            let _ = writeln!(
                s,
                "  excused after {kind}: n={} p50 {:.1} ms, max {:.1} ms",
                v.len(),
                percentile(v, 50.0),
                percentile(v, 100.0)
            );
        }
        for o in self
            .overlaps_told
            .iter()
            .chain(&self.overlaps_acted)
            .chain(&self.slot_overlaps_told)
            .chain(&self.slot_overlaps_acted)
            .take(10)
        {
            let grants: Vec<String> = o.grants.iter().map(|g| format!("{g:?}")).collect();
            let _ = writeln!(
                s,
                "  OVERLAP {:.3} ms at {} ({} held by {} > capacity {}): {}",
                o.overlap_ms,
                o.at,
                o.name,
                o.grants.len(),
                o.capacity,
                grants.join(" / ")
            );
        }
        let _ = writeln!(
            s,
            "stuck waiters: {}; longest stretch a waiter waited on a free lock: {:.0} ms; longest lock() wait {:.0} ms; starved (waited past the bound while others held it): {}",
            self.stuck.len(),
            self.worst_unexplained_wait_ms,
            self.longest_wait_ms,
            self.starved
        );
        let _ = writeln!(
            s,
            "order: {} waiters granted before one that started waiting earlier; starved by later arrivals (waited past the bound, overtaken): {} (counting waits across a lost queue too: {}; {})",
            self.inversions, self.overtaken_starved, self.inversions_own, self.overtaken_starved_own
        );
        for st in self.stuck.iter().take(10) {
            let _ = writeln!(s, "  STUCK {:.0} ms: {:?}", st.unexplained_ms, st.wait);
        }
        if !self.loss_lateness_ms.is_empty() {
            let l = &self.loss_lateness_ms;
            let _ = writeln!(
                s,
                "losses: {}; told − last valid_until: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.len(),
                percentile(l, 50.0),
                percentile(l, 99.0),
                percentile(l, 100.0)
            );
        }
        let _ = writeln!(
            s,
            "lock available again after the fault healed (ms to next grant):"
        );
        for (kind, v) in &self.recovery_ms {
            let _ = writeln!(
                s,
                "  {kind:<16} n={:<3} p50 {:>7.1}  max {:>7.1}",
                v.len(),
                percentile(v, 50.0),
                percentile(v, 100.0)
            );
        }
        for f in &self.unrecovered {
            let _ = writeln!(s, "  no grant after {} ({})", f.kind, f.target);
        }
        s
    }

    /// Writes the history to `$VALKEYLOCK_HISTORY_OUT/{file}` when that
    /// variable names a directory (for offline analysis).
    pub fn dump(h: &History, file: &str) {
        if let Ok(dir) = std::env::var("VALKEYLOCK_HISTORY_OUT") {
            let path = std::path::Path::new(&dir).join(file);
            let _ = std::fs::write(&path, h.to_lines());
            eprintln!("history written to {}", path.display());
        }
    }

    /// Panics with the summary if any capacity violation (overlap), same-slot
    /// overlap or stuck waiter was found.
    pub fn assert_ok(&self) {
        assert!(
            self.overlaps_told.is_empty()
                && self.overlaps_acted.is_empty()
                && self.slot_overlaps_told.is_empty()
                && self.slot_overlaps_acted.is_empty()
                && self.stuck.is_empty(),
            "safety/liveness violated (re-run with VALKEYLOCK_SEED={:#x}):\n{}",
            self.seed,
            self.summary()
        );
    }
}
