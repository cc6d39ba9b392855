//! LockActor: one per lock name in use in this process. A thin shell around
//! the lock core ([`crate::core::LockCore`]): it turns messages into core
//! events stamped with the engine's clock, and carries out the core's effects
//! — commands to the nodes, one timer, answers to callers, holder statuses.
//! Every decision is the core's; this file only moves messages and runs I/O.
//!
//! Nothing in a handler awaits another actor: commands go to the node's
//! command lane (or, for extensions, its batch), replies come back as
//! messages, and the core's one timer is armed on the locker's timer task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::context::{try_retire, Shared};
use crate::core::{
    Effect, Event, HolderId, HolderStatus, LockCore, Op, OsEntropy, Outcome, Refusal, Target, Time,
};
use crate::error::{Error, LostReason};
use crate::keys;
use crate::msg::{
    ExtendItem, GrantParts, GrantStatus, Job, LockMsg, NodeMsg, NodeReply, Released, Request,
    SupervisorMsg,
};
use crate::timers::Timer;

pub(crate) struct LockActor;

pub(crate) struct LockArgs {
    pub(crate) name: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) supervisor: ActorRef<SupervisorMsg>,
    /// Requests sent to this actor, counted by senders (see `retire`).
    pub(crate) sent: Arc<AtomicU64>,
}

/// One caller's hold on a grant: what its `Lease` observes.
#[derive(Debug)]
struct Holder {
    status: watch::Sender<GrantStatus>,
    cancel: CancellationToken,
    /// The locker's count of holders, which this one is part of.
    count: Arc<AtomicUsize>,
}

impl Holder {
    /// Tells the holder it is over. Token first: whoever sees `lost()` return
    /// must also see it cancelled.
    fn end(&self, reason: LostReason) {
        self.cancel.cancel();
        self.status.send_replace(GrantStatus::Ended(reason));
    }
}

impl Drop for Holder {
    /// A killed or failed LockActor drops its state: the holder must hear that
    /// nobody extends its keys any more, never keep a guard that looks held.
    fn drop(&mut self) {
        self.count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if !self.cancel.is_cancelled() {
            self.end(LostReason::EngineStopped);
        }
    }
}

pub(crate) struct LockState {
    name: Arc<str>,
    keys: Vec<Arc<str>>,
    /// `{prefix}:fence:{name}`: the fencing counter.
    fence_key: Arc<str>,
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    sent: Arc<AtomicU64>,
    /// Requests received (compared with `sent` to retire safely).
    seen: u64,
    core: LockCore,
    requests: HashMap<u64, oneshot::Sender<Result<GrantParts, Error>>>,
    holders: HashMap<HolderId, Holder>,
    acks: HashMap<u64, oneshot::Sender<Released>>,
    next_ack: u64,
    /// The core's timer, and the instant it is armed for.
    timer: Option<(Time, Timer)>,
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
            .map(|i| Arc::from(keys::key_name(&s.prefix, i, &args.name)))
            .collect();
        let fence_key = Arc::from(format!("{}:fence:{}", s.prefix, args.name));
        let core = LockCore::new(args.shared.core.clone(), Box::new(OsEntropy), clock::now());
        Ok(LockState {
            name: args.name,
            keys,
            fence_key,
            shared: args.shared,
            supervisor: args.supervisor,
            sent: args.sent,
            seen: 0,
            core,
            requests: HashMap::new(),
            holders: HashMap::new(),
            acks: HashMap::new(),
            next_ack: 0,
            timer: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<LockMsg>,
        msg: LockMsg,
        st: &mut LockState,
    ) -> Result<(), ActorProcessingErr> {
        let event = match msg {
            LockMsg::Request(Request {
                id,
                kind,
                terms,
                reply,
            }) => {
                st.seen += 1;
                st.requests.insert(id, reply);
                Event::Request { id, kind, terms }
            }
            LockMsg::Cancel { id } => {
                st.requests.remove(&id);
                Event::Cancel { id }
            }
            LockMsg::Release { holder, reply } => {
                let ack = reply.map(|r| {
                    st.next_ack += 1;
                    st.acks.insert(st.next_ack, r);
                    st.next_ack
                });
                Event::Release { holder, ack }
            }
            LockMsg::Reply(NodeReply { cmd, outcome }) => Event::Reply { cmd, outcome },
            LockMsg::Invalidated { index } => Event::Invalidated { key: index },
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
        };
        st.feed(&myself, event);
        Ok(())
    }
}

impl LockState {
    /// Feeds one event to the core and carries out what it asks, including
    /// the events that carrying out produces (a grant whose caller left).
    fn feed(&mut self, me: &ActorRef<LockMsg>, event: Event) {
        let mut events = std::collections::VecDeque::from([event]);
        self.core.set_allowance(self.shared.notice_allowance());
        while let Some(event) = events.pop_front() {
            self.core.handle(clock::now(), event);
            while let Some(effect) = self.core.poll_effect() {
                if let Some(back) = self.apply(me, effect) {
                    events.push_back(back);
                }
            }
        }
        self.arm_timer(me);
    }

    /// Carries out one effect; returns an event to feed back, if any.
    fn apply(&mut self, me: &ActorRef<LockMsg>, effect: Effect) -> Option<Event> {
        match effect {
            Effect::Send { cmd, target, op } => self.dispatch(me, cmd, target, op),
            Effect::Grant {
                to,
                holder,
                valid_until,
                hold_until,
                fence,
            } => {
                let (tx, rx) = watch::channel(GrantStatus::Held { valid_until });
                let cancel = CancellationToken::new();
                let parts = GrantParts {
                    name: self.name.clone(),
                    holder,
                    lock: me.clone(),
                    status: rx,
                    cancel: cancel.clone(),
                    fence,
                    hold_until,
                };
                self.shared
                    .holders
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let h = Holder {
                    status: tx,
                    cancel,
                    count: self.shared.holders.clone(),
                };
                let delivered = match self.requests.remove(&to) {
                    Some(reply) => reply.send(Ok(parts)).is_ok(),
                    None => false,
                };
                if !delivered {
                    tracing::trace!(lock = %self.name, request = to, "grant not delivered");
                    // Its caller went away: give it straight back.
                    h.cancel.cancel();
                    return Some(Event::Release { holder, ack: None });
                }
                self.holders.insert(holder, h);
            }
            Effect::Refuse { to, why } => {
                if let Some(reply) = self.requests.remove(&to) {
                    let err = match why {
                        Refusal::Closed => Error::Closed,
                        Refusal::ConfigMismatch { theirs } => Error::ConfigMismatch {
                            name: self.name.to_string(),
                            ours: self.shared.core.fingerprint.to_string(),
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
                    let _ = reply.send(Err(err));
                }
            }
            Effect::Status { holder, status } => match status {
                HolderStatus::Held { valid_until } => {
                    if let Some(h) = self.holders.get(&holder) {
                        h.status.send_replace(GrantStatus::Held { valid_until });
                    }
                }
                HolderStatus::Ended(reason) => {
                    if let Some(h) = self.holders.remove(&holder) {
                        h.end(reason);
                    }
                }
            },
            Effect::Released {
                ack,
                deleted,
                unconfirmed,
            } => {
                if let Some(reply) = self.acks.remove(&ack) {
                    let _ = reply.send(Released {
                        deleted,
                        unconfirmed,
                    });
                }
            }
            Effect::Idle => self.retire(me),
            Effect::Closed => {
                let _ = self.supervisor.cast(SupervisorMsg::LockClosed {
                    name: self.name.clone(),
                });
                me.stop(Some("closed".into()));
            }
        }
        None
    }

    /// Hands one command to its node: extensions to the node's batch, the rest
    /// to its command pump. A node without a connection answers at once, as a
    /// failure; a command lost with a killed node is timed out by the core.
    fn dispatch(
        &mut self,
        me: &ActorRef<LockMsg>,
        cmd: crate::core::CmdId,
        target: Target,
        op: Op,
    ) {
        let (node, key) = match target {
            Target::Key(i) => (self.shared.core.placement[i], self.keys[i].clone()),
            Target::Fence(n) => (n, self.fence_key.clone()),
        };
        let failed = |why| {
            let _ = me.cast(LockMsg::Reply(NodeReply {
                cmd,
                outcome: Outcome::Failed(why),
            }));
        };
        if let Op::Extend { token, mode, ttl } = op {
            let item = ExtendItem {
                key,
                token,
                mode,
                ttl,
                cmd,
                reply_to: me.clone(),
            };
            match self.shared.node(node) {
                Some(actor) if actor.cast(NodeMsg::Extend(item)).is_ok() => {}
                _ => failed("node not running"),
            }
            return;
        }
        let fence_key =
            matches!(op, Op::Acquire { fence: true, .. }).then(|| self.fence_key.clone());
        let job = Job {
            op,
            key,
            fence_key,
            cmd,
            reply_to: me.clone(),
        };
        if self.shared.send_job(node, job).is_err() {
            failed("node not connected");
        }
    }

    /// Arms the locker's timer task for the core's next deadline.
    fn arm_timer(&mut self, me: &ActorRef<LockMsg>) {
        let next = self.core.next_timeout();
        if self.timer.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        self.timer = next.map(|at| (at, self.shared.timers.at(at, me, LockMsg::Timeout)));
    }

    /// Retires this actor if no request is on its way to it (see
    /// `context::try_retire`).
    fn retire(&mut self, me: &ActorRef<LockMsg>) {
        let seen = self.seen;
        if try_retire(&self.sent, seen) {
            tracing::trace!(lock = %self.name, "idle; retiring");
            me.stop(Some("idle".into()));
        }
    }
}
