//! LockActor: one per lock name in use in this process. A thin shell around
//! the lock core ([`crate::core::LockCore`]): it turns messages into core
//! events stamped with the engine's clock, and carries out the core's effects
//! — commands to the nodes, one timer, answers to callers, holder statuses.
//! Every decision is the core's; this file only moves messages and runs I/O.
//!
//! Nothing in a handler awaits another actor: commands go to the node's
//! command lane (or, for extensions, its batch), replies come back as
//! messages, and the core's one timer is armed on the locker's timer task.
//!
//! # Requests and releases run on the caller's thread
//! The actor's state sits in a [`LockCell`], a mutex the actor shares with
//! the request route and the leases of its grants. A request or a release
//! locks it and feeds the core there and then, on the caller's thread,
//! instead of crossing to the engine's thread and back: a request queued
//! behind a local holder costs no wake-up of the engine, a release that
//! hands the lock to the next local waiter wakes that waiter directly, and a
//! chain of hand-overs never leaves the application's threads (measured in
//! BENCHMARKS.md: the seed bench's tasks on one name). What needs the
//! network goes to the node's command pump on the engine's thread, or, for
//! the acquisitions and releases a caller waits for, out of the mutex to
//! the caller, which sends them on the node's direct connection itself and
//! feeds their replies here (see `direct`).
//! Node replies, invalidations, cancels and the timer come in as messages,
//! but for two kinds of the engine's own news that come by the hundred:
//! the answers to a node's batch of extensions, and the re-check after a
//! reconnect, which the task that has them feeds to the state itself
//! (`LockPort::engine_news`).
//! The core still sees one event at a time, in the order the mutex admits
//! them. The mutex is held only while the core runs and its effects are
//! handed out (sends into channels; nothing waits), so a busy application
//! thread cannot hold it across its own work. The answers to callers (a
//! grant, a refusal, a release's outcome) go out after the mutex is let go
//! ([`Outbox`]): the caller they wake usually comes straight back with its
//! next request or release, and would otherwise find the mutex still held.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::clock;
use crate::context::{try_retire, Shared};
use crate::core::{
    CmdId, Draws, Effect, Event, GrantView, HolderId, HolderStatus, LockCore, Op, OsEntropy,
    Outcome, Refusal, Route, Target, Time,
};
use crate::direct;
use crate::error::{Error, LostReason};
use crate::few::{OneOrMore, Room, Table};
use crate::keys::KeyName;
use crate::metrics;
use crate::msg::{
    DirectCmd, EngineNews, ExtendItem, GrantParts, Job, LockMsg, LockPort, NodeMsg, NodeReply,
    Released, Request, Sends, SupervisorMsg, TokenTag,
};
use crate::rwlock::{self, Gates};
use crate::scripts::{SetMode, Token};
use crate::status::{self, StatusTx};
use crate::timers::Timer;

pub(crate) struct LockActor;

pub(crate) struct LockArgs {
    pub(crate) name: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) supervisor: ActorRef<SupervisorMsg>,
    /// Its cell, empty until it starts: callers reach the state through it.
    pub(crate) cell: Arc<LockCell>,
}

/// One caller's hold on a grant: what its `Lease` observes.
#[derive(Debug)]
struct Holder {
    status: StatusTx,
    /// The locker's count of holders, which this one is part of.
    count: Arc<AtomicUsize>,
    /// For the log and the hold time when it ends.
    lock: Arc<str>,
    token: TokenTag,
    since: std::time::Instant,
}

impl Holder {
    /// Tells the holder it is over (its token is cancelled before the end
    /// shows: whoever sees `lost()` return also sees it cancelled).
    fn end(&self, reason: LostReason) {
        if !self.status.end(reason) {
            return;
        }
        metrics::hold_ended(self.since.elapsed(), reason);
        let (lock, token, why) = (&self.lock, self.token, reason.as_str());
        match reason {
            LostReason::Released => tracing::debug!(%lock, %token, "released"),
            // Ends the caller asked for (closing the locker, a maximum hold).
            LostReason::Closed | LostReason::MaxHold => {
                tracing::info!(%lock, %token, reason = why, "lock ended: {reason}")
            }
            _ => tracing::warn!(%lock, %token, reason = why, "lock lost: {reason}"),
        }
    }
}

impl Drop for Holder {
    /// A killed or failed LockActor drops its state: the holder must hear that
    /// nobody extends its keys any more, never keep a guard that looks held.
    fn drop(&mut self) {
        self.count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // Nothing if it has ended already: `end` tells only once.
        self.end(LostReason::EngineStopped);
    }
}

/// A `LockActor`'s state, behind the mutex it shares with its leases (see
/// the module's doc). Empty once the actor has stopped: its holders were
/// told then, and a late release finds nothing to do.
pub(crate) struct LockCell {
    state: Mutex<Option<LockState>>,
    /// Requests sent to the actor, counted by their senders (see
    /// `LockState::retire`).
    sent: AtomicU64,
}

impl std::fmt::Debug for LockCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockCell")
    }
}

impl LockCell {
    /// A cell for an actor about to start.
    pub(crate) fn new() -> LockCell {
        LockCell {
            state: Mutex::new(None),
            sent: AtomicU64::new(0),
        }
    }

    /// The state, locked. A panic while it was borrowed leaves none:
    /// `outside` catches its own and empties the cell; one in the actor's
    /// handler poisons the mutex, and whoever locks it next empties it
    /// (its holders hear that the engine stopped) rather than run the core
    /// of a half-handled event. The actor stops either way.
    fn slot(&self) -> MutexGuard<'_, Option<LockState>> {
        self.state.lock().unwrap_or_else(|poisoned| {
            self.state.clear_poison();
            let mut slot = poisoned.into_inner();
            slot.take();
            slot
        })
    }

    /// Runs `f` on the state from outside the actor (a caller's thread),
    /// then sends the answers it produced; what it sends on direct
    /// connections, for the caller to drive. `None` if the actor has
    /// stopped or failed.
    fn outside(&self, f: impl FnOnce(&mut LockState) -> Outbox) -> Option<Sends> {
        self.locked(f).map(|out| self.deliver(out))
    }

    /// Runs `f` on the locked state; `None` if the actor has stopped. A
    /// panic in the engine must not unwind into the caller's task: the
    /// state is dropped (its holders hear that the engine stopped, as when
    /// the actor is killed) and the actor stopped.
    fn locked<R>(&self, f: impl FnOnce(&mut LockState) -> R) -> Option<R> {
        let mut slot = self.slot();
        let st = slot.as_mut()?;
        let me = st.me.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(st)));
        if result.is_err() {
            let dead = slot.take();
            drop(slot);
            let lock = dead.as_ref().map(|st| st.name.clone()).unwrap_or_default();
            tracing::error!(%lock, "lock engine failed on a caller's event; its holders are told it stopped");
            me.stop(Some("failed".into()));
            drop(dead);
        }
        result.ok()
    }

    /// Sends the answers `out` holds, the state unlocked. A grant whose
    /// caller went away is given back, which may answer someone else. The
    /// commands for direct connections come back, to be driven.
    fn deliver(&self, mut out: Outbox) -> Sends {
        let mut sends = Sends::default();
        while let Some(mut gone) = out.send(&mut sends) {
            let next = self.locked(|st| {
                let mut next = Outbox::default();
                while let Some(holder) = gone.pop() {
                    next.append(st.give_back(holder));
                }
                next
            });
            match next {
                Some(next) => out = next,
                None => break,
            }
        }
        sends
    }

    /// Empties the cell, and drops the state outside the lock: dropping
    /// tells its holders, whose wake-ups must not run under it.
    fn empty(&self) {
        let st = self.slot().take();
        drop(st);
    }
}

impl LockPort for LockCell {
    fn request(&self, request: Request) -> Result<Sends, Request> {
        let mut request = Some(request);
        let sends = self.outside(|st| match request.take() {
            Some(r) => {
                let (event, caller) = st.request_event(r);
                st.feed_on(event, caller.as_ref())
            }
            None => Outbox::default(),
        });
        match request {
            Some(request) => Err(request),
            None => Ok(sends.unwrap_or_default()),
        }
    }

    fn release(&self, holder: u64, reply: Option<oneshot::Sender<Released>>) -> Option<Sends> {
        self.outside(|st| {
            let event = st.release_event(holder, reply);
            let caller = direct::caller_runtime(&st.shared);
            st.feed_on(event, caller.as_ref())
        })
    }

    fn sent(&self) -> &AtomicU64 {
        &self.sent
    }

    /// Fed on the direct connection's runtime (the caller's), so what it
    /// sends next may go there too.
    fn reply(&self, cmd: crate::core::CmdId, outcome: Outcome, recheck: Option<usize>) -> Sends {
        self.outside(|st| {
            let caller = direct::caller_runtime(&st.shared);
            let mut out = st.feed_on(Event::Reply { cmd, outcome }, caller.as_ref());
            if let Some(node) = recheck {
                out.append(st.feed_on(Event::Recheck { node: Some(node) }, caller.as_ref()));
            }
            out
        })
        .unwrap_or_default()
    }

    /// Runs as the actor's handler would (the engine's work, its caller's
    /// runtime none), on the thread of the task that had the news.
    fn engine_news(&self, news: EngineNews) {
        let _engine = crate::runtime::EngineScope::enter();
        let event = match news {
            EngineNews::Reply(NodeReply { cmd, outcome }) => Event::Reply { cmd, outcome },
            EngineNews::Recheck { node } => Event::Recheck { node: Some(node) },
        };
        if let Some(sends) = self.outside(|st| st.feed(event)) {
            direct::spawn(sends);
        }
    }

    fn handed(&self, key: usize, token: Token, cmd: CmdId, fence: Option<u64>) -> bool {
        let out = self.locked(|st| {
            if !st.core.engine_quiet() || !st.shared.first_handed(cmd, &token, key) {
                return None;
            }
            let caller = direct::caller_runtime(&st.shared);
            let event = Event::Handed {
                key,
                token,
                cmd,
                fence,
            };
            Some(st.feed_on(event, caller.as_ref()))
        });
        match out.flatten() {
            Some(out) => {
                direct::send_now(self.deliver(out));
                true
            }
            None => false,
        }
    }
}

/// What the actor keeps: its cell, emptied when the actor stops for any
/// reason (a kill included), so that holders never keep a guard that looks
/// held with nobody extending it.
pub(crate) struct LockHome {
    cell: Arc<LockCell>,
    /// The lock's name, read by the Supervisor from the state ractor hands
    /// it when the actor stops (its routing entry is removed by name).
    name: Arc<str>,
}

impl LockHome {
    /// The lock's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }
}

impl Drop for LockHome {
    fn drop(&mut self) {
        self.cell.empty();
    }
}

pub(crate) struct LockState {
    name: Arc<str>,
    /// This actor, for the commands' replies, its timer and its own stop.
    me: ActorRef<LockMsg>,
    /// The cell this state lives in, handed to each grant's lease.
    port: Weak<LockCell>,
    /// A side of a read-write lock: what gates each of its keys. When set,
    /// the lock's keys are named by `rwlock::key_name`.
    gates: Option<Box<[Arc<Gates>]>>,
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    /// Requests received (compared with the cell's count of those sent, to
    /// retire safely).
    seen: u64,
    core: LockCore,
    requests: Table<oneshot::Sender<Result<GrantParts, Error>>>,
    /// Usually one (a lock has one holder at a time; a semaphore's permits
    /// taken in this process are the exception): a vector searched in
    /// place costs a fraction of a hash table's room per held lock.
    holders: Vec<(HolderId, Holder)>,
    acks: Table<oneshot::Sender<Released>>,
    next_ack: u64,
    /// The core's timer, and the instant it is armed for.
    timer: Option<(Time, Timer)>,
    /// What was last seen of the grant, for logs and metrics.
    watch: GrantWatch,
}

impl Actor for LockActor {
    type Msg = LockMsg;
    type State = LockHome;
    type Arguments = LockArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LockMsg>,
        args: LockArgs,
    ) -> Result<LockHome, ActorProcessingErr> {
        let s = &args.shared.settings;
        let side = rwlock::side_of(&args.name);
        let gates = side.map(|(base, side)| {
            (0..s.total)
                .map(|i| {
                    Arc::new(Gates {
                        side,
                        keys: rwlock::gates(&s.prefix, base, side, i)
                            .into_iter()
                            .map(Arc::from)
                            .collect(),
                    })
                })
                .collect()
        });
        let core = LockCore::new(
            args.shared.core_for(&args.name),
            Draws::Os(OsEntropy),
            clock::now(),
        );
        let cell = args.cell;
        let name = args.name.clone();
        *cell.slot() = Some(LockState {
            name: args.name,
            me: myself,
            port: Arc::downgrade(&cell),
            gates,
            shared: args.shared,
            supervisor: args.supervisor,
            seen: 0,
            core,
            requests: Table::default(),
            holders: Vec::new(),
            acks: Table::default(),
            next_ack: 0,
            timer: None,
            watch: GrantWatch::default(),
        });
        Ok(LockHome { cell, name })
    }

    async fn handle(
        &self,
        myself: ActorRef<LockMsg>,
        msg: LockMsg,
        home: &mut LockHome,
    ) -> Result<(), ActorProcessingErr> {
        // The engine's work, whichever runtime runs it (`dedicated_runtime`
        // off: the callers' own).
        let _engine = crate::runtime::EngineScope::enter();
        let mut slot = home.cell.slot();
        let Some(st) = slot.as_mut() else {
            // Emptied by a panic, which stops us (see `LockCell::slot`).
            myself.stop(None);
            return Ok(());
        };
        // A request carries its caller's runtime: what it sends may go on a
        // direct connection even when fed here (see `direct`).
        let mut caller = None;
        let event = match msg {
            LockMsg::Request(request) => {
                let (event, on) = st.request_event(request);
                caller = on;
                event
            }
            LockMsg::Cancel { id } => {
                st.requests.remove(id);
                Event::Cancel { id }
            }
            LockMsg::Reply(NodeReply { cmd, outcome }) => Event::Reply { cmd, outcome },
            LockMsg::Invalidated { index } => Event::Invalidated { key: index },
            LockMsg::Handed {
                index,
                token,
                cmd,
                fence,
            } => {
                // Counted by its sender, as requests are (see `retire`).
                st.seen += 1;
                // Its other copy, read on a caller's connection, was taken
                // (see `Shared::first_handed`).
                if !st.shared.first_handed(cmd, &token, index) {
                    return Ok(());
                }
                Event::Handed {
                    key: index,
                    token,
                    cmd,
                    fence,
                }
            }
            LockMsg::Recheck { node } => Event::Recheck { node },
            LockMsg::Timeout => {
                st.timer = None;
                Event::Timeout
            }
            LockMsg::Close => Event::Close,
            LockMsg::OwnToken { reply } => {
                let _ = reply.send(st.core.live_token().cloned());
                return Ok(());
            }
            #[cfg(feature = "fault-injection")]
            LockMsg::Fail => return Err("injected failure".into()),
        };
        let out = st.feed_on(event, caller.as_ref());
        drop(slot);
        // Sent on a caller's direct connection (a request that came through
        // the Supervisor), with nobody here to drive them.
        direct::spawn(home.cell.deliver(out));
        Ok(())
    }
}

impl LockState {
    /// The event of a caller's request, whose answer goes to its `reply`.
    fn request_event(&mut self, request: Request) -> (Event, Option<Handle>) {
        let Request {
            id,
            kind,
            terms,
            reply,
            caller,
        } = request;
        self.seen += 1;
        self.requests.insert(id, reply);
        (Event::Request { id, kind, terms }, caller)
    }

    /// The event of holder `holder`'s release; `reply` is answered once its
    /// deletes are.
    fn release_event(&mut self, holder: u64, reply: Option<oneshot::Sender<Released>>) -> Event {
        let ack = reply.map(|r| {
            self.next_ack += 1;
            self.acks.insert(self.next_ack, r);
            self.next_ack
        });
        Event::Release { holder, ack }
    }

    /// Feeds one event to the core and carries out what it asks, including
    /// the events that carrying out produces (a grant whose caller left).
    /// The answers to callers come back, to be sent once the state is
    /// unlocked.
    #[must_use = "the answers must be sent"]
    fn feed(&mut self, event: Event) -> Outbox {
        self.feed_on(event, None)
    }

    /// [`LockState::feed`], on the thread of a caller's runtime `caller`:
    /// the acquisitions and releases it produces may go by a direct
    /// connection (see `direct`).
    #[must_use = "the answers must be sent"]
    fn feed_on(&mut self, event: Event, caller: Option<&Handle>) -> Outbox {
        let mut out = Outbox::default();
        // Entered while the core runs, so that its events carry the `lock`
        // field. Made here rather than kept: while disabled (the usual case)
        // it costs next to nothing, and kept it was 40 bytes of every held
        // lock.
        let span = tracing::debug_span!("lock", lock = %self.name);
        let _entered = span.enter();
        self.core.set_allowance(self.shared.notice_allowance());
        // Events the effects feed back (a grant nobody took) are rare: they
        // queue behind the first, in a deque that allocates only if used.
        let mut next = Some(event);
        let mut later = std::collections::VecDeque::new();
        let mut now = clock::now();
        while let Some(event) = next.take().or_else(|| later.pop_front()) {
            now = clock::now();
            self.core.handle(now, event);
            while let Some(effect) = self.core.poll_effect() {
                if let Some(back) = self.apply(effect, &mut out, caller) {
                    later.push_back(back);
                }
            }
        }
        self.watch
            .update(self.core.grant_view(now), &self.name, &self.shared);
        self.arm_timer();
        if self
            .core
            .settled(now, self.shared.holders.load(Ordering::Relaxed))
        {
            self.trim();
        }
        out
    }

    /// Holder `holder`'s grant found its caller gone: it is released as if
    /// never handed out (no hold counted, nothing logged as a release).
    fn give_back(&mut self, holder: HolderId) -> Outbox {
        tracing::trace!(lock = %self.name, holder, "grant not delivered");
        if let Some(pos) = self.holders.iter().position(|(id, _)| *id == holder) {
            let (_, h) = self.holders.swap_remove(pos);
            // Nobody saw it: ended without a word in the log or the metrics.
            h.status.end(LostReason::Released);
        }
        self.feed(Event::Release { holder, ack: None })
    }

    /// A lock settled into a long hold, or granted and quiet in a process
    /// of many holders, gives back the room its tables took while busy (see
    /// `LockCore::settled`).
    fn trim(&mut self) {
        self.core.trim();
        self.requests.trim();
        self.acks.trim();
        self.holders.shrink_to_fit();
    }

    /// Carries out one effect; returns an event to feed back, if any.
    fn apply(
        &mut self,
        effect: Effect,
        out: &mut Outbox,
        caller: Option<&Handle>,
    ) -> Option<Event> {
        match effect {
            Effect::Send { cmd, target, op } => self.dispatch(cmd, target, op, caller, out),
            Effect::Grant {
                to,
                holder,
                valid_until,
                hold_until,
                fence,
            } => {
                // The cell is always there (the actor, which keeps it, is
                // running); the request is not if its caller went away:
                // then the grant goes straight back, before anything is
                // built for it.
                let (Some(reply), Some(port)) = (self.requests.remove(to), self.port.upgrade())
                else {
                    tracing::trace!(lock = %self.name, request = to, "grant not delivered");
                    return Some(Event::Release { holder, ack: None });
                };
                let (tx, rx) = status::status(valid_until);
                let token = self
                    .core
                    .grant_view(clock::now())
                    .map(|g| TokenTag::of(g.token))
                    .unwrap_or_default();
                let parts = GrantParts {
                    name: self.name.clone(),
                    token,
                    holder,
                    lock: port,
                    status: rx,
                    fence,
                    hold_until,
                };
                self.shared
                    .holders
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let h = Holder {
                    status: tx,
                    count: self.shared.holders.clone(),
                    lock: self.name.clone(),
                    token,
                    since: std::time::Instant::now(),
                };
                if self.holders.capacity() == 0 {
                    self.holders.reserve_exact(1);
                }
                self.holders.push((holder, h));
                out.push(Answer::Grant {
                    reply,
                    parts,
                    holder,
                });
            }
            Effect::Refuse { to, why } => {
                if let Some(reply) = self.requests.remove(to) {
                    let err = match why {
                        Refusal::Closed => Error::Closed,
                        Refusal::ConfigMismatch { ours, theirs } => Error::ConfigMismatch {
                            name: self.name.to_string(),
                            ours: ours.to_string(),
                            theirs: theirs.to_string(),
                        },
                        Refusal::NotLocked {
                            acquired,
                            held_by_others,
                        } => Error::NotLocked {
                            name: self.name.to_string(),
                            acquired,
                            needed: self.shared.settings.majority,
                            total: self.shared.settings.total,
                            held_by_others,
                        },
                    };
                    out.push(Answer::Refuse { reply, err });
                }
            }
            Effect::Status { holder, status } => match status {
                HolderStatus::Held { valid_until } => {
                    if let Some((_, h)) = self.holders.iter().find(|(id, _)| *id == holder) {
                        h.status.extend(valid_until);
                    }
                }
                HolderStatus::Ended(reason) => {
                    if let Some(pos) = self.holders.iter().position(|(id, _)| *id == holder) {
                        let (_, h) = self.holders.swap_remove(pos);
                        h.end(reason);
                    }
                }
            },
            Effect::Released {
                ack,
                deleted,
                unconfirmed,
            } => {
                if let Some(reply) = self.acks.remove(ack) {
                    let released = Released {
                        deleted,
                        unconfirmed,
                    };
                    out.push(Answer::Released { reply, released });
                }
            }
            Effect::Idle => self.retire(),
            Effect::Closed => {
                let _ = self.supervisor.cast(SupervisorMsg::LockClosed {
                    name: self.name.clone(),
                });
                self.me.stop(Some("closed".into()));
            }
        }
        None
    }

    /// Hands one command to its node: an acquisition or a release fed on a
    /// caller's runtime to the node's direct connection if the core allows
    /// it, extensions to the node's batch, the rest to its command pump. A
    /// node without a connection answers at once, as a failure; a command
    /// lost with a killed node is timed out by the core.
    fn dispatch(
        &mut self,
        cmd: crate::core::CmdId,
        target: Target,
        op: Op,
        caller: Option<&Handle>,
        out: &mut Outbox,
    ) {
        let (node, key) = match target {
            Target::Key(i) => (self.shared.core.placement[i], self.key(i)),
            Target::Fence(n) => (n, self.fence_key()),
        };
        // A free key of a read-write lock is taken through its gates, a
        // lost key taken back at an extension too: one command, not the
        // node's batch.
        let gates = match (&self.gates, target, &op) {
            (
                Some(per_key),
                Target::Key(i),
                Op::Acquire {
                    mode: SetMode::Nx, ..
                }
                | Op::Extend {
                    mode: SetMode::Nx, ..
                },
            ) => Some(per_key[i].clone()),
            _ => None,
        };
        let op = match self.send_direct(cmd, op, caller, node, &key, &gates) {
            Ok(direct) => return out.push(Answer::Direct(direct)),
            Err(op) => op,
        };
        let failed = |me: &ActorRef<LockMsg>, why| {
            let _ = me.cast(LockMsg::Reply(NodeReply {
                cmd,
                outcome: Outcome::Failed(why),
            }));
        };
        let op = match (op, &gates) {
            (Op::Extend { token, mode, ttl }, None) => {
                let item = ExtendItem {
                    key,
                    token,
                    mode,
                    ttl,
                    cmd,
                    port: self.port.clone(),
                };
                match self.shared.node(node) {
                    Some(actor) if actor.cast(NodeMsg::Extend(item)).is_ok() => {}
                    _ => failed(&self.me, "node not running"),
                }
                return;
            }
            (op, _) => op,
        };
        let fence_key = fenced(&op).then(|| self.fence_key());
        let job = Job {
            op,
            key,
            fence_key,
            gates,
            cmd,
            reply_to: self.me.clone(),
        };
        if self.shared.send_job(node, job).is_err() {
            failed(&self.me, "node not connected");
        }
    }

    /// The command for `op` on node `node`'s direct connection, from the
    /// caller's runtime `caller`, if it may go there (see `direct`); gives
    /// `op` back otherwise.
    fn send_direct(
        &mut self,
        cmd: crate::core::CmdId,
        op: Op,
        caller: Option<&Handle>,
        node: usize,
        key: &KeyName,
        gates: &Option<Arc<Gates>>,
    ) -> Result<DirectCmd, Op> {
        // An acquisition or a release of a key, nothing else of it out but
        // what it may go behind.
        let route = self.core.route(cmd);
        let conn = match (route, caller) {
            (Route::Engine, _) => None,
            (_, Some(runtime)) => direct::conn(&self.shared, node, runtime),
            // A waiter's acquisition made on the engine's thread (a retry on
            // an invalidation or a timer) goes on the open direct connection
            // too, run on its runtime. On the engine's connection its read
            // of the key would have that connection track the key as well,
            // and our own later writes of it on the direct connection
            // (`NOLOOP` spares only the connection that writes) would come
            // back as invalidations: a check or a retry for nothing, which
            // reads the key on the engine's connection again.
            (_, None) if matches!(op, Op::Acquire { .. }) => direct::open_conn(&self.shared, node),
            (_, None) => None,
        };
        // Behind acquisitions on one direct connection: only on that one.
        let conn = conn.filter(|c| match route {
            Route::Behind(generation) => c.info.generation == generation,
            _ => true,
        });
        let Some(conn) = conn else {
            return Err(op);
        };
        let runtime = caller.unwrap_or(&conn.runtime).clone();
        // Fed on the caller's thread, it is handed to its connection before
        // anything made after it (`direct::drive`, `direct::send_now`); fed
        // by the actor, it waits for a task of its own to run first, in no
        // known order with anything else.
        let on_engine = crate::runtime::on_engine_thread();
        if on_engine {
            self.core.went_unordered(cmd);
        } else {
            self.core.went_direct(cmd, conn.info.generation);
        }
        // Counted until run or dropped (`DirectCmd`'s drop).
        conn.info
            .out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port: Weak<dyn LockPort> = self.port.clone();
        Ok(DirectCmd {
            link: conn.link,
            job: Job {
                fence_key: fenced(&op).then(|| self.fence_key()),
                op,
                key: key.clone(),
                gates: gates.clone(),
                cmd,
                reply_to: self.me.clone(),
            },
            port,
            runtime,
            made: on_engine.then(std::time::Instant::now),
        })
    }

    /// Key `i` of the lock, for one command: the state keeps no key names
    /// (see [`KeyName`]).
    fn key(&self, i: usize) -> KeyName {
        let prefix = &self.shared.settings.prefix;
        match self.gates {
            Some(_) => KeyName::new(rwlock::key_name(prefix, i, &self.name)),
            None => KeyName::of(prefix, i, &self.name),
        }
    }

    /// The name's fencing counter key, for one command.
    fn fence_key(&self) -> KeyName {
        KeyName::format(format_args!(
            "{}:fence:{}",
            self.shared.settings.prefix, self.name
        ))
    }

    /// Arms the locker's timer task for the core's next deadline.
    fn arm_timer(&mut self) {
        let next = self.core.next_timeout();
        if self.timer.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        let me = &self.me;
        self.timer = next.map(|at| (at, self.shared.timers.at(at, me)));
    }

    /// Retires this actor if no request is on its way to it (see
    /// `context::try_retire`).
    fn retire(&mut self) {
        let seen = self.seen;
        // The state lives in the cell: it is there to upgrade.
        let Some(cell) = self.port.upgrade() else {
            return;
        };
        if try_retire(&cell.sent, seen) {
            tracing::trace!(lock = %self.name, "idle; retiring");
            self.me.stop(Some("idle".into()));
        }
    }
}

/// One answer to a caller, sent once the state is unlocked.
enum Answer {
    Grant {
        reply: oneshot::Sender<Result<GrantParts, Error>>,
        parts: GrantParts,
        holder: HolderId,
    },
    Refuse {
        reply: oneshot::Sender<Result<GrantParts, Error>>,
        err: Error,
    },
    Released {
        reply: oneshot::Sender<Released>,
        released: Released,
    },
    /// A command for a direct connection, driven once the state is
    /// unlocked.
    Direct(DirectCmd),
}

/// The answers one event produced: usually one or none, kept inline.
#[derive(Default)]
pub(crate) struct Outbox(OneOrMore<Answer>);

impl Outbox {
    fn push(&mut self, answer: Answer) {
        self.0.push(answer);
    }

    fn append(&mut self, other: Outbox) {
        for answer in other.0 {
            self.push(answer);
        }
    }

    /// Sends every answer, and puts the commands for direct connections in
    /// `sends`; the holders whose grant found no caller, if any.
    fn send(self, sends: &mut Sends) -> Option<Vec<HolderId>> {
        let mut gone = Vec::new();
        for answer in self.0 {
            match answer {
                Answer::Direct(cmd) => sends.push(cmd),
                Answer::Grant {
                    reply,
                    parts,
                    holder,
                } => {
                    if reply.send(Ok(parts)).is_err() {
                        gone.push(holder);
                    }
                }
                Answer::Refuse { reply, err } => {
                    let _ = reply.send(Err(err));
                }
                Answer::Released { reply, released } => {
                    let _ = reply.send(released);
                }
            }
        }
        (!gone.is_empty()).then_some(gone)
    }
}

/// What the shell last saw of the grant ([`LockCore::grant_view`]), to log
/// and count what changed: local hand-overs, and keys lost (or won back)
/// while the majority still holds. Observes; decides nothing.
#[derive(Debug, Default)]
struct GrantWatch {
    grant: Option<u64>,
    handovers: u32,
    /// The keys lost when last seen, in order: empty, and so no
    /// allocation, while every key holds.
    lost: Room<Vec<usize>>,
    /// Some key is lost (counted in the `degraded_locks` gauge).
    degraded: bool,
}

impl GrantWatch {
    fn update(&mut self, view: Option<GrantView<'_>>, lock: &str, shared: &Shared) {
        let grant = view.as_ref().map(|v| v.grant);
        if grant != self.grant {
            self.set_degraded(false);
            self.grant = grant;
            // A grant taken right behind our own deletes starts with the
            // chain's count: those were no hand-overs of its keys.
            self.handovers = view.as_ref().map_or(0, |v| v.handovers);
            self.lost = Room::default();
        }
        let Some(view) = view else {
            return;
        };
        for _ in self.handovers..view.handovers {
            metrics::handover();
        }
        self.handovers = view.handovers;
        // Collecting nothing allocates nothing: the usual case.
        let now_lost: Vec<(usize, LostReason)> = view.lost_keys().collect();
        if now_lost.is_empty() && self.lost.is_empty() {
            return;
        }
        let token = TokenTag::of(view.token);
        for &(key, reason) in &now_lost {
            if !self.lost.iter().any(|&k| k == key) {
                let node = node_name(shared, key);
                tracing::warn!(%lock, %node, %token, key, reason = reason.as_str(), "key of a held lock lost; the majority still holds");
                metrics::key_lost(&node, reason);
            }
        }
        for &key in self.lost.iter() {
            if !now_lost.iter().any(|&(k, _)| k == key) {
                let node = node_name(shared, key);
                tracing::info!(%lock, %node, %token, key, "key of a held lock won back");
            }
        }
        self.lost = Room::from(now_lost.into_iter().map(|(key, _)| key).collect::<Vec<_>>());
        self.set_degraded(!self.lost.is_empty());
    }

    fn set_degraded(&mut self, degraded: bool) {
        if degraded != self.degraded {
            self.degraded = degraded;
            metrics::degraded(degraded);
        }
    }
}

impl Drop for GrantWatch {
    /// A stopped or killed actor's grant no longer counts as degraded.
    fn drop(&mut self) {
        self.set_degraded(false);
    }
}

/// Whether `op`'s script moves the fencing counter: it then needs the
/// counter's key.
fn fenced(op: &Op) -> bool {
    matches!(
        op,
        Op::Acquire { fence: true, .. } | Op::Release { fence: true, .. }
    )
}

/// The address of the node of lock key `key`.
fn node_name(shared: &Shared, key: usize) -> String {
    shared
        .core
        .placement
        .get(key)
        .and_then(|n| shared.settings.nodes.get(*n))
        .map(|n| n.display())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// A held lock keeps its cell for as long as it is held: room here is
    /// room per held lock (the scale bench lists it by allocation size).
    /// 520 bytes in a test build, whose cores keep room for the table
    /// tests' generator (`core::Draws`); 16 fewer in others. It was 632
    /// before the core's lists were kept behind a pointer (`few::Room`).
    #[test]
    fn a_lock_cell_stays_small() {
        let with_arc_header = 16 + std::mem::size_of::<super::LockCell>();
        assert!(with_arc_header <= 520, "{with_arc_header} bytes");
    }
}
