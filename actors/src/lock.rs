//! LockActor: one per lock name in use in this process. It owns the FIFO queue
//! of local waiters, runs acquisition attempts (all `2·M−1` keys at once),
//! tallies node replies toward the majority, extends the held lock, reacts to
//! invalidations, and tells the holder the moment the lock is lost.
//!
//! Only the queue head contends on the server, so local waiters cause no
//! thundering herd, and a local release hands over to the next local waiter.
//! All waiting is message-driven: node replies, invalidations, and timers
//! (attempt bound, extension, validity deadline, fallback retry). Nothing in a
//! handler awaits another actor.
//!
//! Safety: a grant's validity is recomputed from what nodes confirmed, as the
//! `M`-th largest of `sent + ttl − drift` over keys known to be ours
//! ([`quorum::validity_end`]). A timer fires at that instant; if no extension
//! confirmed a later one by then, the holder is told the lock is lost, whatever
//! the network does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use crate::context::Shared;
use crate::error::{Error, LostReason};
use crate::handle::{GrantStatus, Lease};
use crate::keys;
use crate::node::{ExtendItem, Job, NodeMsg};
use crate::quorum::{self, Tally};
use crate::scripts::{Fingerprint, KeyState, SetMode, Token};
use crate::supervisor::SupervisorMsg;
use crate::timers::{Timer, Timers};

pub(crate) struct LockActor;

/// Local hand-overs continue only this long after the keys were acquired:
/// they save two round trips per grant, which matters for short critical
/// sections; with long ones, handing over would only keep other processes
/// out for longer.
const HANDOVER_WINDOW: Duration = Duration::from_millis(10);

/// How long an idle `LockActor` stays alive before it is retired.
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// Extra time allowed for a batched extension (the node's batch window).
const BATCH_SLACK: Duration = Duration::from_millis(50);

/// What a caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// Wait in the FIFO queue until held.
    Wait,
    /// One attempt now; fail if not held.
    Try,
    /// Overwrite the keys, taking the lock from whoever holds it.
    Force,
}

/// A caller waiting for a grant.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) id: u64,
    pub(crate) kind: RequestKind,
    pub(crate) reply: oneshot::Sender<Result<Lease, Error>>,
}

/// A script a `NodeActor` runs on one key.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// The acquire script; with `fence_key`, it also moves the fencing
    /// counter (single instance only).
    Acquire {
        token: Token,
        mode: SetMode,
        fence_key: Option<Arc<str>>,
    },
    Verify {
        token: Token,
    },
    Release {
        token: Token,
    },
    /// Read the fencing counter (the key is the counter's).
    FenceRead,
    /// Raise the fencing counter to `value` unless higher.
    FenceWrite {
        value: u64,
    },
}

/// Which batch of commands a reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Acquisition attempt `id` (also a grant's extension: a grant keeps the
    /// id of the attempt that won it).
    Acquire(u64),
    /// A read-only check of grant `id`.
    Verify(u64),
    /// A compare-and-delete.
    Release,
    /// Fencing counter reads of attempt `id` (`index` is the node).
    FenceRead(u64),
    /// Fencing counter writes of attempt `id` (`index` is the node).
    FenceWrite(u64),
}

/// The result of one script on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Key(KeyState),
    Released(bool),
    /// A fencing counter's value.
    Fence(u64),
    /// The node did not answer usefully (not connected, timed out, error).
    Failed(&'static str),
}

/// A node's reply, with the instant its command was handed to the node.
#[derive(Debug)]
pub(crate) struct NodeReply {
    pub(crate) tag: Tag,
    pub(crate) index: usize,
    pub(crate) sent_at: Instant,
    pub(crate) outcome: Outcome,
}

/// Messages of a [`LockActor`].
#[derive(Debug)]
pub(crate) enum LockMsg {
    /// A caller wants the lock (forwarded by the Supervisor).
    Request(Request),
    /// A waiting caller gave up.
    Cancel { id: u64 },
    /// The holder `grant` (a `Holder` id, one per hand-over) releases it.
    Release {
        grant: u64,
        reply: Option<oneshot::Sender<()>>,
    },
    /// A node answered.
    Reply(NodeReply),
    /// Attempt `attempt` ran out of time for replies.
    AttemptTimeout { attempt: u64 },
    /// Time to extend grant `grant`.
    ExtendTick { grant: u64 },
    /// Grant `grant` may have reached its validity deadline.
    Deadline { grant: u64 },
    /// Key `index` of this lock changed on its node.
    Invalidated { index: usize },
    /// A node reconnected (`Some`) or invalidations may have been dropped
    /// (`None`, all nodes): re-check held keys and let waiters retry.
    Recheck { node: Option<usize> },
    /// Forget replies that are overdue.
    Sweep,
    /// Still idle since `seen` requests? Then ask to be retired.
    IdleCheck { seen: u64 },
    /// Fallback retry for waiters, generation `generation`.
    Retry { generation: u64 },
    /// The locker is closing: fail waiters, release, report, stop.
    Close,
    /// Closing took too long: stop anyway.
    CloseDeadline,
}

pub(crate) struct LockArgs {
    pub(crate) name: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) supervisor: ActorRef<SupervisorMsg>,
}

/// Per-key state of an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AttemptKey {
    Pending,
    Ours(Instant),
    Other {
        forced: bool,
    },
    Failed,
    /// No reply in time; counts as failed, but a late reply is still handled.
    TimedOut,
}

#[derive(Debug)]
struct Attempt {
    id: u64,
    token: Token,
    mode: SetMode,
    /// Set for Try and Force; a Wait attempt serves whoever heads the queue
    /// when it wins.
    request: Option<Request>,
    keys: Vec<AttemptKey>,
    started: Instant,
    _timer: Timer,
    /// The fencing token, once known.
    fence: Option<u64>,
    /// The fencing step in progress (several instances only).
    fencing: Option<Fence>,
    fence_rounds: u8,
    /// Keys invalidated while the attempt was open: re-checked once it wins.
    invalidated: Vec<bool>,
    /// A key is held under another configuration fingerprint: the attempt
    /// fails with `ConfigMismatch` once no reply is pending.
    mismatch: Option<Fingerprint>,
}

/// The two-phase fencing step on several instances: read the counter from a
/// majority of nodes, then raise a majority to max + 1. Any two majorities
/// intersect and grants do not overlap in time, so each token exceeds every
/// token handed out before it.
#[derive(Debug, Clone, Copy)]
enum Fence {
    Read {
        ok: usize,
        failed: usize,
        max: u64,
    },
    Write {
        value: u64,
        acks: usize,
        failed: usize,
    },
}

/// An attempt that is decided but may still get replies: late `Ours` replies
/// are released, so a failed attempt leaves no key behind.
#[derive(Debug)]
struct Finished {
    id: u64,
    token: Token,
    pending: usize,
}

/// Per-key state of a grant.
#[derive(Debug, Clone, Copy)]
struct GrantKey {
    /// Known to hold our token.
    ours: bool,
    /// Earliest moment it can expire (valid when `ours`).
    expiry: Instant,
    /// A reply is still expected from the acquisition (not yet known).
    pending: bool,
    /// The last command on it failed (node unreachable or slow).
    failing: bool,
    /// Why it stopped being ours.
    lost: Option<LostReason>,
    /// Invalidated while its reply was still on the way: check it once the
    /// reply is in (replies and invalidations travel separate paths, so the
    /// reply saying "ours" can arrive after the news that it was deleted).
    recheck: bool,
}

/// The keys held on the server under one token.
#[derive(Debug)]
struct Grant {
    /// The attempt id: tags extension replies.
    id: u64,
    token: Token,
    keys: Vec<GrantKey>,
    valid_until: Instant,
    /// Who holds it now. Several local callers can hold it in turn without
    /// touching the server (a local hand-over).
    holder: Holder,
    /// Local hand-overs since the keys were acquired.
    handovers: u32,
    /// When the keys were acquired (bounds how long hand-overs go on).
    acquired_at: Instant,
    /// The fencing token of this grant (0 without fencing).
    fence: u64,
    extend_timer: Option<Timer>,
    deadline_timer: Option<Timer>,
    /// An extension round is in flight (replies outstanding).
    extending: usize,
}

/// One caller's hold on a grant: what its `Lease` observes.
#[derive(Debug)]
struct Holder {
    id: u64,
    status: watch::Sender<GrantStatus>,
    cancel: CancellationToken,
    ended: bool,
}

impl Holder {
    fn new(id: u64, valid_until: Instant) -> Holder {
        Holder {
            id,
            status: watch::channel(GrantStatus::Held { valid_until }).0,
            cancel: CancellationToken::new(),
            ended: false,
        }
    }

    fn lease(&self, name: &Arc<str>, me: &ActorRef<LockMsg>, fence: u64) -> Lease {
        Lease::new(
            name.clone(),
            self.id,
            me.clone(),
            self.status.subscribe(),
            self.cancel.clone(),
            fence,
        )
    }

    /// Tells the holder it is over. Idempotent.
    fn end(&mut self, reason: LostReason) {
        if self.ended {
            return;
        }
        self.ended = true;
        // Token first: whoever sees `lost()` return must also see it cancelled.
        self.cancel.cancel();
        self.status.send_replace(GrantStatus::Ended(reason));
    }
}

impl Drop for Holder {
    /// A killed or failed LockActor drops its state: the holder must hear that
    /// nobody extends its keys any more, never keep a guard that looks held.
    fn drop(&mut self) {
        self.end(LostReason::EngineStopped);
    }
}

impl Grant {
    /// Ends the grant for its holder and stops its timers.
    fn end(&mut self, reason: LostReason) {
        self.holder.end(reason);
        self.extend_timer = None;
        self.deadline_timer = None;
    }
}

pub(crate) struct LockState {
    name: Arc<str>,
    keys: Vec<String>,
    /// `{prefix}:fence:{name}`: the fencing counter.
    fence_key: Arc<str>,
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    /// Local callers waiting, oldest first.
    queue: VecDeque<Request>,
    attempt: Option<Attempt>,
    finished: Vec<Finished>,
    grant: Option<Grant>,
    /// Release commands whose replies have not come back. A new attempt waits
    /// for them: our own stale key would otherwise block it, and under NOLOOP
    /// its deletion would not wake us.
    releasing: usize,
    /// Set when a release leaves local waiters queued: when its deletes are
    /// confirmed, the next attempt pauses so other processes get a turn.
    yield_after_release: Option<Instant>,
    /// Callers of `release()` waiting for the deletes to be confirmed.
    release_waiters: Vec<oneshot::Sender<()>>,
    /// Commands sent and not yet answered (all kinds).
    outstanding: usize,
    /// When the last command was sent (for the sweep).
    last_sent: Instant,
    sweep_armed: bool,
    /// Something changed while an attempt or release was in flight: retry as
    /// soon as it is decided.
    dirty: bool,
    retry_generation: u64,
    retry_timer: Option<Timer>,
    next_id: u64,
    /// Requests received, reported with `Idle` so the Supervisor can tell
    /// whether one is still in flight to us.
    seen: u64,
    idle_reported: bool,
    idle_armed: bool,
    closing: bool,
}

impl Actor for LockActor {
    type Msg = LockMsg;
    type State = LockState;
    type Arguments = LockArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LockMsg>,
        args: LockArgs,
    ) -> Result<LockState, ActorProcessingErr> {
        let s = &args.shared.settings;
        let keys = (0..s.total)
            .map(|i| keys::key_name(&s.prefix, i, &args.name))
            .collect();
        let fence_key = Arc::from(format!("{}:fence:{}", s.prefix, args.name));
        Ok(LockState {
            name: args.name,
            keys,
            fence_key,
            shared: args.shared,
            supervisor: args.supervisor,
            queue: VecDeque::new(),
            attempt: None,
            finished: Vec::new(),
            grant: None,
            releasing: 0,
            release_waiters: Vec::new(),
            yield_after_release: None,
            outstanding: 0,
            last_sent: Instant::now(),
            sweep_armed: false,
            dirty: false,
            retry_generation: 0,
            retry_timer: None,
            next_id: 1,
            seen: 0,
            idle_reported: false,
            idle_armed: false,
            closing: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<LockMsg>,
        msg: LockMsg,
        st: &mut LockState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LockMsg::Request(req) => {
                st.seen += 1;
                st.idle_reported = false;
                st.on_request(&myself, req);
            }
            LockMsg::IdleCheck { seen } => {
                st.idle_armed = false;
                if seen == st.seen && !st.idle_reported && st.quiet() && !st.closing {
                    st.idle_reported = true;
                    let _ = st.supervisor.cast(SupervisorMsg::LockIdle {
                        name: st.name.clone(),
                        seen,
                    });
                }
            }
            LockMsg::Cancel { id } => {
                st.queue.retain(|r| r.id != id);
                if let Some(a) = &mut st.attempt {
                    if a.request.as_ref().is_some_and(|r| r.id == id) {
                        a.request = None;
                    }
                }
            }
            LockMsg::Release { grant, reply } => {
                if st.grant.as_ref().is_some_and(|g| g.holder.id == grant) {
                    st.release_or_hand_over(&myself);
                }
                if let Some(reply) = reply {
                    // Answered once the deletes are confirmed (each bounded by
                    // `try_next_after`).
                    st.release_waiters.push(reply);
                    st.answer_release_waiters();
                }
            }
            LockMsg::Reply(reply) => {
                st.outstanding = st.outstanding.saturating_sub(1);
                st.on_reply(&myself, reply);
            }
            LockMsg::AttemptTimeout { attempt } => {
                if let Some(a) = &mut st.attempt {
                    if a.id == attempt && a.fencing.is_some() {
                        let a = st.attempt.take().expect("checked");
                        let won = a
                            .keys
                            .iter()
                            .filter(|k| matches!(k, AttemptKey::Ours(_)))
                            .count();
                        warn!(lock = %st.name, token = a.token.short(), "fencing step timed out");
                        st.attempt_failed(&myself, a, won);
                    } else if a.id == attempt {
                        for k in a.keys.iter_mut() {
                            if *k == AttemptKey::Pending {
                                *k = AttemptKey::TimedOut;
                            }
                        }
                        st.decide(&myself);
                    }
                }
            }
            LockMsg::ExtendTick { grant } => {
                if st.grant.as_ref().is_some_and(|g| g.id == grant) {
                    st.extend(&myself);
                }
            }
            LockMsg::Deadline { grant } => {
                if let Some(g) = &st.grant {
                    if g.id == grant && Instant::now() >= g.valid_until {
                        let reason = if g.keys.iter().any(|k| k.failing) {
                            LostReason::Unreachable
                        } else {
                            LostReason::Expired
                        };
                        st.end_grant(&myself, reason);
                    }
                }
            }
            LockMsg::Invalidated { index } => st.on_invalidated(&myself, Some(index), None),
            LockMsg::Recheck { node } => st.on_invalidated(&myself, None, node),
            LockMsg::Retry { generation } => {
                if generation == st.retry_generation {
                    st.retry_timer = None;
                    st.dirty = true;
                    st.advance(&myself);
                }
            }
            LockMsg::Sweep => st.sweep(&myself),
            LockMsg::Close => st.on_close(&myself),
            LockMsg::CloseDeadline => {
                myself.stop(Some("close deadline".into()));
                return Ok(());
            }
        }
        st.after(&myself);
        Ok(())
    }
}

impl LockState {
    fn answer_release_waiters(&mut self) {
        if self.releasing == 0 {
            for w in self.release_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn settings(&self) -> &crate::options::Settings {
        &self.shared.settings
    }

    fn timers(&self) -> &Timers {
        &self.shared.timers
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn not_locked(&self, acquired: usize, held_by_others: bool) -> Error {
        Error::NotLocked {
            name: self.name.to_string(),
            acquired,
            needed: self.settings().majority,
            total: self.settings().total,
            held_by_others,
        }
    }

    // ===== requests =====

    fn on_request(&mut self, me: &ActorRef<LockMsg>, req: Request) {
        if self.closing {
            let _ = req.reply.send(Err(Error::Closed));
            return;
        }
        match req.kind {
            RequestKind::Wait => {
                // The first waiter tries at once; later ones join the queue
                // behind it and ride on its wake-ups.
                if !self.queue.iter().any(|r| r.kind == RequestKind::Wait) {
                    self.dirty = true;
                }
                self.queue.push_back(req);
                self.advance(me);
            }
            RequestKind::Try => {
                if self.grant.is_some() || self.attempt.is_some() {
                    let err = self.not_locked(0, true);
                    let _ = req.reply.send(Err(err));
                } else {
                    self.start_attempt(me, SetMode::Nx, Some(req));
                }
            }
            RequestKind::Force => {
                if self.attempt.is_some() {
                    // Decide the attempt in flight first; the force then runs
                    // and takes over whatever it produced. Queue at the front.
                    self.queue.push_front(req);
                    return;
                }
                if self.grant.is_some() {
                    // Our own holder is taken over: its keys are about to be
                    // overwritten, so no release, just the news.
                    self.end_grant_no_release(LostReason::Forced);
                }
                self.start_attempt(me, SetMode::Force, Some(req));
            }
        }
    }

    /// Starts the next step if nothing is in flight: a Force at the head of the
    /// queue, or, when a retry is due (`dirty`), an attempt for the waiters.
    fn advance(&mut self, me: &ActorRef<LockMsg>) {
        if self.closing || self.attempt.is_some() {
            return;
        }
        // Drop waiters whose callers went away.
        while self.queue.front().is_some_and(|r| r.reply.is_closed()) {
            self.queue.pop_front();
        }
        let Some(head) = self.queue.front() else {
            return;
        };
        if head.kind == RequestKind::Force {
            let req = self.queue.pop_front().expect("front exists");
            if self.grant.is_some() {
                self.end_grant_no_release(LostReason::Forced);
            }
            self.start_attempt(me, SetMode::Force, Some(req));
            return;
        }
        if self.grant.is_some() || self.releasing > 0 || !self.dirty {
            return;
        }
        self.retry_timer = None;
        self.start_attempt(me, SetMode::Nx, None);
    }

    // ===== acquisition =====

    fn start_attempt(&mut self, me: &ActorRef<LockMsg>, mode: SetMode, request: Option<Request>) {
        let id = self.next_id();
        let token = Token::generate(mode == SetMode::Force, self.settings().fingerprint());
        let total = self.settings().total;
        self.dirty = false;
        let started = Instant::now();
        // The replies are bounded by the node's own timeout; this timer is the
        // backstop for a command lost with a killed NodeActor.
        let bound =
            self.settings().timeout + self.settings().timeout / 2 + Duration::from_millis(10);
        let timer = self
            .timers()
            .after(bound, me, LockMsg::AttemptTimeout { attempt: id });
        trace!(lock = %self.name, token = token.short(), ?mode, "attempt");
        self.attempt = Some(Attempt {
            id,
            token: token.clone(),
            mode,
            request,
            keys: vec![AttemptKey::Pending; total],
            started,
            _timer: timer,
            fence: None,
            fencing: None,
            fence_rounds: 0,
            invalidated: vec![false; total],
            mismatch: None,
        });
        // On a single instance the fencing counter moves inside key 0's
        // script; on several it is a separate step once the majority is won.
        let single_fence = self.settings().fencing_in_script();
        for index in 0..total {
            let fence_key = (single_fence && index == 0).then(|| self.fence_key.clone());
            self.send(
                me,
                index,
                Op::Acquire {
                    token: token.clone(),
                    mode,
                    fence_key,
                },
                Tag::Acquire(id),
                started,
            );
        }
    }

    /// Hands one command to the node that holds key `index`. An absent node
    /// (restarting) answers at once, as a failure.
    fn send(&mut self, me: &ActorRef<LockMsg>, index: usize, op: Op, tag: Tag, sent_at: Instant) {
        let node = self.settings().node_of_key(index);
        let key = self.keys[index].clone();
        self.dispatch(me, node, key, index, op, tag, sent_at);
    }

    /// Hands a command on `key` to node `node`'s command pump (the lane its
    /// `NodeActor` publishes while connected); the reply carries `index`. A
    /// node without a lane (connecting, restarting) answers at once, as a
    /// failure; a lane that dies with its actor leaves the reply to the
    /// attempt timer and the sweep.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        me: &ActorRef<LockMsg>,
        node: usize,
        key: String,
        index: usize,
        op: Op,
        tag: Tag,
        sent_at: Instant,
    ) {
        self.note_sent(me, sent_at);
        if matches!(op, Op::Release { .. }) {
            self.releasing += 1;
        }
        let job = Job {
            op,
            key,
            index,
            tag,
            sent_at,
            reply_to: me.clone(),
        };
        if self.shared.send_job(node, job).is_err() {
            let _ = me.cast(LockMsg::Reply(NodeReply {
                tag,
                index,
                sent_at,
                outcome: Outcome::Failed("node not connected"),
            }));
        }
    }

    fn on_reply(&mut self, me: &ActorRef<LockMsg>, r: NodeReply) {
        match r.tag {
            Tag::Release => {
                self.releasing = self.releasing.saturating_sub(1);
                self.answer_release_waiters();
                if self.releasing == 0 {
                    if let Some(started) = self.yield_after_release.take() {
                        // Our own delete is confirmed; waiters elsewhere hear
                        // of it through an invalidation, one hop later than
                        // we do. Give them that head start (twice the delete's
                        // round trip), or this process would win every race
                        // and starve them.
                        let rtt = Instant::now().saturating_duration_since(started);
                        let pause =
                            (rtt * 2 + Duration::from_micros(100)).min(self.settings().timeout);
                        self.arm_retry_after(me, pause);
                    } else if self.dirty {
                        self.advance(me);
                    }
                }
            }
            Tag::Acquire(id) => {
                if let Some(a) = self.attempt.as_mut().filter(|a| a.id == id) {
                    let slot = &mut a.keys[r.index];
                    if *slot != AttemptKey::Pending {
                        // Timed out already: it went to `finished`; handled below.
                    } else {
                        if let Outcome::Key(KeyState::Ours { fence: Some(f), .. }) = r.outcome {
                            a.fence = Some(f);
                        }
                        // A key held by a locker of this library configured
                        // differently: the two do not exclude each other, so
                        // this attempt fails (once its other replies are in)
                        // instead of waiting or holding.
                        if let Outcome::Key(KeyState::Other {
                            owner: Some(theirs),
                            ..
                        }) = r.outcome
                        {
                            if theirs != self.shared.settings.fingerprint() {
                                a.mismatch.get_or_insert(theirs);
                            }
                        }
                        *slot = match r.outcome {
                            Outcome::Key(KeyState::Ours { .. }) => {
                                AttemptKey::Ours(quorum::key_expiry(
                                    r.sent_at,
                                    self.shared.settings.validity,
                                    self.shared.settings.drift,
                                ))
                            }
                            Outcome::Key(KeyState::Other { forced, .. }) => {
                                AttemptKey::Other { forced }
                            }
                            _ => AttemptKey::Failed,
                        };
                        self.decide(me);
                        return;
                    }
                }
                if self.grant.as_ref().is_some_and(|g| g.id == id) {
                    self.on_grant_reply(me, r);
                    return;
                }
                if let Some(pos) = self.finished.iter().position(|f| f.id == id) {
                    let f = &mut self.finished[pos];
                    f.pending = f.pending.saturating_sub(1);
                    let token = f.token.clone();
                    if f.pending == 0 {
                        self.finished.swap_remove(pos);
                    }
                    if matches!(r.outcome, Outcome::Key(KeyState::Ours { .. })) {
                        debug!(lock = %self.name, token = token.short(), key = r.index, "late key of a decided attempt; releasing");
                        self.send(
                            me,
                            r.index,
                            Op::Release { token },
                            Tag::Release,
                            Instant::now(),
                        );
                    }
                }
            }
            Tag::Verify(id) => {
                if self.grant.as_ref().is_some_and(|g| g.id == id) {
                    self.on_grant_reply(me, r);
                }
            }
            Tag::FenceRead(id) | Tag::FenceWrite(id) => {
                if self.attempt.as_ref().is_some_and(|a| a.id == id) {
                    self.on_fence_reply(me, r);
                }
            }
        }
    }

    // ===== fencing =====

    /// Starts (or restarts) the read phase of the fencing step.
    fn start_fence(&mut self, me: &ActorRef<LockMsg>) {
        let nodes = self.settings().nodes.len();
        let bound =
            self.settings().timeout + self.settings().timeout / 2 + Duration::from_millis(10);
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        let id = a.id;
        a.fencing = Some(Fence::Read {
            ok: 0,
            failed: 0,
            max: 0,
        });
        a.fence_rounds += 1;
        a._timer = self
            .shared
            .timers
            .after(bound, me, LockMsg::AttemptTimeout { attempt: id });
        let now = Instant::now();
        for node in 0..nodes {
            let key = self.fence_key.to_string();
            self.dispatch(me, node, key, node, Op::FenceRead, Tag::FenceRead(id), now);
        }
    }

    fn on_fence_reply(&mut self, me: &ActorRef<LockMsg>, r: NodeReply) {
        let nodes = self.settings().nodes.len();
        let quorum = nodes / 2 + 1;
        let bound =
            self.settings().timeout + self.settings().timeout / 2 + Duration::from_millis(10);
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        let id = a.id;
        let next = match (a.fencing.as_mut(), r.tag, r.outcome) {
            (Some(Fence::Read { ok, max, .. }), Tag::FenceRead(_), Outcome::Fence(v)) => {
                *ok += 1;
                *max = (*max).max(v);
                a.fencing
            }
            (Some(Fence::Read { failed, .. }), Tag::FenceRead(_), _) => {
                *failed += 1;
                a.fencing
            }
            (
                Some(Fence::Write {
                    value,
                    acks,
                    failed,
                }),
                Tag::FenceWrite(_),
                Outcome::Fence(v),
            ) => {
                if v == *value {
                    *acks += 1;
                } else {
                    // Higher: a fencing step that never completed (its grant
                    // was never handed out) or a concurrent force. Not an ack.
                    *failed += 1;
                }
                a.fencing
            }
            (Some(Fence::Write { failed, .. }), Tag::FenceWrite(_), _) => {
                *failed += 1;
                a.fencing
            }
            _ => return,
        };
        match next {
            Some(Fence::Read { ok, .. }) | Some(Fence::Write { acks: ok, .. }) if ok < quorum => {
                let failed = match next {
                    Some(Fence::Read { failed, .. }) | Some(Fence::Write { failed, .. }) => failed,
                    None => 0,
                };
                if failed > nodes - quorum {
                    let retry = a.fence_rounds < 3 && matches!(next, Some(Fence::Write { .. }));
                    if retry {
                        self.start_fence(me);
                    } else {
                        let a = self.attempt.take().expect("checked");
                        let won = a
                            .keys
                            .iter()
                            .filter(|k| matches!(k, AttemptKey::Ours(_)))
                            .count();
                        warn!(lock = %self.name, token = a.token.short(), "fencing step failed");
                        self.attempt_failed(me, a, won);
                    }
                }
            }
            Some(Fence::Read { max, .. }) => {
                let value = max + 1;
                a.fencing = Some(Fence::Write {
                    value,
                    acks: 0,
                    failed: 0,
                });
                a._timer =
                    self.shared
                        .timers
                        .after(bound, me, LockMsg::AttemptTimeout { attempt: id });
                let now = Instant::now();
                for node in 0..nodes {
                    let key = self.fence_key.to_string();
                    self.dispatch(
                        me,
                        node,
                        key,
                        node,
                        Op::FenceWrite { value },
                        Tag::FenceWrite(id),
                        now,
                    );
                }
            }
            Some(Fence::Write { value, .. }) => {
                a.fence = Some(value);
                a.fencing = None;
                self.decide(me);
            }
            None => {}
        }
    }

    /// Decides the current attempt if its replies allow.
    fn decide(&mut self, me: &ActorRef<LockMsg>) {
        let Some(a) = &self.attempt else { return };
        if a.fencing.is_some() {
            // The fencing step decides; key replies only update the tally.
            return;
        }
        if let Some(theirs) = a.mismatch {
            // Never granted. Wait for the other replies (bounded by the
            // attempt timer), so that keys it won are released before the
            // next attempt, as for any failed attempt with replies in.
            if !a.keys.contains(&AttemptKey::Pending) {
                let a = self.attempt.take().expect("checked");
                let ours = self.settings().fingerprint();
                self.attempt_mismatched(me, a, ours, theirs);
            }
            return;
        }
        let needs_fence = self.settings().fencing && a.fence.is_none();
        let m = self.settings().majority;
        let total = self.settings().total;
        let won = a
            .keys
            .iter()
            .filter(|k| matches!(k, AttemptKey::Ours(_)))
            .count();
        let failed = a
            .keys
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    AttemptKey::Other { .. } | AttemptKey::Failed | AttemptKey::TimedOut
                )
            })
            .count();
        let now = Instant::now();
        match quorum::tally(won, failed, total, m) {
            Tally::Open => {}
            Tally::Won if needs_fence => self.start_fence(me),
            Tally::Won => {
                let a = self.attempt.take().expect("checked");
                let expiries = a.keys.iter().filter_map(|k| match k {
                    AttemptKey::Ours(e) => Some(*e),
                    _ => None,
                });
                match quorum::validity_end(expiries, m) {
                    Some(valid_until) if valid_until > now => self.grant_won(me, a, valid_until),
                    _ => {
                        // Took longer than the validity: nothing safe to hand out.
                        warn!(lock = %self.name, token = a.token.short(), elapsed_ms = a.started.elapsed().as_millis() as u64, "majority reached too late; releasing");
                        self.attempt_failed(me, a, won);
                    }
                }
            }
            Tally::Lost => {
                let a = self.attempt.take().expect("checked");
                self.attempt_failed(me, a, won);
            }
        }
    }

    fn attempt_failed(&mut self, me: &ActorRef<LockMsg>, a: Attempt, won: usize) {
        let held_by_others = a.keys.iter().any(|k| matches!(k, AttemptKey::Other { .. }));
        let forced = a.mode == SetMode::Force;
        trace!(lock = %self.name, token = a.token.short(), won, held_by_others, "attempt failed");
        let mut pending = 0;
        for (index, k) in a.keys.iter().enumerate() {
            match k {
                AttemptKey::Ours(_) => {
                    self.send(
                        me,
                        index,
                        Op::Release {
                            token: a.token.clone(),
                        },
                        Tag::Release,
                        Instant::now(),
                    );
                }
                AttemptKey::Pending | AttemptKey::TimedOut => pending += 1,
                _ => {}
            }
        }
        if pending > 0 {
            self.finished.push(Finished {
                id: a.id,
                token: a.token.clone(),
                pending,
            });
        }
        if let Some(req) = a.request {
            let _ = req
                .reply
                .send(Err(self.not_locked(won, held_by_others && !forced)));
            // Waiters that queued behind this one-shot attempt have not tried
            // yet, unless a retry timer is already running for them.
            if self.retry_timer.is_none() {
                self.dirty = true;
            }
        }
        if self
            .queue
            .front()
            .is_some_and(|r| r.kind == RequestKind::Force)
        {
            self.advance(me);
        } else if !self.queue.is_empty() {
            if self.dirty {
                self.advance(me);
            } else {
                self.arm_retry(me, held_by_others);
            }
        }
    }

    /// Fails attempt `a` because one of its keys is held under another
    /// configuration fingerprint: its request (Try, Force), or every waiter
    /// queued (Wait), gets [`Error::ConfigMismatch`]; the keys it won are
    /// released as for any failed attempt. Queued Force requests still run.
    fn attempt_mismatched(
        &mut self,
        me: &ActorRef<LockMsg>,
        mut a: Attempt,
        ours: Fingerprint,
        theirs: Fingerprint,
    ) {
        warn!(lock = %self.name, %ours, %theirs, "keys held by a locker with another key_majority or node count");
        let err = Error::ConfigMismatch {
            name: self.name.to_string(),
            ours: ours.to_string(),
            theirs: theirs.to_string(),
        };
        match a.request.take() {
            Some(req) => {
                let _ = req.reply.send(Err(err));
            }
            None => {
                let (waiters, rest) = std::mem::take(&mut self.queue)
                    .into_iter()
                    .partition(|r| r.kind == RequestKind::Wait);
                self.queue = rest;
                for w in waiters {
                    let _ = w.reply.send(Err(err.clone()));
                }
            }
        }
        let won = a
            .keys
            .iter()
            .filter(|k| matches!(k, AttemptKey::Ours(_)))
            .count();
        self.attempt_failed(me, a, won);
    }

    /// Arms the fallback retry of waiters. With tracking, an invalidation
    /// normally wakes them first; this only covers what tracking cannot see
    /// (fred drops FLUSHALL's invalidation, a gap during a reconnect). Without
    /// tracking it is the polling period.
    fn arm_retry(&mut self, me: &ActorRef<LockMsg>, held_by_others: bool) {
        let s = self.settings();
        let period = if !s.tracking {
            s.timeout
        } else if held_by_others {
            s.extend
        } else {
            // Nodes failing rather than the lock being held: retry soon.
            s.timeout.max(Duration::from_millis(50))
        };
        let period = quorum::jitter(period, 10, u64::from(rand_u32()));
        self.arm_retry_after(me, period);
    }

    /// Arms the retry timer (replacing any earlier one).
    fn arm_retry_after(&mut self, me: &ActorRef<LockMsg>, period: Duration) {
        self.retry_generation += 1;
        let generation = self.retry_generation;
        self.retry_timer = Some(
            self.timers()
                .after(period, me, LockMsg::Retry { generation }),
        );
    }

    fn grant_won(&mut self, me: &ActorRef<LockMsg>, a: Attempt, valid_until: Instant) {
        let extend_period = self.settings().extend;
        let keys: Vec<GrantKey> = a
            .keys
            .iter()
            .map(|k| GrantKey {
                ours: matches!(k, AttemptKey::Ours(_)),
                expiry: match k {
                    AttemptKey::Ours(e) => *e,
                    _ => a.started,
                },
                pending: matches!(k, AttemptKey::Pending | AttemptKey::TimedOut),
                failing: matches!(k, AttemptKey::Failed | AttemptKey::TimedOut),
                lost: None,
                recheck: false,
            })
            .collect();
        let mut keys = keys;
        for (k, &inv) in keys.iter_mut().zip(&a.invalidated) {
            k.recheck = inv;
        }
        let holder = Holder::new(self.next_id(), valid_until);
        let mut grant = Grant {
            id: a.id,
            token: a.token.clone(),
            keys,
            valid_until,
            holder,
            handovers: 0,
            acquired_at: Instant::now(),
            fence: a.fence.unwrap_or(0),
            extend_timer: None,
            deadline_timer: None,
            extending: 0,
        };
        let id = grant.id;
        let first = quorum::next_tick(self.shared.epoch, extend_period, Instant::now());
        grant.extend_timer = Some(self.timers().after(
            first,
            me,
            LockMsg::ExtendTick { grant: id },
        ));
        let until = valid_until.saturating_duration_since(Instant::now());
        grant.deadline_timer = Some(self.timers().after(
            until,
            me,
            LockMsg::Deadline { grant: id },
        ));

        let lease = grant.holder.lease(&self.name, me, grant.fence);
        debug!(
            lock = %self.name,
            token = grant.token.short(),
            valid_ms = (valid_until - Instant::now()).as_millis() as u64,
            acquire_us = a.started.elapsed().as_micros() as u64,
            "acquired"
        );
        self.grant = Some(grant);
        self.verify_rechecks(me);
        if let Some(orphan) = self.deliver(lease, a.request) {
            // Nobody wants it any more.
            orphan.disarm();
            self.end_grant(me, LostReason::Released);
            return;
        }
        self.advance(me);
    }

    /// Gives `lease` to `first`, else to the oldest waiter; skips callers
    /// that left. Returns it if nobody took it.
    fn deliver(&mut self, lease: Lease, first: Option<Request>) -> Option<Lease> {
        let mut lease = Some(lease);
        if let Some(req) = first {
            match req.reply.send(Ok(lease.take().expect("set"))) {
                Ok(()) => {}
                Err(back) => lease = back.ok(),
            }
        }
        while let Some(l) = lease.take() {
            // Waiters only: a queued Force runs next (in `advance`) and takes
            // over from whoever got this grant.
            let Some(pos) = self.queue.iter().position(|r| r.kind == RequestKind::Wait) else {
                lease = Some(l);
                break;
            };
            let req = self.queue.remove(pos).expect("position is valid");
            if let Err(back) = req.reply.send(Ok(l)) {
                lease = back.ok();
            }
        }
        lease
    }

    /// The holder releases. If another caller of this process waits, and the
    /// hand-over budget allows, it gets the lock at once: same keys, same
    /// token, no server round trip (lock cohorting). After
    /// `local_handover_limit` hand-overs the keys are really released, so
    /// waiters in other processes get their chance.
    fn release_or_hand_over(&mut self, me: &ActorRef<LockMsg>) {
        let limit = self.settings().handover_limit;
        let margin = self.settings().timeout;
        while self
            .queue
            .front()
            .is_some_and(|r| r.kind == RequestKind::Wait && r.reply.is_closed())
        {
            self.queue.pop_front();
        }
        let next_waits = self
            .queue
            .front()
            .is_some_and(|r| r.kind == RequestKind::Wait);
        let now = Instant::now();
        let fresh = self.grant.as_ref().is_some_and(|g| {
            g.handovers < limit
                && now.saturating_duration_since(g.acquired_at) < HANDOVER_WINDOW
                && g.valid_until > now + margin
        });
        if self.closing || !next_waits || !fresh {
            self.end_grant(me, LostReason::Released);
            return;
        }
        let id = self.next_id();
        let g = self.grant.as_mut().expect("checked");
        g.holder.end(LostReason::Released);
        g.holder = Holder::new(id, g.valid_until);
        g.handovers += 1;
        let lease = g.holder.lease(&self.name, me, g.fence);
        trace!(lock = %self.name, token = g.token.short(), handovers = g.handovers, "handed over locally");
        if let Some(orphan) = self.deliver(lease, None) {
            orphan.disarm();
            self.end_grant(me, LostReason::Released);
        }
    }

    // ===== holding =====

    fn extend(&mut self, me: &ActorRef<LockMsg>) {
        let (id, token, total) = match &self.grant {
            Some(g) => (g.id, g.token.clone(), g.keys.len()),
            None => return,
        };
        let now = Instant::now();
        let mut sent = 0;
        for index in 0..total {
            // Keys we believe ours are only extended (XX): one that vanished
            // unnoticed (fred drops FLUSHALL's invalidation) must show up as
            // lost, never be silently re-created over a gap. Keys known not to
            // be ours are taken back with NX, counted from the reply on, so a
            // minority lost in a hiccup does not weaken the lock for good
            // (valkeylock §4.2-10).
            let ours = self.grant.as_ref().is_some_and(|g| g.keys[index].ours);
            let mode = if ours { SetMode::Xx } else { SetMode::Nx };
            // Batched by the node with every other lock's keys of this tick.
            let node = self.settings().node_of_key(index);
            let item = ExtendItem {
                key: self.keys[index].clone(),
                index,
                token: token.clone(),
                mode,
                tag: Tag::Acquire(id),
                reply_to: me.clone(),
            };
            self.note_sent(me, now);
            let undelivered = match self.shared.node(node) {
                Some(actor) => match actor.cast(NodeMsg::Extend(item)) {
                    Ok(()) => None,
                    Err(_) => Some(index),
                },
                None => Some(index),
            };
            if let Some(index) = undelivered {
                let _ = me.cast(LockMsg::Reply(NodeReply {
                    tag: Tag::Acquire(id),
                    index,
                    sent_at: now,
                    outcome: Outcome::Failed("node not running"),
                }));
            }
            sent += 1;
        }
        if let Some(g) = &mut self.grant {
            // A new round supersedes the old one: replies it still owes are
            // handled as they come, but no longer hold back a retry.
            g.extending = sent;
        }
        self.schedule_extend(me);
    }

    /// Arms the next extension at the next tick of the locker's grid.
    fn schedule_extend(&mut self, me: &ActorRef<LockMsg>) {
        let delay = quorum::next_tick(self.shared.epoch, self.settings().extend, Instant::now());
        if let Some(g) = &mut self.grant {
            let id = g.id;
            g.extend_timer = Some(self.shared.timers.after(
                delay,
                me,
                LockMsg::ExtendTick { grant: id },
            ));
        }
    }

    /// Counts a command sent and keeps the sweep timer armed: replies are
    /// bounded by the node's timeout, but a command queued to a node actor
    /// that gets killed is never answered, and must not block this actor.
    fn note_sent(&mut self, me: &ActorRef<LockMsg>, now: Instant) {
        self.outstanding += 1;
        self.last_sent = now;
        if !self.sweep_armed {
            self.sweep_armed = true;
            let bound = self.sweep_bound();
            self.timers().after_detached(bound, me, LockMsg::Sweep);
        }
    }

    fn sweep_bound(&self) -> Duration {
        self.settings().timeout * 2 + BATCH_SLACK
    }

    /// Forgets replies that are overdue (their commands were lost).
    fn sweep(&mut self, me: &ActorRef<LockMsg>) {
        self.sweep_armed = false;
        if self.outstanding == 0 {
            return;
        }
        let bound = self.sweep_bound();
        let due = self.last_sent + bound;
        let now = Instant::now();
        if now < due {
            self.sweep_armed = true;
            self.timers().after_detached(due - now, me, LockMsg::Sweep);
            return;
        }
        warn!(lock = %self.name, lost = self.outstanding, "replies overdue; a node actor lost commands");
        self.outstanding = 0;
        self.releasing = 0;
        self.finished.clear();
        if let Some(g) = &mut self.grant {
            g.extending = 0;
            for k in g.keys.iter_mut() {
                k.pending = false;
            }
        }
        self.answer_release_waiters();
        if self.dirty {
            self.advance(me);
        }
    }

    fn on_grant_reply(&mut self, me: &ActorRef<LockMsg>, r: NodeReply) {
        let s = &self.shared.settings;
        let (validity, drift, extend_period, timeout) = (s.validity, s.drift, s.extend, s.timeout);
        let Some(g) = self.grant.as_mut() else { return };
        let is_extend = matches!(r.tag, Tag::Acquire(_));
        if is_extend && g.extending > 0 {
            g.extending -= 1;
        }
        let k = &mut g.keys[r.index];
        k.pending = false;
        // Extend right away (a TTL was cut short) or after a pause (a node
        // failed to answer; hammering it would not help).
        let mut extend_now = false;
        let mut extend_retry = false;
        match r.outcome {
            Outcome::Key(KeyState::Ours { pttl_ms, .. }) => {
                k.failing = false;
                k.lost = None;
                if is_extend {
                    let e = quorum::key_expiry(r.sent_at, validity, drift);
                    k.expiry = if k.ours { k.expiry.max(e) } else { e };
                    k.ours = true;
                } else if k.ours {
                    // A verify: someone may have shortened the TTL (PEXPIRE by
                    // another client). Trust the server's PTTL if lower.
                    if let Some(ms) = pttl_ms {
                        let e = quorum::key_expiry(r.sent_at, Duration::from_millis(ms), drift);
                        if e < k.expiry {
                            k.expiry = e;
                        }
                        if Duration::from_millis(ms) < validity - extend_period {
                            extend_now = true;
                        }
                    }
                }
            }
            Outcome::Key(KeyState::Other { forced, .. }) => {
                k.ours = false;
                k.failing = false;
                k.lost = Some(if forced {
                    LostReason::Forced
                } else {
                    LostReason::Overwritten
                });
            }
            Outcome::Key(KeyState::Absent) => {
                k.ours = false;
                k.failing = false;
                k.lost = Some(LostReason::Deleted);
            }
            Outcome::Released(_) | Outcome::Fence(_) => {}
            Outcome::Failed(why) => {
                k.failing = true;
                trace!(lock = %self.name, key = r.index, why, "command on held key failed");
                if is_extend {
                    extend_retry = true;
                }
            }
        }
        self.reevaluate(me);
        self.verify_rechecks(me);
        let Some(g) = self.grant.as_mut() else { return };
        if g.extending > 0 {
            // A round is in flight; its replies decide what comes next.
        } else if extend_now {
            self.extend(me);
        } else if extend_retry {
            let id = g.id;
            let delay = timeout.max(Duration::from_millis(20));
            g.extend_timer = Some(self.shared.timers.after(
                delay,
                me,
                LockMsg::ExtendTick { grant: id },
            ));
        }
    }

    /// Recomputes the grant's validity from its keys; ends it if fewer than
    /// `M` keys can still be ours.
    fn reevaluate(&mut self, me: &ActorRef<LockMsg>) {
        let m = self.settings().majority;
        let now = Instant::now();
        let Some(g) = self.grant.as_mut() else { return };
        let live = g
            .keys
            .iter()
            .filter(|k| k.ours && k.expiry > now)
            .map(|k| k.expiry);
        match quorum::validity_end(live, m) {
            Some(until) => {
                if until != g.valid_until {
                    g.valid_until = until;
                    g.holder
                        .status
                        .send_replace(GrantStatus::Held { valid_until: until });
                    let id = g.id;
                    let delay = until.saturating_duration_since(now);
                    let msg = LockMsg::Deadline { grant: id };
                    g.deadline_timer = Some(self.shared.timers.after(delay, me, msg));
                }
            }
            None => {
                // Could a pending acquisition reply still complete the
                // majority? Then wait for it (the deadline timer still bounds).
                let possible = g
                    .keys
                    .iter()
                    .filter(|k| (k.ours && k.expiry > now) || k.pending)
                    .count();
                if possible >= m && g.valid_until > now {
                    return;
                }
                let reason = majority_reason(&g.keys, m);
                self.end_grant(me, reason);
            }
        }
    }

    fn on_invalidated(
        &mut self,
        me: &ActorRef<LockMsg>,
        index: Option<usize>,
        node: Option<usize>,
    ) {
        let shared = self.shared.clone();
        let in_scope = |i: usize| match (index, node) {
            (Some(k), _) => k == i,
            (None, Some(n)) => shared.settings.node_of_key(i) == n,
            (None, None) => true,
        };
        if let Some(a) = &mut self.attempt {
            for (i, inv) in a.invalidated.iter_mut().enumerate() {
                *inv |= in_scope(i);
            }
        }
        if let Some(g) = &mut self.grant {
            // Re-check held keys with a read-only script. It never writes, so
            // it cannot invalidate itself: no loop even without NOLOOP. Keys
            // whose acquisition reply is still on the way are checked when it
            // arrives.
            for (i, k) in g.keys.iter_mut().enumerate() {
                if in_scope(i) && (k.ours || k.pending) {
                    k.recheck = true;
                }
            }
            self.verify_rechecks(me);
            return;
        }
        if self.queue.is_empty() {
            return;
        }
        // Retry now, or as soon as the attempt or release in flight is done.
        self.dirty = true;
        self.advance(me);
    }

    /// Sends a read-only check for every key marked for one whose reply is
    /// in; keys still waiting for a reply keep the mark.
    fn verify_rechecks(&mut self, me: &ActorRef<LockMsg>) {
        let Some(g) = &mut self.grant else { return };
        let (id, token) = (g.id, g.token.clone());
        let mut targets = Vec::new();
        for (i, k) in g.keys.iter_mut().enumerate() {
            if k.recheck && !k.pending {
                k.recheck = false;
                if k.ours {
                    targets.push(i);
                }
            }
        }
        let now = Instant::now();
        for i in targets {
            self.send(
                me,
                i,
                Op::Verify {
                    token: token.clone(),
                },
                Tag::Verify(id),
                now,
            );
        }
    }

    // ===== ending =====

    /// Ends the grant for its holder and deletes whatever keys may be ours.
    fn end_grant(&mut self, me: &ActorRef<LockMsg>, reason: LostReason) {
        let Some(mut g) = self.grant.take() else {
            return;
        };
        g.end(reason);
        log_end(&self.name, &g.token, reason);
        let now = Instant::now();
        for index in 0..g.keys.len() {
            let k = g.keys[index];
            if k.ours || k.pending || k.failing {
                self.send(
                    me,
                    index,
                    Op::Release {
                        token: g.token.clone(),
                    },
                    Tag::Release,
                    now,
                );
            }
        }
        // Late acquisition replies of this grant's attempt must still be
        // released.
        let pending = g.keys.iter().filter(|k| k.pending).count() + g.extending;
        if pending > 0 {
            self.finished.push(Finished {
                id: g.id,
                token: g.token.clone(),
                pending,
            });
        }
        // Local waiters go next, once the deletes are confirmed, after a
        // pause that lets waiters in other processes compete fairly.
        self.dirty = true;
        if reason == LostReason::Released && self.releasing > 0 && !self.queue.is_empty() {
            self.yield_after_release = Some(now);
        }
        self.advance(me);
    }

    /// Ends the grant without deleting keys (they are being overwritten by our
    /// own force).
    fn end_grant_no_release(&mut self, reason: LostReason) {
        if let Some(mut g) = self.grant.take() {
            g.end(reason);
            log_end(&self.name, &g.token, reason);
        }
    }

    fn on_close(&mut self, me: &ActorRef<LockMsg>) {
        if self.closing {
            return;
        }
        // Refuse everything from now on (so `advance` starts nothing), then
        // release what is held.
        self.closing = true;
        self.end_grant(me, LostReason::Closed);
        for req in self.queue.drain(..) {
            let _ = req.reply.send(Err(Error::Closed));
        }
        if let Some(mut a) = self.attempt.take() {
            if let Some(req) = a.request.take() {
                let _ = req.reply.send(Err(Error::Closed));
            }
            self.attempt_failed(me, a, 0);
        }
        self.retry_timer = None;
        let bound = self.settings().timeout * 2 + Duration::from_millis(50);
        self.timers()
            .after_detached(bound, me, LockMsg::CloseDeadline);
    }

    /// Runs after every message: reports idleness, or finishes closing.
    fn quiet(&self) -> bool {
        self.queue.is_empty()
            && self.attempt.is_none()
            && self.grant.is_none()
            && self.outstanding == 0
    }

    fn after(&mut self, me: &ActorRef<LockMsg>) {
        let quiet = self.quiet();
        if self.closing {
            if quiet {
                let _ = self.supervisor.cast(SupervisorMsg::LockClosed {
                    name: self.name.clone(),
                });
                me.stop(Some("closed".into()));
            }
            return;
        }
        // An actor that just went quiet stays warm for a while: a name used
        // again soon (the common case) then costs no actor start and stop.
        if quiet && !self.idle_reported && !self.idle_armed {
            self.idle_armed = true;
            let seen = self.seen;
            self.timers()
                .after_detached(IDLE_GRACE, me, LockMsg::IdleCheck { seen });
        }
    }
}

/// Why fewer than `m` keys are ours: the most common recorded cause among lost
/// keys, `Unreachable` when keys just ran out while nodes failed.
fn majority_reason(keys: &[GrantKey], _m: usize) -> LostReason {
    let count = |r: LostReason| keys.iter().filter(|k| k.lost == Some(r)).count();
    let candidates = [
        LostReason::Forced,
        LostReason::Overwritten,
        LostReason::Deleted,
    ];
    let best = candidates
        .iter()
        .copied()
        .max_by_key(|&r| count(r))
        .filter(|&r| count(r) > 0);
    match best {
        Some(r) => r,
        None if keys.iter().any(|k| k.failing) => LostReason::Unreachable,
        None => LostReason::Expired,
    }
}

fn log_end(name: &str, token: &Token, reason: LostReason) {
    if reason.is_loss() {
        info!(lock = %name, token = token.short(), reason = %reason, "lock lost");
    } else {
        debug!(lock = %name, token = token.short(), "released");
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}
