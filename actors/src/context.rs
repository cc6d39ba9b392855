//! State shared read-mostly by every actor of one locker: the validated settings,
//! the scripts, and two routing tables the Supervisor owns and everyone reads:
//! node index → current `NodeActor`, and lock name → its `LockActor`.
//!
//! Two more tables feed the observers: node health (written by the node
//! actors, read by `Engine::health`) and the `LockWatch`es per name (woken by
//! invalidations, reconnects and this locker's own grants and releases).
//!
//! Why tables instead of asking the Supervisor: invalidations must reach a
//! `LockActor` in one hop (a wake-up is a latency path), and a `LockActor` must
//! not `.await` the Supervisor inside a handler. Only the Supervisor writes.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::core::{CmdId, Config, Fair, Fencing, Handover, Life, Terms};
use crate::few::Recent;
use crate::health::HealthTable;
use crate::msg::{DirectLink, EngineNews, Job, LockMsg, LockPort, NodeMsg};
use crate::options::Settings;
use crate::scripts::{Scripts, Token};
use crate::timers::Timers;

/// The mark a retiring `LockActor` sets in its route's `sent` count: senders
/// that see it go through the Supervisor instead.
const RETIRED: u64 = 1 << 63;

/// Counts a request about to be sent to a `LockActor` through its route's
/// `sent` count; false if the actor has retired (send it through the
/// Supervisor, which starts a fresh one).
pub(crate) fn count_send(sent: &AtomicU64) -> bool {
    sent.fetch_add(1, Ordering::SeqCst) & RETIRED == 0
}

/// Whether the actor behind `sent` has retired.
pub(crate) fn retired(sent: &AtomicU64) -> bool {
    sent.load(Ordering::SeqCst) & RETIRED != 0
}

/// Retires the actor behind `sent` if it has received every request counted
/// (`seen` of them), i.e. none is on its way. A compare-and-swap from `seen`:
/// a sender that counted one more makes it fail, and every sender after it
/// sees the mark. This replaces a check-then-stop by the Supervisor, between
/// which a request could reach an actor about to stop and start an attempt
/// nobody would finish.
pub(crate) fn try_retire(sent: &AtomicU64, seen: u64) -> bool {
    sent.compare_exchange(seen, seen | RETIRED, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// A registered `LockWatch`: its id and what wakes it.
type Watcher = (u64, Arc<Notify>);

/// The queue into a node's command pump.
pub(crate) type Lane = tokio::sync::mpsc::UnboundedSender<Job>;

/// A node has no command lane: it is not connected.
#[derive(Debug)]
pub(crate) struct NotConnected;

/// A connected node's command lane: the actor that owns it, the queue into
/// its pump, and the server's id of the connection it drives (`CLIENT ID`),
/// which a direct connection's tracking redirects its invalidations to.
#[derive(Debug, Clone)]
pub(crate) struct NodeLane {
    pub(crate) owner: ractor::ActorId,
    pub(crate) lane: Lane,
    pub(crate) conn: u64,
}

/// A node's direct connection (see `direct`): the connection a caller's
/// runtime sends its acquisitions and releases on.
#[derive(Debug, Default)]
pub(crate) enum DirectSlot {
    /// None: the next caller on a runtime opens one.
    #[default]
    Closed,
    /// A caller's runtime is opening one.
    Opening,
    Open(DirectConn),
    /// The last attempt to open one failed: none is tried before `until`.
    Failed {
        until: std::time::Instant,
    },
}

/// An open direct connection, whose connection task runs on the runtime
/// that opened it.
#[derive(Debug, Clone)]
pub(crate) struct DirectConn {
    /// What its commands run on.
    pub(crate) link: Arc<dyn DirectLink>,
    pub(crate) info: DirectInfo,
    /// Cancelled to close the connection.
    pub(crate) stop: CancellationToken,
    /// The runtime that opened it, which drives its socket: where the
    /// commands the engine's thread makes for it run.
    pub(crate) runtime: tokio::runtime::Handle,
}

/// What is known of a direct connection.
#[derive(Debug, Clone)]
pub(crate) struct DirectInfo {
    /// Its commands not yet answered (see `direct::MAX_OUT`).
    pub(crate) out: Arc<AtomicUsize>,
    pub(crate) node: usize,
    /// The engine connection its tracking redirects to (`NodeLane::conn`
    /// when it was opened).
    pub(crate) redirect: u64,
    /// Tells this connection from the one before and after it in the slot.
    pub(crate) generation: u64,
    /// How promptly its runtime runs what the engine's thread makes for it.
    pub(crate) pace: Arc<Pace>,
}

/// How promptly a direct connection's runtime runs the commands the
/// engine's thread makes for it (each on a task of its own there, which
/// writes it and reads its reply): a waiter's retry goes there only while
/// that runtime is not busy (`direct::open_conn`). A retry that waits for a
/// saturated application runtime to be written, and again for its reply to
/// be read, keeps the key free meanwhile and delays the wake-up it serves,
/// which on the engine's connection depends on the engine's thread alone.
/// When [`Pace::STRIKES`] such commands in a row each took more than
/// [`Pace::SLOW`] from their making to their reply read, the runtime
/// counts as busy for [`Pace::BACKOFF`]. The values are choices, not
/// measurements: on an idle runtime of this machine such a command is
/// answered within about a hundred microseconds (a round trip and a task's
/// wake-up); behind CPU-bound work, it waits for slices of it, and every
/// answer is slow. One slow answer alone says little where the engines'
/// threads, the application's workers and the server share few cores: it
/// happens under mere contention, and backing off for it sent most retries
/// back to the engine's connection, where the process's own writes come
/// back as invalidations (BENCHMARKS.md, "What limits", item 5).
#[derive(Debug)]
pub(crate) struct Pace {
    origin: Instant,
    /// Nanoseconds after `origin` until which the runtime counts as busy.
    busy_until: AtomicU64,
    /// Slow answers since the last prompt one, or since the backoff began.
    slow_in_a_row: AtomicU32,
}

impl Pace {
    /// Slower than this from making to reply, the runtime counts as busy.
    pub(crate) const SLOW: Duration = Duration::from_millis(1);
    /// This many slow answers in a row...
    pub(crate) const STRIKES: u32 = 2;
    /// ...and the runtime counts as busy for this long.
    pub(crate) const BACKOFF: Duration = Duration::from_secs(1);

    pub(crate) fn new(origin: Instant) -> Pace {
        Pace {
            origin,
            busy_until: AtomicU64::new(0),
            slow_in_a_row: AtomicU32::new(0),
        }
    }

    /// A command made at `made` had its reply read at `answered`.
    pub(crate) fn answered(&self, made: Instant, answered: Instant) {
        if answered.saturating_duration_since(made) <= Self::SLOW {
            self.slow_in_a_row.store(0, Ordering::Relaxed);
            return;
        }
        let slow = self.slow_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if slow >= Self::STRIKES {
            self.slow_in_a_row.store(0, Ordering::Relaxed);
            let until = self.nanos(answered + Self::BACKOFF);
            self.busy_until.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Whether the runtime counts as busy at `now`.
    pub(crate) fn busy(&self, now: Instant) -> bool {
        self.nanos(now) < self.busy_until.load(Ordering::Relaxed)
    }

    fn nanos(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(d).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) scripts: Scripts,
    /// What every lock core of this locker is configured with.
    pub(crate) core: Arc<Config>,
    /// What an election's lock core is configured with: `core` with fencing
    /// on (the term is the fencing token) and so no local hand-over.
    election_core: Arc<Config>,
    /// A read-write lock's writer: fenced like an election, and no fair
    /// queue (its acquisitions go through the read-write gate instead).
    writer_core: Arc<Config>,
    /// A read-write lock's reader slot: no local hand-over (a waiting
    /// writer must be able to stop new readers) and no fair queue.
    reader_core: Arc<Config>,
    /// The lock actors' timers (one task for all of them).
    pub(crate) timers: Timers,
    nodes: RwLock<Vec<Option<ActorRef<NodeMsg>>>>,
    /// Each connected node's command lane, and the id of the actor that owns it.
    lanes: RwLock<Vec<Option<NodeLane>>>,
    /// Each node's direct connection (see `direct`).
    pub(crate) direct: Vec<Mutex<DirectSlot>>,
    /// Numbers the direct connections opened.
    pub(crate) direct_generation: AtomicU64,
    locks: RwLock<HashMap<Arc<str>, LockRoute>>,
    /// Holders alive in this locker (see `notice_allowance`).
    pub(crate) holders: Arc<AtomicUsize>,
    /// Each node's connection, for `Engine::health`.
    health: Mutex<HealthTable>,
    /// The `LockWatch`es of each name: woken when the name's keys may have
    /// changed.
    watchers: RwLock<HashMap<Arc<str>, Vec<Watcher>>>,
    /// How many `LockWatch`es there are: with none (the usual case) the
    /// invalidation path skips the table.
    watcher_count: AtomicUsize,
    next_watcher: AtomicU64,
    /// Cancelled when the locker closes: ends the `LockWatch` tasks.
    pub(crate) closed: CancellationToken,
    /// The hand-over messages taken lately (see `first_handed`), by a hash
    /// keyed for this locker.
    handed: Mutex<Recent>,
    handed_hash: RandomState,
}

/// How many hand-over messages `Shared::first_handed` remembers: its two
/// copies come within a few milliseconds of each other, a few thousand
/// hand-overs apart at most.
const HANDED_REMEMBERED: usize = 4096;

/// How requests reach a name's `LockActor`. Its port also counts the
/// requests sent to it (an idle actor retires only if it saw them all).
#[derive(Debug, Clone)]
pub(crate) struct LockRoute {
    pub(crate) actor: ActorRef<LockMsg>,
    /// The actor's state, which a request feeds on the caller's thread.
    pub(crate) port: Arc<dyn LockPort>,
}

impl Shared {
    pub(crate) fn new(settings: Settings) -> Arc<Shared> {
        let n = settings.nodes.len();
        let core = core_config(&settings, crate::clock::now());
        let election_core = Arc::new(Config {
            fencing: match core.fencing {
                Fencing::Off if settings.nodes.len() == 1 && !settings.is_cluster() => {
                    Fencing::InScript
                }
                Fencing::Off => Fencing::Majority,
                on => on,
            },
            handover_limit: 0,
            handover: None,
            ..core.clone()
        });
        let writer_core = Arc::new(Config {
            fair: None,
            ..(*election_core).clone()
        });
        let reader_core = Arc::new(Config {
            fair: None,
            handover_limit: 0,
            handover: None,
            ..core.clone()
        });
        Arc::new(Shared {
            settings,
            scripts: Scripts::new(),
            core: Arc::new(core),
            election_core,
            writer_core,
            reader_core,
            timers: Timers::start(),
            nodes: RwLock::new(vec![None; n]),
            lanes: RwLock::new(vec![None; n]),
            direct: (0..n).map(|_| Mutex::new(DirectSlot::Closed)).collect(),
            direct_generation: AtomicU64::new(0),
            locks: RwLock::new(HashMap::new()),
            holders: Arc::new(AtomicUsize::new(0)),
            health: Mutex::new(HealthTable::new(n)),
            watchers: RwLock::new(HashMap::new()),
            watcher_count: AtomicUsize::new(0),
            next_watcher: AtomicU64::new(1),
            closed: CancellationToken::new(),
            handed: Mutex::new(Recent::new(HANDED_REMEMBERED)),
            handed_hash: RandomState::new(),
        })
    }

    /// True the first time this locker sees the hand-over of `key` to the
    /// claim sent as `cmd` under `token`, false for its second copy. With
    /// `listen`, the message comes on two connections, the engine's and a
    /// caller's, and the lock takes whichever copy comes first; the other
    /// would be taken as a key handed again (a check of a key it holds, or
    /// a release of one it no longer wants). Keyed per locker, so that a
    /// message written by anyone else cannot pass for another's copy
    /// without its token. Forgotten after `HANDED_REMEMBERED` more: a copy
    /// that late is taken as before, which costs a command, not the lock.
    pub(crate) fn first_handed(&self, cmd: CmdId, token: &Token, key: usize) -> bool {
        let id = self.handed_hash.hash_one((cmd.0, token.as_str(), key));
        lock(&self.handed).first(id)
    }

    /// Actor `owner` connected node `index`: recorded, and every watcher
    /// looks again (invalidations sent while it was away are lost).
    pub(crate) fn node_up(&self, index: usize, owner: ractor::ActorId) {
        let changed = lock(&self.health).up(index, owner);
        if changed {
            self.wake_all_watchers();
        }
    }

    /// Actor `owner`'s connection to node `index` ended, for `why` (nothing
    /// if the node's connection is another actor's, or none).
    pub(crate) fn node_lost(&self, index: usize, owner: ractor::ActorId, why: &str) {
        let changed = lock(&self.health).lost(index, owner, why);
        if changed {
            self.wake_all_watchers();
        }
    }

    /// An attempt to connect node `index` failed, for `why`.
    pub(crate) fn node_failed(&self, index: usize, why: &str) {
        lock(&self.health).failed(index, why);
    }

    /// Every node's health, with addresses, and whether a majority of each
    /// lock's keys lives on connected nodes.
    pub(crate) fn health(&self) -> (bool, Vec<crate::inspect::NodeHealth>) {
        let addresses: Vec<String> = self.settings.nodes.iter().map(|n| n.display()).collect();
        let table = lock(&self.health);
        let ready = self.settings.keys_on_live_nodes(&table.up_flags()) >= self.settings.majority;
        (ready, table.snapshot(&addresses))
    }

    /// Registers a `LockWatch` of `name`; its id (for [`Shared::remove_watcher`])
    /// and what wakes it.
    pub(crate) fn add_watcher(&self, name: Arc<str>) -> (u64, Arc<Notify>) {
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        write(&self.watchers)
            .entry(name)
            .or_default()
            .push((id, notify.clone()));
        self.watcher_count.fetch_add(1, Ordering::SeqCst);
        (id, notify)
    }

    pub(crate) fn remove_watcher(&self, name: &str, id: u64) {
        let mut watchers = write(&self.watchers);
        if let Some(list) = watchers.get_mut(name) {
            let before = list.len();
            list.retain(|(i, _)| *i != id);
            if list.len() < before {
                self.watcher_count.fetch_sub(1, Ordering::SeqCst);
            }
            if list.is_empty() {
                watchers.remove(name);
            }
        }
    }

    /// Wakes the watchers of `name` (a key of it changed). One atomic load
    /// when there are none.
    pub(crate) fn wake_watchers(&self, name: &str) {
        if self.watcher_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        if let Some(list) = read(&self.watchers).get(name) {
            for (_, n) in list {
                n.notify_one();
            }
        }
    }

    /// Wakes the watchers of the lock that `key` belongs to, if it is one.
    pub(crate) fn wake_watchers_of_key(&self, key: &str) {
        if self.watcher_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let s = &self.settings;
        if let Some((_, name)) = crate::keys::parse_key(&s.prefix, s.total, key.as_bytes()) {
            self.wake_watchers(name);
        }
    }

    /// Wakes every watcher (a reconnect, or invalidations dropped).
    pub(crate) fn wake_all_watchers(&self) {
        if self.watcher_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        for list in read(&self.watchers).values() {
            for (_, n) in list {
                n.notify_one();
            }
        }
    }

    /// The live actor of node `index`, if it is running.
    pub(crate) fn node(&self, index: usize) -> Option<ActorRef<NodeMsg>> {
        read(&self.nodes).get(index).cloned().flatten()
    }

    pub(crate) fn set_node(&self, index: usize, actor: Option<ActorRef<NodeMsg>>) {
        if let Some(slot) = write(&self.nodes).get_mut(index) {
            *slot = actor;
        }
    }

    /// Queues `job` on node `index`'s command lane; drops it if the node has
    /// no connection.
    pub(crate) fn send_job(&self, index: usize, job: Job) -> Result<(), NotConnected> {
        match read(&self.lanes).get(index) {
            Some(Some(l)) => l.lane.send(job).map_err(|_| NotConnected),
            _ => Err(NotConnected),
        }
    }

    /// Closes node `info.node`'s direct connection if the slot still holds
    /// that one (`info.generation`): the next caller opens another.
    pub(crate) fn close_direct(&self, info: &DirectInfo) {
        let Some(slot) = self.direct.get(info.node) else {
            return;
        };
        let mut slot = lock(slot);
        if let DirectSlot::Open(c) = &*slot {
            if c.info.generation == info.generation {
                c.stop.cancel();
                *slot = DirectSlot::Closed;
            }
        }
    }

    /// The server's id of the engine's connection to node `index`; `None`
    /// while it has none.
    pub(crate) fn engine_conn(&self, index: usize) -> Option<u64> {
        read(&self.lanes).get(index)?.as_ref().map(|l| l.conn)
    }

    pub(crate) fn set_lane(&self, index: usize, lane: NodeLane) {
        if let Some(slot) = write(&self.lanes).get_mut(index) {
            *slot = Some(lane);
        }
    }

    /// Withdraws node `index`'s lane if `owner` still owns it.
    pub(crate) fn clear_lane(&self, index: usize, owner: ractor::ActorId) {
        if let Some(slot) = write(&self.lanes).get_mut(index) {
            if slot.as_ref().is_some_and(|l| l.owner == owner) {
                *slot = None;
            }
        }
    }

    pub(crate) fn lock(&self, name: &str) -> Option<ActorRef<LockMsg>> {
        read(&self.locks).get(name).map(|r| r.actor.clone())
    }

    /// The configuration of lock `name`'s core: an election's lock always
    /// has fencing tokens (its terms).
    pub(crate) fn core_for(&self, name: &str) -> Arc<Config> {
        match crate::rwlock::side_of(name) {
            Some((_, crate::rwlock::Side::Write)) => return self.writer_core.clone(),
            Some((_, crate::rwlock::Side::Read)) => return self.reader_core.clone(),
            None => {}
        }
        if crate::election::of_lock(name).is_some() {
            self.election_core.clone()
        } else {
            self.core.clone()
        }
    }

    /// Tells the other sides of a read-write lock in this locker that its
    /// key `key` changed (a writer released: its readers may enter; a
    /// reader released: its writer may): with NOLOOP our own writes send us
    /// no invalidation, and the forwarder does the same for others'.
    pub(crate) fn wake_related(&self, key: &[u8]) {
        let s = &self.settings;
        let Some((index, lock)) = crate::rwlock::parse_key(&s.prefix, s.total, key) else {
            return;
        };
        let actors: Vec<ActorRef<LockMsg>> = match crate::rwlock::wakes(&lock) {
            Some(crate::rwlock::Wakes::Writer(writer)) => self.lock(&writer).into_iter().collect(),
            Some(crate::rwlock::Wakes::Readers(base)) => {
                let prefix = crate::rwlock::readers_prefix(base);
                read(&self.locks)
                    .iter()
                    .filter(|(name, _)| name.starts_with(&prefix))
                    .map(|(_, r)| r.actor.clone())
                    .collect()
            }
            None => Vec::new(),
        };
        for actor in actors {
            let _ = actor.cast(LockMsg::Invalidated { index });
        }
    }

    pub(crate) fn lock_route(&self, name: &str) -> Option<LockRoute> {
        read(&self.locks).get(name).cloned()
    }

    pub(crate) fn set_lock(&self, name: Arc<str>, route: LockRoute) {
        write(&self.locks).insert(name, route);
    }

    /// Removes `name` only if it still maps to the actor `id` (a newer actor for
    /// the same name must not be unregistered by an old one's exit).
    pub(crate) fn remove_lock(&self, name: &str, id: ractor::ActorId) {
        let mut locks = write(&self.locks);
        if locks.get(name).is_some_and(|r| r.actor.get_id() == id) {
            locks.remove(name);
        }
    }

    /// The name the actor `id` is routed under: a search of the whole
    /// table, for the rare exit that comes without the actor's state (a
    /// handler that failed, or a kill that cut one short).
    pub(crate) fn lock_name_of(&self, id: ractor::ActorId) -> Option<Arc<str>> {
        read(&self.locks)
            .iter()
            .find(|(_, r)| r.actor.get_id() == id)
            .map(|(name, _)| name.clone())
    }

    /// Has every lock re-check its keys on node `node` (`None`: on every
    /// node), for invalidations that may have been lost there: a message to
    /// each actor. After a reconnect, `recheck_reconnected` instead. A
    /// direct connection's end stays a message: it often comes with a cut
    /// that ends the engine's connection too, before the engine has seen
    /// it; fed to the states at once, every lock's check went out on that
    /// dead connection and each failure came back as a message, which held
    /// up the reconnect (a probe by hand with 10,000 held locks lost 874 to
    /// 3,257 of them in three of four runs that way, against 0 to 82 with
    /// the messages).
    pub(crate) fn recheck_all(&self, node: Option<usize>) {
        for lock in self.all_locks() {
            let _ = lock.cast(LockMsg::Recheck { node });
        }
    }

    /// Every lock re-checks its keys on node `node`, which has just
    /// reconnected: fed to its state here and now rather than as a message
    /// to each actor (see `LockPort::engine_news`). The locks whose
    /// extensions the break failed have only what is left of their validity
    /// to be extended again: with 10,000 held locks, a message to each put
    /// the first of those extensions out 43 to 67 ms after the node was
    /// back, fed here 25 to 41 ms (four runs each of a probe by hand). The
    /// routes are copied out first: a lock the re-check retires takes its
    /// route out of the table.
    pub(crate) fn recheck_reconnected(&self, node: usize) {
        let ports: Vec<Arc<dyn LockPort>> =
            read(&self.locks).values().map(|r| r.port.clone()).collect();
        for port in ports {
            port.engine_news(EngineNews::Recheck { node });
        }
    }

    pub(crate) fn all_locks(&self) -> Vec<ActorRef<LockMsg>> {
        read(&self.locks)
            .values()
            .map(|r| r.actor.clone())
            .collect()
    }

    pub(crate) fn lock_count(&self) -> usize {
        read(&self.locks).len()
    }

    /// The extra notice a lock core asks for on top of its margin: what it
    /// costs this process to tell every holder it has, when their grants end
    /// at once. Measured (`tests/notice.rs`, release build, 2 cores): 10,000
    /// holders told within 31–102 ms of the engine's deadline, up to 10 µs a
    /// holder; 20 µs is used, capped at a fifth of the validity. The core
    /// ends a grant this much before the holder's `valid_until`.
    pub(crate) fn notice_allowance(&self) -> Duration {
        let per_holder = Duration::from_micros(20);
        let holders = u32::try_from(self.holders.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        per_holder
            .saturating_mul(holders)
            .min(self.settings.validity / 5)
    }
}

/// The lock cores' configuration, from validated settings. `epoch` is the
/// origin of the extension grid every lock of the locker shares, so that each
/// node gets one batch per tick instead of one command per lock.
fn core_config(s: &Settings, epoch: crate::core::Time) -> Config {
    Config {
        majority: s.majority,
        total: s.total,
        nodes: s.nodes.len(),
        placement: (0..s.total).map(|i| s.node_of_key(i)).collect(),
        terms: Arc::new(Terms::new(
            Life {
                ttl: s.validity,
                drift: s.drift,
            },
            s.extend,
        )),
        extend: s.extend,
        timeout: s.timeout,
        tracking: s.tracking,
        handover_limit: s.handover_limit,
        fencing: if !s.fencing {
            Fencing::Off
        } else if s.fencing_in_script() {
            Fencing::InScript
        } else {
            Fencing::Majority
        },
        fingerprint: s.fingerprint(),
        epoch,
        // Without fair queueing, a waiter queues once it has waited one
        // validity (the starvation bound). Not on a cluster: a name with
        // braces would put its queue on another slot than its keys, and
        // only fair queueing refuses such names.
        fair: (s.fair || !s.is_cluster()).then(|| Fair {
            wall_origin_us: wall_origin_us(),
            life: s.validity,
            refresh: s.extend.min(s.validity / 3),
            after: if s.fair { Duration::ZERO } else { s.validity },
        }),
        handover: s.handover.as_ref().map(|_| Handover {
            wall_origin_us: wall_origin_us(),
        }),
    }
}

/// The wall clock (µs since the Unix epoch) at the origin of the engine's
/// clock: what turns a core's `now` into the arrival time fair queues order
/// waiters by.
fn wall_origin_us() -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let since_origin = crate::clock::now().as_nanos() / 1_000;
    wall.saturating_sub(since_origin)
}

// A poisoned lock only means another thread panicked while holding it; the maps
// stay structurally valid, so keep going rather than cascade the panic.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Locks `l`, a poisoned lock as well (the tables stay usable).
pub(crate) fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts a background task when dropped: state that owns helper tasks cleans
/// them up even when its actor is killed (ractor skips `post_stop` on kill).
#[derive(Debug)]
pub(crate) struct AbortOnDrop(tokio::task::AbortHandle);

impl AbortOnDrop {
    pub(crate) fn new<T>(task: &tokio::task::JoinHandle<T>) -> Self {
        AbortOnDrop(task.abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::testing::{job, Sink};
    use crate::options::LockerOptions;
    use ractor::Actor;

    #[test]
    fn a_runtime_slow_to_answer_commands_in_a_row_counts_as_busy_for_the_backoff() {
        assert_eq!(Pace::STRIKES, 2, "the cases below are written for two");
        let t0 = Instant::now();
        let us = |n: u64| t0 + Duration::from_micros(n);
        let pace = Pace::new(t0);
        assert!(!pace.busy(t0), "busy before anything ran");
        // (made, answered, then asked at, busy?)
        let cases = [
            // Answered at once, or at the limit: not busy.
            (0, 0, 1, false),
            (10, 1_010, 1_011, false),
            // One answer past the limit is not enough...
            (2_000, 3_001, 3_002, false),
            // ...and a prompt one starts the count again.
            (3_100, 3_200, 3_201, false),
            (4_000, 5_001, 5_002, false),
            // Two in a row: busy from the second on, for the backoff.
            (6_000, 7_001, 7_002, true),
            // The backoff starts the count again: one more slow answer
            // does not push its end out.
            (7_100, 8_200, 1_007_000, true),
            (8_000, 8_000, 1_007_001, false),
        ];
        for (made, answered, asked, busy) in cases {
            pace.answered(us(made), us(answered));
            assert_eq!(
                pace.busy(us(asked)),
                busy,
                "made {made} µs, answered {answered} µs, asked at {asked} µs"
            );
        }
        // Later, one slow answer alone is not enough, two are; an earlier
        // pair never pulls the end of the backoff in.
        pace.answered(us(2_000_000), us(2_001_001));
        assert!(!pace.busy(us(2_001_002)));
        pace.answered(us(3_000_000), us(3_001_001));
        assert!(pace.busy(us(4_001_000)));
        pace.answered(us(0), us(1_100));
        pace.answered(us(0), us(1_100));
        assert!(pace.busy(us(4_001_000)));
        assert!(!pace.busy(us(4_001_001)));
        // An answer before its making (clocks read on two threads) is not
        // slow.
        let pace = Pace::new(t0);
        pace.answered(us(1_500), us(0));
        pace.answered(us(1_500), us(0));
        assert!(!pace.busy(us(1)));
    }

    #[test]
    fn retirement_never_strands_a_request() {
        // Senders on several threads count then deliver; the actor retires
        // with the count it has received. Once retired, nothing more is
        // delivered, and every request counted before was received.
        for _ in 0..200 {
            let sent = Arc::new(AtomicU64::new(0));
            let received = Arc::new(AtomicU64::new(0));
            let senders: Vec<_> = (0..3)
                .map(|_| {
                    let (sent, received) = (sent.clone(), received.clone());
                    std::thread::spawn(move || {
                        let mut rerouted = 0;
                        for _ in 0..50 {
                            if count_send(&sent) {
                                received.fetch_add(1, Ordering::SeqCst);
                            } else {
                                rerouted += 1;
                            }
                        }
                        rerouted
                    })
                })
                .collect();
            let retired_at = loop {
                let seen = received.load(Ordering::SeqCst);
                if try_retire(&sent, seen) {
                    break Some(seen);
                }
                if senders.iter().all(|s| s.is_finished()) && try_retire(&sent, 150) {
                    break Some(150);
                }
            };
            let rerouted: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();
            assert!(retired(&sent));
            assert_eq!(received.load(Ordering::SeqCst), retired_at.unwrap());
            assert_eq!(retired_at.unwrap() + rerouted, 150);
        }
    }

    #[tokio::test]
    async fn a_lane_is_withdrawn_only_by_its_owner() {
        let settings = LockerOptions::new(["redis://127.0.0.1:1", "redis://127.0.0.1:2"])
            .settings()
            .unwrap();
        let shared = Shared::new(settings);
        let (sink, _h) = Actor::spawn(None, Sink, ()).await.unwrap();
        let (old, _h1) = Actor::spawn(None, Sink, ()).await.unwrap();
        let (new, _h2) = Actor::spawn(None, Sink, ()).await.unwrap();

        // No lane yet: the job comes back at once.
        assert!(shared.send_job(0, job(&sink)).is_err());

        let (tx_old, _rx_old) = tokio::sync::mpsc::unbounded_channel();
        shared.set_lane(
            0,
            NodeLane {
                owner: old.get_id(),
                lane: tx_old,
                conn: 0,
            },
        );
        let (tx_new, mut rx_new) = tokio::sync::mpsc::unbounded_channel();
        shared.set_lane(
            0,
            NodeLane {
                owner: new.get_id(),
                lane: tx_new,
                conn: 0,
            },
        );
        // The replaced actor going away must not take its successor's lane.
        shared.clear_lane(0, old.get_id());
        assert!(shared.send_job(0, job(&sink)).is_ok());
        assert!(rx_new.try_recv().is_ok());
        // Another node's slot and an index out of range are untouched / refused.
        assert!(shared.send_job(1, job(&sink)).is_err());
        assert!(shared.send_job(7, job(&sink)).is_err());

        shared.clear_lane(0, new.get_id());
        assert!(shared.send_job(0, job(&sink)).is_err());
        // A lane whose pump is gone refuses too (the receiver was dropped).
        let (tx_dead, rx_dead) = tokio::sync::mpsc::unbounded_channel();
        drop(rx_dead);
        shared.set_lane(
            0,
            NodeLane {
                owner: new.get_id(),
                lane: tx_dead,
                conn: 0,
            },
        );
        assert!(shared.send_job(0, job(&sink)).is_err());
        for a in [sink, old, new] {
            a.stop(None);
        }
    }
}
