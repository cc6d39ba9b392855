//! The lock core: everything one lock name's `LockActor` decides, as a plain
//! state machine. It takes events with the time they happen and returns
//! effects; it performs no I/O, reads no clock and spawns nothing, so tests
//! and the simulator drive it directly.
//!
//! The lock is always in exactly one [`Phase`]. Keys are tracked per key with
//! the id of the command whose reply is in force, so replies that overtake
//! each other are applied newest-sent-wins, and a stale "ours" can never undo
//! a newer "gone". The safety rule (see `quorum`): a grant's validity is the
//! `M`-th largest of `sent + ttl − drift` over keys known ours. The holder's
//! published `valid_until` is the terms' margin before that instant, so that
//! the holder's own clock checks and timers are not late; the core acts (ends
//! the grant and tells the holder) earlier still by the shell's allowance, the
//! time the shell needs to tell every holder it has, so that the news reaches
//! each holder by its `valid_until`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::fence::{Fence, FenceNext};
use super::inflight::{Answered, CmdId, InFlight, Purpose, Route};
use super::ops::{Claim, Draws, Op, Outcome, Place, Queue, Target};
use super::quorum::{self, Life, Tally};
use super::terms::Terms;
use super::time::{Nanos, Time};
use super::waiters::{may_hand_over, within_budget, ReqId, RequestKind, Waiters};
use crate::error::LostReason;
use crate::few::{OneOrMore, Room};
use crate::scripts::{Fingerprint, KeyState, SetMode, Token};

/// A holder id: one per grant handed to a caller (a hand-over makes a new one).
pub(crate) type HolderId = u64;
/// A caller of `release()` waiting for the deletes.
pub(crate) type AckId = u64;

/// How long a quiet core waits before it reports itself idle: a name used again
/// soon (the common case) then costs no actor start and stop.
pub(crate) const IDLE_GRACE: Duration = Duration::from_secs(2);

/// Hand-over: how long after a key is handed over its check waits (see
/// [`Rearm`]). Long enough for a caller that releases at once to do so
/// first (its release is fed here before anything goes on the wire), short
/// against every other bound of the engine: a loss in that time is heard
/// when the check reads the key, at most this much later than at once.
pub(crate) const REARM_DELAY: Duration = Duration::from_millis(1);

/// The most waiters of one process placed in the fair queues by one
/// command: the ones behind them take their places as they move up.
pub(crate) const MAX_PLACES: usize = 32;

/// The fair queues (see `scripts::FAIR_LUA`): waiters of every process
/// that stand in them are served in the order they started waiting. With
/// fair queueing every waiter stands in them from the start (`after` zero);
/// otherwise a waiter takes its place once it has waited `after`, which
/// bounds how long the race after each release can pass it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fair {
    /// The wall clock (µs since the Unix epoch) at the origin of the core's
    /// clock: a waiter's arrival, the order of the queues, is this plus its
    /// `now`.
    pub(crate) wall_origin_us: u64,
    /// How long a place lasts unless refreshed: how long a dead waiter can
    /// hold up the queue.
    pub(crate) life: Duration,
    /// How often live waiters refresh their places: at most a third of
    /// `life`, so that the queue changes at least that often while anyone
    /// waits, and a longer gap tells the script a stall to catch up on
    /// (`scripts::FAIR_LUA`).
    pub(crate) refresh: Duration,
    /// How long a waiter waits before it takes its place (zero: fair
    /// queueing, at once).
    pub(crate) after: Duration,
}

impl Fair {
    /// Every waiter queues from the start: the locker has fair queueing.
    fn always(&self) -> bool {
        self.after.is_zero()
    }

    /// A waiter's arrival on the queues' clock (µs since the Unix epoch).
    fn wall_us(&self, now: Time) -> u64 {
        self.wall_origin_us + now.as_nanos() / 1_000
    }

    /// The latest arrival of a waiter that has waited `after` at `now`.
    fn ripe_us(&self, now: Time) -> u64 {
        self.wall_us(now)
            .saturating_sub(self.after.as_micros() as u64)
    }

    /// When the oldest waiter in `waiters` whose place was never sent has
    /// waited `after` (the instant it takes its place).
    fn ripe_at_first_unsent(&self, waiters: &Waiters) -> Option<Time> {
        waiters
            .first_unsent_since(MAX_PLACES)
            .map(|s| self.ripe_at(s))
    }

    /// When a waiter that arrived at `since_us` has waited `after`.
    fn ripe_at(&self, since_us: u64) -> Time {
        let us = (since_us + self.after.as_micros() as u64).saturating_sub(self.wall_origin_us);
        Time::from_nanos(us.saturating_mul(1_000))
    }
}

/// Hand-over across processes (`LockerOptions::handover`): a waiter's
/// acquisition that finds a key held leaves a claim on it, and a release of
/// a locker with hand-over gives the key to the oldest live claim and tells
/// its claimant (`scripts::RELEASE_HANDOVER_LUA`), who holds it from that
/// message on, without a round trip of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handover {
    /// The wall clock (µs since the Unix epoch) at the origin of the core's
    /// clock: a claim's arrival, the order of the claims, is this plus the
    /// `now` its waiting began.
    pub(crate) wall_origin_us: u64,
}

/// How fencing tokens are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fencing {
    Off,
    /// The counter moves inside key 0's acquire script (one instance) when
    /// key 0 is the whole majority (`M = 1`). With more keys on the instance
    /// the two-phase step runs once the majority is won: key 0 may be won
    /// long before the majority is, and a grant made in between would carry
    /// a higher token than this one.
    InScript,
    /// The two-phase step over all nodes.
    Majority,
}

/// What a core needs to know about its locker. Built once per locker.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) majority: usize,
    pub(crate) total: usize,
    pub(crate) nodes: usize,
    /// Node of each key.
    pub(crate) placement: Vec<usize>,
    /// The terms of a request that brings none of its own, shared by every
    /// queued caller, attempt and grant on them (see [`LockCore::keep`]).
    pub(crate) terms: Arc<Terms>,
    /// The period of the extension grid the locker's grants share.
    pub(crate) extend: Duration,
    /// One command's time limit (the client's own timeout).
    pub(crate) timeout: Duration,
    pub(crate) tracking: bool,
    pub(crate) handover_limit: u32,
    pub(crate) fencing: Fencing,
    /// What our lockers write next to the token: `key_majority` and the node
    /// count. A key held under another fingerprint belongs to a locker that
    /// could hold the name at the same time as us.
    pub(crate) fingerprint: Fingerprint,
    /// Origin of the extension grid shared by the locker's locks.
    pub(crate) epoch: Time,
    /// Fair queueing across processes; `None`: off.
    pub(crate) fair: Option<Fair>,
    /// Hand-over across processes; `None`: off.
    pub(crate) handover: Option<Handover>,
}

impl Config {
    /// How long a command may go unanswered before it counts as failed: the
    /// client's timeout, plus slack for a batch window and the trip through
    /// mailboxes.
    pub(crate) fn reply_bound(&self) -> Duration {
        self.timeout + self.timeout / 2 + Duration::from_millis(10)
    }

    #[cfg(test)]
    pub(crate) fn next_tick_for_test(&self, now: Time) -> Time {
        self.next_tick(now)
    }

    /// The next tick of the extension grid strictly after `now`: every lock
    /// of a locker extends on the same grid, so each node gets one batch per
    /// tick instead of one command per lock.
    fn next_tick(&self, now: Time) -> Time {
        let period = self.extend.as_nanos().max(1);
        let since = u128::from(now.since(self.epoch).as_nanos() as u64);
        let left = period - since % period;
        now + Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
    }

    /// When a grant extended at `now` with `terms` extends next: on the grid,
    /// about `terms.extend` later, and never later than that (a grant with a
    /// shorter validity than the locker's leaves the grid rather than lapse).
    fn next_extend(&self, now: Time, terms: &Terms) -> Time {
        let skip = terms.extend.saturating_sub(self.extend);
        self.next_tick(now + skip).min(now + terms.extend)
    }
}

/// What the shell tells the core.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A caller wants the lock, on its own `terms` or (`None`) the locker's.
    Request {
        id: ReqId,
        kind: RequestKind,
        terms: Option<Terms>,
    },
    /// A waiting caller gave up.
    Cancel { id: ReqId },
    /// Holder `holder` releases; `ack` waits for the deletes.
    Release {
        holder: HolderId,
        ack: Option<AckId>,
    },
    /// The reply to command `cmd`.
    Reply { cmd: CmdId, outcome: Outcome },
    /// Key `key` of this lock changed on its node.
    Invalidated { key: usize },
    /// Hand-over: a release gave key `key` to `token`, under the claim that
    /// command `cmd` left (`scripts::RELEASE_HANDOVER_LUA`); `fence`, the
    /// fencing counter the release moved in the same script, if it did.
    Handed {
        key: usize,
        token: Token,
        cmd: CmdId,
        fence: Option<u64>,
    },
    /// Node `node` reconnected (`None`: invalidations of every node may have
    /// been dropped): re-check keys there and let waiters retry.
    Recheck { node: Option<usize> },
    /// The instant of [`LockCore::next_timeout`] came.
    Timeout,
    /// The locker is closing.
    Close,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotLocked {
        acquired: usize,
        held_by_others: bool,
    },
    /// A key is held by a locker with another configuration (or, for a
    /// permit, a caller of this locker claims another count).
    ConfigMismatch {
        ours: Fingerprint,
        theirs: Fingerprint,
    },
    Closed,
}

/// What a holder sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HolderStatus {
    /// Held; safe until `valid_until` unless extended.
    Held { valid_until: Time },
    /// Over, for this reason.
    Ended(LostReason),
}

/// What the core asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Run `op` on `target`; answer with [`Event::Reply`] for `cmd`.
    Send { cmd: CmdId, target: Target, op: Op },
    /// Give request `to` a new holder. If its caller is gone, the shell
    /// answers with [`Event::Release`] for `holder`. `hold_until` is the end
    /// its maximum hold sets, if any (`valid_until` is never later).
    Grant {
        to: ReqId,
        holder: HolderId,
        valid_until: Time,
        hold_until: Option<Time>,
        fence: u64,
    },
    /// Answer request `to` with an error.
    Refuse { to: ReqId, why: Refusal },
    /// Holder `holder`'s status changed.
    Status {
        holder: HolderId,
        status: HolderStatus,
    },
    /// The release `ack` waited for is done: `deleted` keys were deleted,
    /// `unconfirmed` are left to expire (their node did not answer).
    Released {
        ack: AckId,
        deleted: usize,
        unconfirmed: usize,
    },
    /// Nothing held, queued or in flight for [`IDLE_GRACE`]: the shell may
    /// retire the core.
    Idle,
    /// Closing is complete.
    Closed,
}

/// What is known of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// The command that decides it has not answered.
    Pending,
    /// Ours until at least `expiry` (drift already taken off).
    Ours {
        expiry: Time,
    },
    /// Held by somebody else.
    Other {
        forced: bool,
    },
    Absent,
    /// Free, but another waiter is ahead in the key's fair queue; its place
    /// lapses at `until` unless refreshed.
    Queued {
        until: Time,
    },
    /// The command failed; nothing is known.
    Failed,
    /// The acquisition went unanswered (`Outcome::Unanswered`): it may have
    /// run and taken the key under our token.
    Unanswered,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: Key,
    /// The command whose reply set `key` (replies of older commands are stale).
    seen: CmdId,
    /// The last command on it failed (for the loss reason).
    failing: bool,
    /// Invalidated while its command was out: without NOLOOP that may be our
    /// own write, else a change around our read. The reply decides: ours is
    /// re-checked, anything else lets waiters retry at once.
    touched: bool,
    /// Writes are out (the newest one's command, and the earliest expiry
    /// any of them sets): until a reply of that command or a newer one, no
    /// reply may count the key beyond that expiry.
    cap: Option<(CmdId, Time)>,
}

impl Slot {
    fn pending() -> Slot {
        Slot {
            key: Key::Pending,
            seen: CmdId::default(),
            failing: false,
            touched: false,
            cap: None,
        }
    }

    /// A reconnect sends this key's extension again: its last command
    /// failed, or (`on_node`: the key lives on the node that came back) its
    /// write is still out on the connection that broke.
    fn resend_after_reconnect(&self, on_node: bool) -> bool {
        self.failing || (on_node && self.cap.is_some())
    }

    fn ours_at(&self, now: Time) -> Option<Time> {
        match self.key {
            Key::Ours { expiry } if expiry > now => Some(expiry),
            _ => None,
        }
    }
}

/// An acquisition in flight.
#[derive(Debug)]
struct Attempt {
    id: u64,
    token: Token,
    /// The terms its writes carry: its caller's, or the queue head's.
    terms: Arc<Terms>,
    /// A Try or Force caller; a Wait attempt serves the queue's head.
    request: Option<(ReqId, RequestKind)>,
    /// One per lock key: a fixed count, so a boxed slice (8 bytes less
    /// than a vector in every lock's state).
    keys: Box<[Slot]>,
    /// An invalidation hit a key not (yet) ours: whether to run again before
    /// the retry time if this fails.
    rerun: Rerun,
    /// The fencing token, once known.
    fence: Option<u64>,
    /// The two-phase fencing step, once the keys are won: boxed, as few
    /// attempts get there and an attempt's size is every lock's.
    fencing: Option<Box<Fence>>,
    /// A key is held under another locker configuration: this attempt is
    /// never granted, and fails with the mismatch once its replies are in.
    mismatch: Option<Fingerprint>,
    /// Fair queueing: the waiter whose place the attempt's keys checked.
    candidate: Option<u64>,
    /// Its place was sent before this attempt: it may stand in any queue.
    placed_before: bool,
    /// Sent right behind the deletes of the grant before (see [`Chain`]).
    chain: Option<Chain>,
    /// Hand-over: the claims it leaves (boxed, as most attempts leave none
    /// and an attempt's size is every lock's).
    claims: Option<Box<Claims>>,
}

/// Whether a failed attempt runs again before its retry time, from what it
/// heard while it was out. Ordered: a later word only ever raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rerun {
    /// Nothing it heard of.
    No,
    /// A key it found held by another changed. At once, unless the attempt
    /// keeps claims on its keys (hand-over): while they stand, the change
    /// is an extension or a hand-over (to us, whose message says so, or to
    /// an older claim), and needs nothing; a key freed otherwise is run for
    /// within one time limit, as for a claimed key that changes while the
    /// waiters wait (`on_invalidated`). Before, a waiter whose run was out
    /// when it heard of a change ran again at once: with four lockers on
    /// one name, about one more acquire script per lock + release
    /// (BENCHMARKS.md, "valkeylock with hand-over").
    Changed,
    /// At once: a key that changed was not held by another (absent,
    /// queued for, failed), our own delete landed under the attempt, or
    /// invalidations may have been lost (a reconnect).
    Now,
}

/// Hand-over: the claims an attempt for the waiters leaves on the keys it
/// finds held (`scripts::ACQUIRE_LUA`). An attempt that fails with nothing
/// taken keeps them: it waits in [`Phase::Idle`], and the next attempt for
/// the waiters is another run of it, with the same token, so that a key
/// handed to that token is taken by the message that says so or, when the
/// invalidation of the hand-over comes first, by that run (the script
/// finds its own token). An attempt that took a key, or whose write may
/// have, releases it with its token: it keeps no claims, as a run with
/// that token could then count a key its own delete removes.
#[derive(Debug)]
struct Claims {
    /// When the waiting began (µs since the Unix epoch): the claims' order.
    arrival_us: u64,
    /// An earlier run left claims: a run that takes a key takes its claim
    /// out.
    before: bool,
    /// This run sent its claims (it did not go through a fair queue, which
    /// decides who is next instead).
    sent: bool,
    /// Per key, the newest acquisition whose reply said the key was held
    /// (so it left a claim there), and when it was sent: the instant a key
    /// handed under that claim is counted from.
    left: Vec<Option<(CmdId, Time)>>,
}

impl Attempt {
    /// When command `cmd` was sent, if it is the one whose claim on `key`
    /// this attempt last saw answered.
    fn claim_sent(&self, key: usize, cmd: CmdId) -> Option<Time> {
        let (c, sent) = self.claims.as_ref()?.left.get(key).copied().flatten()?;
        (c == cmd).then_some(sent)
    }
}

/// The keys held under one token, and who holds them.
#[derive(Debug)]
struct Grant {
    /// The id of the attempt that won it (its commands' `owner`).
    id: u64,
    token: Token,
    /// The attempt's, kept (a boxed slice, as in [`Attempt`]).
    keys: Box<[Slot]>,
    /// The core's deadline: the computed end minus the margin in force (the
    /// terms' margin plus the shell's allowance). The holder is told at
    /// this instant, and its published end is later by the allowance
    /// ([`Grant::valid_until`]).
    ends_at: Time,
    holder: HolderId,
    handovers: u32,
    acquired_at: Time,
    fence: u64,
    next_extend: Time,
    /// A retry of the keys whose last command failed, before the next round.
    retry_at: Option<Time>,
    /// The margin in force (the terms' margin plus the shell's allowance):
    /// it only grows during a grant, so the core's deadline never moves
    /// later without an extension.
    margin: Nanos,
    /// The current holder's terms (a hand-over brings the next holder's).
    terms: Arc<Terms>,
    /// The end its maximum hold sets for the current holder.
    hold_until: Option<Time>,
    /// Fair queueing: the winner's place, which a key whose acquisition had
    /// not answered at the win may still hold (the script places it where
    /// it does not take the key): taken out there if the reply says so.
    place: Option<u64>,
    /// Hand-over: the key whose check is still to go, if any.
    rearm: Option<Rearm>,
}

/// Hand-over: the key a release handed to a grant, whose tracking that
/// release's write took (a read of ours had armed it), and when the check
/// that reads it again goes. Not at once: a holder that releases within
/// [`REARM_DELAY`] (a lock handed from caller to caller, each holding it a
/// moment) needs no check at all, and the check was one script call in
/// three of such a hand-over (the claim, the release, the check). A grant
/// that ends first drops it. Till the check reads the key, a write to it
/// sends us nothing; the check reads it after the write, and sees it.
#[derive(Debug, Clone, Copy)]
struct Rearm {
    at: Time,
    key: u32,
}

impl Grant {
    /// What the holder is told: the end of validity, or of its maximum hold
    /// if that comes first. The end of validity is the terms' margin before
    /// the computed end: the core's deadline plus the shell's allowance,
    /// which the telling of every holder of the process may take.
    fn valid_until(&self) -> Time {
        let published =
            self.ends_at + Duration::from(self.margin).saturating_sub(self.terms.margin);
        self.hold_until.map_or(published, |h| h.min(published))
    }

    /// When the core ends the grant unless extended: its deadline, or the
    /// end of the maximum hold if that comes first. Never after
    /// [`Grant::valid_until`].
    fn deadline(&self) -> Time {
        self.hold_until
            .map_or(self.ends_at, |h| h.min(self.ends_at))
    }

    /// True once the maximum hold ends the grant before its keys would:
    /// extending it further is of no use.
    fn hold_ends_first(&self) -> bool {
        self.hold_until.is_some_and(|h| h <= self.ends_at)
    }
}

/// Deletes sent when a grant ended, and who waits for them.
#[derive(Debug)]
struct ReleaseGroup {
    id: u64,
    /// The last holder of the grant.
    holder: HolderId,
    acks: Acks,
    deleted: usize,
    unconfirmed: usize,
    started: Time,
}

/// Who waits for a group's deletes: nearly always one `release()` caller,
/// kept without a vector of its own.
type Acks = OneOrMore<AckId>;

/// The phase of the lock.
#[derive(Debug)]
enum Phase {
    /// No attempt, nothing held. Waiters (if any) retry when one of the keys
    /// in `wake` changes (those held by others at the last attempt), on a
    /// reconnect, or at `retry_at`.
    Idle {
        wake: Vec<bool>,
        retry_at: Option<Time>,
        /// Hand-over: the failed attempt whose claims may stand (see
        /// [`Claims`]).
        claimed: Option<Box<Attempt>>,
    },
    Attempting(Attempt),
    Holding(Grant),
    /// A grant ended and its deletes are in flight: the next attempt waits
    /// for them (our own stale key would block it, and with NOLOOP its
    /// deletion would not wake us). `pause` lets other processes in first.
    /// With a `chain`, a request that comes meanwhile does not wait: its
    /// attempt goes right behind the deletes (see [`Chain`]).
    Releasing {
        group: u64,
        pause: bool,
        chain: Option<Chain>,
    },
    /// Refusing everything; done once no command is in flight.
    Closing,
    Closed,
}

/// A run of grants this process took one right after the other: local
/// hand-overs, and acquisitions sent right behind the deletes of the grant
/// before (a holder released with nobody waiting, and a request of the
/// name came before the deletes were answered: a loop of `lock()` and a
/// dropped guard). Such an attempt does not wait for the deletes' replies:
/// it goes on the connection they went by, behind them, and the server
/// runs it once they are done, which saves the round trip a wait would
/// cost (what the Go valkeylock's `cancel()` gets by not waiting for its
/// delete). Other processes hear of the delete only through an
/// invalidation, a hop later: the attempt right behind it always wins. So
/// a chain is bounded like local hand-overs are (`within_budget`:
/// `handover_limit` grants, `HANDOVER_WINDOW` from its first), after which
/// a request waits for the deletes and then for the pause that gives the
/// waiters of other processes a head start, as after a release with
/// waiters queued.
///
/// Ordering is what makes it pay, not what makes it safe: an attempt that
/// reaches the server before the delete (the two took different
/// connections) finds our own old token there and fails; the delete's
/// reply then wakes it, as an invalidation would (NOLOOP sends none for
/// our own delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chain {
    /// Grants in the chain so far.
    links: u32,
    /// When its first grant was taken.
    since: Time,
}

/// Which keys of a grant an extension round writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// The periodic round: every key, and the next round scheduled.
    All,
    /// The keys whose last command failed, at their retry time.
    Failing,
    /// Node `n` came back (`None`: every node is re-checked, as after
    /// dropped invalidations): the keys whose last command failed, and that
    /// node's keys whose write is still out.
    Reconnected(Option<usize>),
}

/// Fair queueing: what a locker's last attempts reached, which decides
/// whether its waiters keep refreshing their places (guarantee 3 of
/// docs/SAFETY.md, "Fair queueing").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The nodes of a majority of keys answered, or none did (the places
    /// then reach no queue either, and are there again as soon as the nodes
    /// are): the places are refreshed.
    Majority,
    /// Some nodes answered, not a majority: a waiter that cannot win must not
    /// stand at the head of the queues it does reach, keeping out those who
    /// could. The refreshes stop and the places lapse.
    Minority,
    /// No node answered, but commands went unanswered, or were still out
    /// when the attempt was decided, since `since_ms`: they may have run, so
    /// their nodes were reached, not won. A waiter behind a link slower than
    /// the reply bound takes the key at the head of the queue and never
    /// learns it in time, keeping the head from everyone who can win. An
    /// outage shorter than a place's life keeps the places (the refreshes
    /// held up with everything else run when it ends, as before it); a
    /// longer one becomes `Minority` when next looked at
    /// (`LockCore::refreshing`). `since_ms`: the core's clock in
    /// milliseconds, wrapping (a lock's state cell is every held lock's
    /// memory, and a streak is compared only with a place's life).
    Unanswered { since_ms: u32 },
}

impl Reach {
    /// An unanswered streak that starts at `now`.
    fn unanswered(now: Time) -> Reach {
        Reach::Unanswered {
            since_ms: Self::ms(now),
        }
    }

    fn ms(t: Time) -> u32 {
        // Wrapping on purpose: only differences of less than 24 days count.
        (t.as_nanos() / 1_000_000) as u32
    }

    /// Whether the places are refreshed at `now`, a place lasting `life`.
    fn refreshes(self, now: Time, life: Duration) -> bool {
        match self {
            Reach::Majority => true,
            Reach::Minority => false,
            Reach::Unanswered { since_ms } => {
                u128::from(Self::ms(now).wrapping_sub(since_ms)) < life.as_millis()
            }
        }
    }
}

/// How many holders a process has from which its locks give back their
/// tables' room as soon as they are granted (see [`LockCore::settled`]).
pub(crate) const CROWD: usize = 256;

/// One lock name's state machine.
pub(crate) struct LockCore {
    cfg: std::sync::Arc<Config>,
    entropy: Draws,
    phase: Phase,
    waiters: Waiters,
    cmds: InFlight,
    /// This and the other lists of the core are one word each while they
    /// have no room, as for most of a long hold ([`LockCore::trim`]).
    groups: Room<Vec<ReleaseGroup>>,
    /// Tokens of finished attempts and grants whose commands may still
    /// answer: a late "ours" is released with its token.
    past: Room<Vec<(u64, Token)>>,
    next_id: u64,
    /// Since when nothing is queued, held or in flight; `None` while busy.
    quiet_since: Option<Time>,
    idle_reported: bool,
    /// Extra notice the shell asks for on top of `Config::margin`: the time
    /// its process needs to tell every holder it has (see
    /// [`LockCore::set_allowance`]), in nanoseconds (half a `Duration`'s
    /// room: this cell is every held lock's memory).
    allowance_ns: u64,
    /// Fair queueing: when the places of the waiters are next refreshed.
    refresh_at: Option<Time>,
    /// A queue of this name was seen (a key refused as queued) or joined:
    /// acquisitions go through the queue gate until the next grant.
    gated: bool,
    /// Fair queueing: what the waiters' last attempts reached, which decides
    /// whether they keep refreshing their places. A waiting episode starts
    /// at `Reach::Majority`: the first waiter of an idle lock sets it.
    reach: Reach,
    effects: Room<VecDeque<Effect>>,
}

impl std::fmt::Debug for LockCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockCore")
            .field("phase", &self.phase)
            .field("waiters", &self.waiters)
            .field("cmds", &self.cmds)
            .finish_non_exhaustive()
    }
}

/// A view of the current grant, for observers (the simulator's invariants).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HoldingView {
    pub(crate) holder: HolderId,
    pub(crate) token: Token,
    pub(crate) ends_at: Time,
    pub(crate) fence: u64,
}

/// The current grant, for the shell's logs and metrics
/// ([`LockCore::grant_view`]).
#[derive(Debug)]
pub(crate) struct GrantView<'a> {
    /// Which grant (a hand-over keeps it, a new acquisition changes it).
    pub(crate) grant: u64,
    pub(crate) token: &'a Token,
    /// Local hand-overs so far, counted from the first grant of its chain
    /// (a grant taken right behind our own deletes starts with the chain's
    /// count).
    pub(crate) handovers: u32,
    keys: &'a [Slot],
    now: Time,
}

impl GrantView<'_> {
    /// The keys the grant has lost, and how: known to be somebody else's or
    /// gone, failing, or past their expiry. Keys whose acquisition has not
    /// answered yet are not counted as lost.
    pub(crate) fn lost_keys(&self) -> impl Iterator<Item = (usize, LostReason)> + '_ {
        self.keys.iter().enumerate().filter_map(|(i, s)| {
            let why = match s.key {
                Key::Pending => return None,
                Key::Ours { .. } if s.ours_at(self.now).is_some() => return None,
                Key::Ours { .. } if s.failing => LostReason::Unreachable,
                Key::Ours { .. } => LostReason::Expired,
                Key::Other { forced: true } => LostReason::Forced,
                Key::Other { forced: false } => LostReason::Overwritten,
                Key::Absent | Key::Queued { .. } => LostReason::Deleted,
                Key::Failed | Key::Unanswered => LostReason::Unreachable,
            };
            Some((i, why))
        })
    }
}

impl LockCore {
    pub(crate) fn new(cfg: std::sync::Arc<Config>, entropy: Draws, now: Time) -> Self {
        let total = cfg.total;
        LockCore {
            cfg,
            entropy,
            phase: Phase::Idle {
                wake: vec![false; total],
                retry_at: None,
                claimed: None,
            },
            waiters: Waiters::default(),
            cmds: InFlight::default(),
            groups: Room::default(),
            past: Room::default(),
            next_id: 0,
            quiet_since: Some(now),
            idle_reported: false,
            allowance_ns: 0,
            refresh_at: None,
            gated: false,
            reach: Reach::Majority,
            effects: Room::default(),
        }
    }

    /// Sets the extra notice the shell needs on top of the configured margin.
    /// Telling a holder costs the shell some CPU time; when many grants end
    /// at once (they share the extension grid), the last one told waits for
    /// all the others, so the shell asks for notice in proportion to how
    /// many holders it has. Takes effect at the next validity computed.
    pub(crate) fn set_allowance(&mut self, allowance: Duration) {
        self.allowance_ns = u64::try_from(allowance.as_nanos()).unwrap_or(u64::MAX);
    }

    /// How long before the computed end of validity the core ends a grant
    /// on `terms` and tells its holder: the terms' margin, which the
    /// holder's published `valid_until` keeps, plus the allowance, in which
    /// the telling is done.
    fn margin(&self, terms: &Terms) -> Duration {
        terms.margin + Duration::from_nanos(self.allowance_ns).min(terms.life.ttl / 5)
    }

    /// `terms` as a queued caller, an attempt or a grant keeps them: the
    /// locker's own shared (nearly every grant is on them), another
    /// caller's in a cell of its own. Kept inline, they were 88 bytes of
    /// every held lock's state (BENCHMARKS.md, section 6).
    fn keep(&self, terms: Terms) -> Arc<Terms> {
        if terms == *self.cfg.terms {
            self.cfg.terms.clone()
        } else {
            Arc::new(terms)
        }
    }

    /// What the tokens of a grant on `terms` claim: the locker's
    /// configuration, and the permit count when the name is a semaphore's
    /// permit slot.
    fn fingerprint(&self, terms: &Terms) -> Fingerprint {
        self.cfg.fingerprint.with_permits(terms.permits)
    }

    /// The permit count claimed by the attempt or grant in force, or by the
    /// queue: `None` when nothing is claimed (idle with an empty queue), else
    /// `Some` of the terms' `permits`.
    fn claimed_permits(&self) -> Option<Option<u16>> {
        match &self.phase {
            Phase::Attempting(a) => Some(a.terms.permits),
            Phase::Holding(g) => Some(g.terms.permits),
            _ => self.waiters.head_terms().map(|t| t.permits),
        }
    }

    /// The next effect to carry out.
    pub(crate) fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// True once the lock has settled into a long hold: held for at least
    /// one extension period, no command waiting for its reply, nobody
    /// queued, no effect left to carry out. The shell then gives back the
    /// room its tables took while busy ([`LockCore::trim`]): a lock held for
    /// minutes should cost what its state needs, not what its busiest moment
    /// did. A short hold (a lock + release loop) never gets here, so it
    /// keeps its buffers and allocates nothing more.
    ///
    /// `holders`: how many holders the process has (the shell's count). From
    /// [`CROWD`] on, a lock settles as soon as it is granted and quiet: there
    /// the room every held lock keeps for a period is what counts (about 370
    /// bytes a lock, 3.7 MB at 10,000), and what a name locked again soon
    /// pays for it, a few allocations when its lists fill again, is small
    /// beside it.
    pub(crate) fn settled(&self, now: Time, holders: usize) -> bool {
        match &self.phase {
            Phase::Holding(g) => {
                (now.since(g.acquired_at) >= g.terms.extend || holders >= CROWD)
                    && self.cmds.idle()
                    && self.waiters.is_empty()
                    && self.effects.is_empty()
                    && self.groups.is_empty()
            }
            _ => false,
        }
    }

    /// Gives back the room of the tables that are empty (see
    /// [`LockCore::settled`]). Changes no state: only capacity.
    pub(crate) fn trim(&mut self) {
        self.effects.trim();
        self.cmds.trim();
        self.waiters.trim();
        self.groups.trim();
        self.past.trim();
    }

    /// Which of the core's lists have room (see [`LockCore::trim`]).
    #[cfg(test)]
    pub(crate) fn lists_with_room(&self) -> Vec<&'static str> {
        [
            ("effects", self.effects.has_room()),
            ("commands", self.cmds.has_room()),
            ("waiters", self.waiters.has_room()),
            ("groups", self.groups.has_room()),
            ("past", self.past.has_room()),
        ]
        .into_iter()
        .filter_map(|(name, room)| room.then_some(name))
        .collect()
    }

    /// When the core next wants [`Event::Timeout`].
    pub(crate) fn next_timeout(&self) -> Option<Time> {
        let mut next = self.cmds.next_deadline();
        let mut at = |t: Option<Time>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Time| n.min(t)));
            }
        };
        match &self.phase {
            Phase::Idle { retry_at, .. } if self.waiters.has_waiter() => at(*retry_at),
            Phase::Holding(g) => {
                at(Some(g.deadline()));
                at(Some(g.next_extend));
                at(g.retry_at);
                at(g.rearm.map(|r| r.at));
            }
            _ => {}
        }
        if let Some(f) = self.cfg.fair {
            if self.waiters.head_place().is_some() {
                at(self.refresh_at);
            }
            // A waiter that has waited long enough takes its place (unless
            // this locker cannot reach a majority by then: see `Reach`).
            if !f.always() && !matches!(self.phase, Phase::Closing | Phase::Closed) {
                let ripe = f.ripe_at_first_unsent(&self.waiters);
                at(ripe.filter(|&r| self.reach.refreshes(r, f.life)));
            }
        }
        if !self.idle_reported {
            at(self.quiet_since.map(|q| q + IDLE_GRACE));
        }
        next
    }

    /// The current grant, if any.
    #[cfg(test)]
    pub(crate) fn holding(&self) -> Option<HoldingView> {
        match &self.phase {
            Phase::Holding(g) => Some(HoldingView {
                holder: g.holder,
                token: g.token.clone(),
                ends_at: g.valid_until(),
                fence: g.fence,
            }),
            _ => None,
        }
    }

    /// The current grant as the shell's logs and metrics see it; `None`
    /// unless holding. Decides nothing.
    pub(crate) fn grant_view(&self, now: Time) -> Option<GrantView<'_>> {
        match &self.phase {
            Phase::Holding(g) => Some(GrantView {
                grant: g.id,
                token: &g.token,
                handovers: g.handovers,
                keys: &g.keys,
                now,
            }),
            _ => None,
        }
    }

    /// Which connection command `cmd` (just sent) may take: the caller's
    /// own, or the engine's. Only an acquisition or a release, the writes a
    /// caller waits for, may go direct, and only while nothing else of its
    /// key is out, live or overdue, but our own deletes (read-only checks
    /// aside), or acquisitions that went on one direct connection, behind
    /// which it then goes there (`Route::Behind`; see `went_direct`). Each
    /// connection keeps its own commands in order, but nothing orders one
    /// connection's against the other's: a write that overtook an earlier
    /// one of its key could undo it (a delete landing before the
    /// acquisition it was meant to follow). An acquisition that overtakes
    /// our delete undoes nothing: it finds our old token and fails, and the
    /// delete's reply wakes it (see `Chain`). Extensions, checks and queue
    /// updates stay on the engine's connection, which the engine's own
    /// thread drives whatever the caller's runtime is doing.
    ///
    /// A delete behind an acquisition is what a lock released at once
    /// sends on several nodes: the grant came with a majority of the keys,
    /// the last acquisition still out. Sent on the engine's connection, it
    /// found nothing, and the release waited for a round trip through the
    /// engine's thread; the acquisition's late "ours" then sent another.
    pub(crate) fn route(&self, cmd: CmdId) -> Route {
        match self.cmds.purpose_of(cmd) {
            // Our own deletes and checks of the key may be out: a check is
            // a read and orders nothing, deletes commute (each compares its
            // own token), and an acquisition right behind our deletes (a
            // chain) goes on the connection they most likely took; should
            // it reach the server first, it only finds our own key and fails
            // (see `Chain`). Kept off for them, a delete or an acquisition
            // would race the other on two connections, and in a loop of
            // `lock()` and a dropped guard both are often out: the engine's
            // connection hears of our deletes and the holder checks its key,
            // and a delete's reply may be fed after the next acquisition's.
            Some(Purpose::Release { .. } | Purpose::Acquire { .. }) => self.cmds.route(cmd),
            _ => Route::Engine,
        }
    }

    /// Command `cmd` went on direct connection `generation`, and is handed
    /// to it before any command made after it: what `route` keeps later
    /// writes of its key behind. A delete that went behind its own token's
    /// acquisition there spares the late-key release of that acquisition's
    /// reply (see `apply`).
    pub(crate) fn went_direct(&mut self, cmd: CmdId, generation: u64) {
        self.cmds.went_direct(cmd, generation);
    }

    /// Acquisition `cmd` went on a direct connection that a task of its own
    /// writes later (a waiter's retry made on the engine's thread): it may
    /// land after commands made after it on any connection, so the key is
    /// not extended while it is out (see `extend`).
    pub(crate) fn went_unordered(&mut self, cmd: CmdId) {
        self.cmds.went_unordered(cmd);
    }

    /// True if none of this lock's commands is out on the engine's
    /// connection. A hand-over's message read on another connection (a
    /// caller's, `listen`) is then in the order the engine's would be: the
    /// engine's connection carries the message behind the replies of the
    /// commands the server ran before it, and there are none of this lock's
    /// to come. What the other connections carry is in no known order with
    /// the message either way (`take_key`).
    pub(crate) fn engine_quiet(&self) -> bool {
        self.cmds.none_on_engine()
    }

    /// The token of the attempt or grant in progress, for observers (the
    /// simulator checks that keys are written only under a live token;
    /// `inspect` tells this locker's keys from others').
    pub(crate) fn live_token(&self) -> Option<&Token> {
        match &self.phase {
            Phase::Attempting(a) => Some(&a.token),
            Phase::Holding(g) => Some(&g.token),
            // Its claims may still hand it a key.
            Phase::Idle {
                claimed: Some(a), ..
            } => Some(&a.token),
            _ => None,
        }
    }

    /// True while an attempt sent right behind our own deletes is out (a
    /// chain), for the simulator's counts.
    #[cfg(test)]
    pub(crate) fn attempt_in_chain(&self) -> bool {
        matches!(&self.phase, Phase::Attempting(a) if a.chain.is_some())
    }

    /// True once closing is complete.
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// A short name of the phase, for tests.
    #[cfg(test)]
    pub(crate) fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Idle { .. } => "idle",
            Phase::Attempting(_) => "attempting",
            Phase::Holding(_) => "holding",
            Phase::Releasing { .. } => "releasing",
            Phase::Closing => "closing",
            Phase::Closed => "closed",
        }
    }

    /// Feeds one event that happened at `now`.
    pub(crate) fn handle(&mut self, now: Time, event: Event) {
        match event {
            Event::Request { id, kind, terms } => {
                let terms = terms.unwrap_or(*self.cfg.terms);
                self.on_request(now, id, kind, terms)
            }
            Event::Cancel { id } => self.on_cancel(now, id),
            Event::Release { holder, ack } => self.on_release(now, holder, ack),
            Event::Reply { cmd, outcome } => self.on_reply(now, cmd, outcome),
            Event::Invalidated { key } => self.on_invalidated(now, Some(key), None),
            Event::Handed {
                key,
                token,
                cmd,
                fence,
            } => self.on_handed(now, key, token, cmd, fence),
            Event::Recheck { node } => self.on_invalidated(now, None, node),
            Event::Timeout => self.on_timeout(now),
            Event::Close => self.on_close(now),
        }
        self.after(now);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Queues an effect for the shell. Room for one to start with: the shell
    /// takes them after every event, a step rarely makes more than two, and
    /// a held lock keeps whatever room the queue ever had until it settles
    /// ([`LockCore::trim`]).
    fn emit(&mut self, effect: Effect) {
        self.effects.make_one().push_back(effect);
    }

    fn send(&mut self, now: Time, purpose: Purpose, target: Target, op: Op) -> CmdId {
        let cmd = self.cmds.send(purpose, now, self.cfg.reply_bound());
        self.emit(Effect::Send { cmd, target, op });
        cmd
    }

    fn refuse(&mut self, to: ReqId, why: Refusal) {
        self.emit(Effect::Refuse { to, why });
    }

    fn status(&mut self, holder: HolderId, status: HolderStatus) {
        self.emit(Effect::Status { holder, status });
    }

    // ===== requests =====

    fn on_request(&mut self, now: Time, id: ReqId, kind: RequestKind, terms: Terms) {
        self.idle_reported = false;
        // One name, one claim: callers of this locker that disagree on the
        // permit count of a slot are refused here, before they could queue
        // behind (and be handed) a grant whose tokens claim another count.
        let claimed = self
            .claimed_permits()
            .filter(|&claimed| claimed != terms.permits);
        match (&self.phase, kind) {
            (Phase::Closing | Phase::Closed, _) => self.refuse(id, Refusal::Closed),
            _ if claimed.is_some() => {
                let ours = self.fingerprint(&terms);
                let theirs = self.cfg.fingerprint.with_permits(claimed.flatten());
                self.refuse(id, Refusal::ConfigMismatch { ours, theirs });
            }
            (_, RequestKind::Wait) => {
                let first = !self.waiters.has_waiter();
                if let (true, Phase::Idle { claimed, .. }) = (first, &mut self.phase) {
                    // The claims of waiters that gave up: a new waiter
                    // claims from its own arrival.
                    if let Some(a) = claimed.take() {
                        self.unclaim(now, &a);
                    }
                }
                if first {
                    // What the last waiter's attempts reached says nothing
                    // of this one's: it takes its place from its first
                    // attempt, as with a fresh core.
                    self.reach = Reach::Majority;
                }
                // A semaphore's permit slot takes no place: see `queues_for`.
                let place = self.queues_for(&terms).map(|f| Place {
                    member: self.entropy.source().next_u64(),
                    since_us: f.wall_us(now),
                    life: f.life,
                });
                self.waiters.push_placed(id, kind, self.keep(terms), place);
                let chain = match self.phase {
                    Phase::Releasing {
                        chain: Some(chain),
                        pause: false,
                        ..
                    } => Some(chain),
                    _ => None,
                };
                if first && matches!(self.phase, Phase::Idle { .. }) {
                    self.start_attempt(now, SetMode::Nx, None);
                } else if let (true, Some(chain)) = (first, chain) {
                    // Right behind our own deletes.
                    self.start_attempt(now, SetMode::Nx, None);
                    if let Phase::Attempting(a) = &mut self.phase {
                        a.chain = Some(chain);
                    }
                } else if place.is_some() && self.cfg.fair.is_some_and(|f| f.always()) {
                    // Take the place in the queues now: a waiter of another
                    // process that comes later must find it there.
                    self.enqueue_due(now);
                }
            }
            (Phase::Holding(_) | Phase::Attempting(_), RequestKind::Try) => self.refuse(
                id,
                Refusal::NotLocked {
                    acquired: 0,
                    held_by_others: true,
                },
            ),
            (_, RequestKind::Try) => {
                self.start_attempt(now, SetMode::Nx, Some((id, kind, terms)));
            }
            (Phase::Attempting(_), RequestKind::Force) => {
                // Decide the attempt in flight first; the force then takes
                // over whatever it produced.
                self.waiters.push(id, kind, self.keep(terms));
            }
            (_, RequestKind::Force) => self.start_force(now, id, terms),
        }
    }

    fn start_force(&mut self, now: Time, id: ReqId, terms: Terms) {
        if let Phase::Holding(g) = &self.phase {
            // Our own holder is taken over: its keys are about to be
            // overwritten, so no release, just the news.
            let holder = g.holder;
            tracing::debug!(token = g.token.short(), "own grant taken over by force");
            self.status(holder, HolderStatus::Ended(LostReason::Forced));
        }
        self.start_attempt(now, SetMode::Force, Some((id, RequestKind::Force, terms)));
    }

    fn on_cancel(&mut self, now: Time, id: ReqId) {
        let place = self.waiters.sent_place_of(id);
        if self.waiters.cancel(id) {
            if let Some(place) = place {
                self.dequeue(now, vec![place.member], |_| true);
            }
            // Hand-over: the last waiter gave up; its claims would only
            // have keys handed to nobody.
            if !self.waiters.has_waiter() {
                if let Phase::Idle { claimed, .. } = &mut self.phase {
                    if let Some(a) = claimed.take() {
                        self.unclaim(now, &a);
                    }
                }
            }
            return;
        }
        if let Phase::Attempting(a) = &mut self.phase {
            if a.request.is_some_and(|(r, _)| r == id) {
                a.request = None;
            }
        }
    }

    // ===== fair queues =====

    /// The fair queues, for a request on `terms`: none for a semaphore's
    /// permit slot. A semaphore waiter waits on every slot, and leaves the
    /// queues of the others when it gets one; nothing wakes the waiters
    /// behind it on a slot it leaves while that slot is free, so they would
    /// wait for its place to lapse (measured: a semaphore of 2 with fair
    /// queueing made 3 grants/s against 780 without). Semaphores keep the
    /// race of the default mode until leaving a queue wakes the next one.
    fn queues_for(&self, terms: &Terms) -> Option<Fair> {
        self.cfg.fair.filter(|_| terms.permits.is_none())
    }

    /// Whether the waiters' places are refreshed at `now`, a place lasting
    /// `life` (`Reach`). An unanswered streak that has lasted a place's life
    /// becomes `Minority` here, so that it stays one: a later unanswered
    /// attempt does not start a new streak, and no timer waits for a
    /// refresh that will not come.
    fn refreshing(&mut self, now: Time, life: Duration) -> bool {
        if !self.reach.refreshes(now, life) {
            self.reach = Reach::Minority;
        }
        self.reach != Reach::Minority
    }

    /// Places or refreshes the places that are due, if this locker reaches
    /// a majority.
    fn enqueue_due(&mut self, now: Time) {
        let Some(f) = self.cfg.fair else {
            return;
        };
        if self.refreshing(now, f.life) {
            let places = self
                .waiters
                .places_due(now, f.refresh / 2, f.ripe_us(now), MAX_PLACES);
            self.enqueue(now, places);
        }
    }

    /// Whether acquisitions for the queue go through the queue gate: always
    /// with fair queueing; otherwise once a queue of the name was seen, or a
    /// waiter here has waited long enough to take its place.
    fn use_queue(&self, now: Time) -> bool {
        self.cfg.fair.is_some_and(|f| {
            f.always()
                || self.gated
                || f.ripe_at_first_unsent(&self.waiters)
                    .is_some_and(|at| at <= now)
                || self.waiters.any_sent()
        })
    }

    /// Places or refreshes `places` in the queues of every key.
    fn enqueue(&mut self, now: Time, places: Vec<Place>) {
        let Some(f) = self.cfg.fair else {
            return;
        };
        if places.is_empty() {
            return;
        }
        self.refresh_at = Some(now + f.refresh);
        self.gated = true;
        for key in 0..self.cfg.total {
            self.enqueue_to(now, key, places.clone());
        }
    }

    /// Places or refreshes `places` in the queue of key `key` only.
    fn enqueue_to(&mut self, now: Time, key: usize, places: Vec<Place>) {
        let Some(f) = self.cfg.fair else {
            return;
        };
        let op = Op::Enqueue {
            places,
            life: f.life,
        };
        self.send(now, Purpose::Queue { key }, Target::Key(key), op);
    }

    /// Takes `members` out of the queues of the keys `which` selects.
    fn dequeue(&mut self, now: Time, members: Vec<u64>, which: impl Fn(usize) -> bool) {
        let Some(f) = self.cfg.fair.filter(|_| !members.is_empty()) else {
            return;
        };
        for key in (0..self.cfg.total).filter(|&k| which(k)) {
            let op = Op::Dequeue {
                members: members.clone(),
                life: f.life,
            };
            self.send(now, Purpose::Queue { key }, Target::Key(key), op);
        }
    }

    /// What a fair acquisition sends with its keys: for the queue's head,
    /// its place and the places of the waiters behind it; for a try, no
    /// place (it only takes keys nobody queues for). `None` without fair
    /// queueing, and for a force. `placed_before`: the head's place was
    /// sent before this attempt (the script then checks it is still there).
    fn queue_args(
        &mut self,
        now: Time,
        mode: SetMode,
        for_queue: bool,
        placed_before: bool,
        terms: &Terms,
    ) -> Option<Box<Queue>> {
        let f = self.queues_for(terms)?;
        if mode == SetMode::Force || !(f.always() || for_queue && self.use_queue(now)) {
            return None;
        }
        let rejoin = for_queue && placed_before;
        let (candidate, places, members) = if for_queue {
            let places = match self.refreshing(now, f.life) {
                true => self
                    .waiters
                    .places_due(now, f.refresh / 2, f.ripe_us(now), MAX_PLACES),
                false => Vec::new(),
            };
            if !places.is_empty() {
                self.refresh_at = Some(now + f.refresh);
                self.gated = true;
            }
            let candidate = self.waiters.head_place().map(|p| p.member);
            let members = self
                .waiters
                .places(MAX_PLACES)
                .into_iter()
                .map(|p| p.member)
                .filter(|m| Some(*m) != candidate && !places.iter().any(|p| p.member == *m))
                .collect();
            (candidate, places, members)
        } else {
            (None, Vec::new(), Vec::new())
        };
        Some(Box::new(Queue {
            candidate,
            places,
            members,
            life: f.life,
            rejoin,
            settle: f.life,
        }))
    }

    // ===== acquisition =====

    /// Starts an acquisition for `request` (a Try or Force caller, with its
    /// terms), or for the queue's head.
    fn start_attempt(
        &mut self,
        now: Time,
        mode: SetMode,
        request: Option<(ReqId, RequestKind, Terms)>,
    ) {
        let (queue, claim) = self.begin_attempt(now, mode, request);
        self.send_acquires(now, mode, queue, claim);
    }

    /// Makes the attempt of [`LockCore::start_attempt`] the phase, without
    /// sending anything yet; what its acquisitions carry.
    fn begin_attempt(
        &mut self,
        now: Time,
        mode: SetMode,
        request: Option<(ReqId, RequestKind, Terms)>,
    ) -> (Option<Box<Queue>>, Option<Claim>) {
        let head_terms = self.waiters.head_terms().unwrap_or(*self.cfg.terms);
        // Hand-over: the waiters' attempt goes on with the token of the one
        // before, whose claims may stand (see `Claims`), if it is for the
        // same terms (a token carries them).
        let resumed = match &mut self.phase {
            Phase::Idle { claimed, .. } if mode == SetMode::Nx && request.is_none() => {
                claimed.take()
            }
            _ => None,
        };
        // Not through a fair queue's gate: a run there leaves no claim, and
        // a key it finds its own could not be told from a retry of its own
        // (whose fencing counter moved before) when it was handed (which
        // moved none). Such a run takes a new token; the old one's claims
        // are taken back.
        let resumed = match resumed {
            Some(a) if *a.terms == head_terms && !self.runs_through_queue(now, &head_terms) => {
                Some(a)
            }
            Some(a) => {
                self.unclaim(now, &a);
                None
            }
            None => None,
        };
        let total = self.cfg.total;
        let (id, token, terms, mut claims) = match resumed {
            Some(a) => {
                let Attempt {
                    id,
                    token,
                    terms,
                    mut claims,
                    ..
                } = *a;
                if let Some(c) = claims.as_mut() {
                    c.before = true;
                }
                (id, token, terms, claims)
            }
            None => {
                let id = self.id();
                let terms = self.keep(match request {
                    Some((_, _, terms)) => terms,
                    None => head_terms,
                });
                let fingerprint = self.fingerprint(&terms);
                let token = self
                    .entropy
                    .source()
                    .token(mode == SetMode::Force, fingerprint);
                // A semaphore's waiter waits on every slot: a slot handed to
                // it after it took another would only be given back.
                let claims = self
                    .cfg
                    .handover
                    .filter(|_| mode == SetMode::Nx && request.is_none() && terms.permits.is_none())
                    .map(|h| {
                        let arrival_us = match self.waiters.head_place() {
                            Some(p) => p.since_us,
                            None => h.wall_origin_us + now.as_nanos() / 1_000,
                        };
                        Box::new(Claims {
                            arrival_us,
                            before: false,
                            sent: false,
                            left: vec![None; total],
                        })
                    });
                (id, token, terms, claims)
            }
        };
        let placed_before = self.waiters.head_placed();
        let queue = self.queue_args(now, mode, request.is_none(), placed_before, &terms);
        let candidate = queue.as_ref().and_then(|q| q.candidate);
        // Through a fair queue, the queue decides who is next: no claim.
        if let Some(c) = claims.as_mut() {
            c.sent = queue.is_none();
        }
        let claim = claims.as_ref().filter(|_| queue.is_none()).map(|c| Claim {
            arrival_us: c.arrival_us,
            before: c.before,
        });
        tracing::trace!(
            token = token.short(),
            ?mode,
            resumed = claim.is_some_and(|c| c.before),
            "attempt"
        );
        self.phase = Phase::Attempting(Attempt {
            id,
            token: token.clone(),
            terms,
            request: request.map(|(id, kind, _)| (id, kind)),
            keys: vec![Slot::pending(); total].into_boxed_slice(),
            rerun: Rerun::No,
            fence: None,
            fencing: None,
            mismatch: None,
            candidate,
            placed_before,
            chain: None,
            claims,
        });
        (queue, claim)
    }

    /// Sends the attempt's acquisitions of the keys nothing is known of yet.
    fn send_acquires(
        &mut self,
        now: Time,
        mode: SetMode,
        queue: Option<Box<Queue>>,
        claim: Option<Claim>,
    ) {
        let Phase::Attempting(a) = &self.phase else {
            return;
        };
        let (id, token, life) = (a.id, a.token.clone(), a.terms.life);
        let total = self.cfg.total;
        // Only a counter moved by the write that completes the majority is
        // ordered after every earlier grant: with one key, that is key 0's.
        let in_script = self.fences_in_script();
        for key in 0..total {
            let pending =
                matches!(&self.phase, Phase::Attempting(a) if a.keys[key].key == Key::Pending);
            if !pending {
                continue;
            }
            let op = Op::Acquire {
                token: token.clone(),
                mode,
                fence: in_script && key == 0,
                ttl: life.ttl,
                queue: queue.clone(),
                claim,
            };
            self.send(
                now,
                Purpose::Acquire {
                    attempt: id,
                    key,
                    life,
                },
                Target::Key(key),
                op,
            );
        }
    }

    /// Decides the attempt if its replies allow.
    fn decide(&mut self, now: Time) {
        let Phase::Attempting(a) = &self.phase else {
            return;
        };
        if a.fencing.is_some() {
            return;
        }
        if let Some(theirs) = a.mismatch {
            // Wait for the other replies, so that the keys this attempt won
            // are released before anyone is told.
            if a.keys.iter().all(|s| s.key != Key::Pending) {
                self.attempt_mismatched(now, theirs);
            }
            return;
        }
        let m = self.cfg.majority;
        let won = a.keys.iter().filter(|s| s.ours_at(now).is_some()).count();
        let failed = a
            .keys
            .iter()
            .filter(|s| s.key != Key::Pending && s.ours_at(now).is_none())
            .count();
        match quorum::tally(won, failed, self.cfg.total, m) {
            Tally::Open => {}
            Tally::Won if self.cfg.fencing != Fencing::Off && a.fence.is_none() => {
                let nodes = self.cfg.nodes;
                let Phase::Attempting(a) = &mut self.phase else {
                    return;
                };
                let id = a.id;
                let f = Fence::start(nodes);
                let round = f.round();
                a.fencing = Some(Box::new(f));
                self.send_fence_reads(now, id, round);
            }
            Tally::Won => self.win(now),
            Tally::Lost => self.attempt_failed(now),
        }
    }

    fn send_fence_reads(&mut self, now: Time, attempt: u64, round: u32) {
        for node in 0..self.cfg.nodes {
            self.send(
                now,
                Purpose::FenceRead {
                    attempt,
                    round,
                    node,
                },
                Target::Fence(node),
                Op::FenceRead,
            );
        }
    }

    fn on_fence_next(&mut self, now: Time, attempt: u64, next: FenceNext) {
        match next {
            FenceNext::Wait => {}
            FenceNext::Read { round } => self.send_fence_reads(now, attempt, round),
            FenceNext::Write { round, value } => {
                for node in 0..self.cfg.nodes {
                    self.send(
                        now,
                        Purpose::FenceWrite {
                            attempt,
                            round,
                            node,
                        },
                        Target::Fence(node),
                        Op::FenceWrite { value },
                    );
                }
            }
            FenceNext::Done(value) => {
                if let Phase::Attempting(a) = &mut self.phase {
                    a.fence = Some(value);
                    a.fencing = None;
                }
                self.decide(now);
            }
            FenceNext::Failed => {
                tracing::warn!("fencing step failed");
                self.attempt_failed(now);
            }
        }
    }

    /// Takes the attempt out of the phase, leaving `Idle` until the caller
    /// sets the next phase; `None` (and the phase untouched) if there is no
    /// attempt.
    fn take_attempt(&mut self) -> Option<Attempt> {
        match self.take_phase_if(|p| matches!(p, Phase::Attempting(_)))? {
            Phase::Attempting(a) => Some(a),
            _ => None,
        }
    }

    /// The grant, as [`LockCore::take_attempt`] takes the attempt.
    fn take_grant(&mut self) -> Option<Grant> {
        match self.take_phase_if(|p| matches!(p, Phase::Holding(_)))? {
            Phase::Holding(g) => Some(g),
            _ => None,
        }
    }

    fn take_phase_if(&mut self, want: impl Fn(&Phase) -> bool) -> Option<Phase> {
        want(&self.phase).then(|| {
            std::mem::replace(
                &mut self.phase,
                Phase::Idle {
                    wake: Vec::new(),
                    retry_at: None,
                    claimed: None,
                },
            )
        })
    }

    /// The attempt holds a majority (and its fencing token, if any).
    fn win(&mut self, now: Time) {
        let Some(a) = self.take_attempt() else {
            return;
        };
        self.reach = Reach::Majority;
        self.gated = false;
        let m = self.cfg.majority;
        // Who gets it: the attempt's own caller, or the queue's head now
        // (which may not be the one the attempt started for, if that one
        // gave up meanwhile; its terms apply from here on).
        let terms = match (a.request, self.waiters.head_terms()) {
            (None, Some(head)) if head != *a.terms => self.keep(head),
            _ => a.terms.clone(),
        };
        let margin = self.margin(&a.terms).max(self.margin(&terms));
        let live = a.keys.iter().filter_map(|s| s.ours_at(now));
        let ends_at = quorum::validity_end(live, m).map(|v| v - margin);
        // Enough validity to reach a confirmed extension: one round trip.
        let Some(ends_at) = ends_at.filter(|e| *e > now + self.cfg.timeout) else {
            tracing::warn!(
                token = a.token.short(),
                "majority reached too late to be safe; releasing"
            );
            self.phase = Phase::Attempting(a);
            self.attempt_failed(now);
            return;
        };
        // The first extension on the locker's grid, or sooner if the grant
        // would lapse before it could be confirmed.
        let latest = ends_at - self.cfg.timeout * 2;
        let next_extend = self.cfg.next_extend(now, &terms).min(latest.max(now));
        let holder = self.id();
        // Fair queueing: the keys were won for the waiter whose place they
        // checked. If that one gave up meanwhile, the next local waiter may
        // not be next in the queues: the keys are released, and the queues
        // decide again.
        let moved_on = a.request.is_none()
            && a.candidate.is_some()
            && self.waiters.head_place().map(|p| p.member) != a.candidate;
        let to = match a.request {
            Some((id, _)) => Some(id),
            None if moved_on => None,
            None => self.waiters.pop_waiter().map(|(id, _)| id),
        };
        // The winner's place goes from every queue that may hold it, or it
        // would stand ahead of everyone until it lapsed. If it was sent
        // before, any queue may; if not, only those of keys this attempt did
        // not take (the script places no candidate on a key it takes): the
        // ones known now, and the ones whose reply is still out, when it
        // comes.
        let mut place = None;
        if let Some(cand) = a.candidate {
            if a.placed_before {
                self.dequeue(now, vec![cand], |_| true);
            } else {
                let not_taken: Vec<bool> = a
                    .keys
                    .iter()
                    .map(|s| !matches!(s.key, Key::Ours { .. } | Key::Pending))
                    .collect();
                self.dequeue(now, vec![cand], |k| not_taken[k]);
                place = a.keys.iter().any(|s| s.key == Key::Pending).then_some(cand);
            }
        }
        let grant = Grant {
            id: a.id,
            token: a.token.clone(),
            keys: a.keys,
            ends_at,
            holder,
            // A chain's grants count as hand-overs since its first.
            handovers: a.chain.map_or(0, |c| c.links),
            acquired_at: a.chain.map_or(now, |c| c.since),
            fence: a.fence.unwrap_or(0),
            next_extend,
            retry_at: None,
            margin: margin.into(),
            hold_until: terms.max_hold.map(|d| now + d),
            terms,
            place,
            rearm: None,
        };
        tracing::debug!(
            token = grant.token.short(),
            valid_ms = ends_at.since(now).as_millis() as u64,
            "acquired"
        );
        let (fence, valid_until, hold_until) = (grant.fence, grant.valid_until(), grant.hold_until);
        self.phase = Phase::Holding(grant);
        // A refresh that fell due while this locker reached no majority
        // sent nothing and armed no next one; an attempt would have placed
        // the waiters again, but a holder makes none. Without this the
        // other waiters' places lapsed while the lock was held, and the
        // release served a later arrival of another process first
        // (simulator, base 0x6e009).
        if self.refresh_at.is_none() {
            self.enqueue_due(now);
        }
        match to {
            Some(to) => self.emit(Effect::Grant {
                to,
                holder,
                valid_until,
                hold_until,
                fence,
            }),
            // Nobody wants it any more (its waiter cancelled): release the
            // keys without a status, since no caller ever saw this holder.
            None => self.finish_grant(now, LostReason::Released, false),
        }
        // A force queued behind the attempt takes over now.
        if let Some((force, terms)) = self.waiters.pop_force() {
            self.start_force(now, force, *terms);
        }
    }

    /// The attempt met a key of a locker configured differently: its caller
    /// (or, for a waiters' attempt, every waiter) gets the typed error.
    fn attempt_mismatched(&mut self, now: Time, theirs: Fingerprint) {
        let Phase::Attempting(a) = &mut self.phase else {
            return;
        };
        let ours = self.cfg.fingerprint.with_permits(a.terms.permits);
        tracing::warn!(token = a.token.short(), %ours, %theirs, "lock held by a locker with another configuration");
        let mut refused: Vec<ReqId> = a.request.take().map(|(id, _)| id).into_iter().collect();
        if refused.is_empty() {
            while let Some((id, _)) = self.waiters.pop_waiter() {
                refused.push(id);
            }
        }
        for id in refused {
            self.refuse(id, Refusal::ConfigMismatch { ours, theirs });
        }
        self.attempt_failed(now);
    }

    fn attempt_failed(&mut self, now: Time) {
        let Some(a) = self.take_attempt() else {
            return;
        };
        let won = a.keys.iter().filter(|s| s.ours_at(now).is_some()).count();
        // Keys whose node answered. The attempt is decided once a majority
        // is out of reach, often before the slowest reply: a key still
        // pending counts as reached only if its node answered for another
        // key of this attempt (reaching is a node's, and several keys can
        // share one). Without that, two keys of three on a node that
        // answered, the other's node down, read as a minority: the waiters
        // stopped refreshing their places, though that node alone could
        // grant the lock, and every locker's places lapsed while it was
        // down (simulator, base 0x6e008).
        let placement = &self.cfg.placement;
        let answered = |s: &Slot| !matches!(s.key, Key::Failed | Key::Unanswered | Key::Pending);
        let reached = a
            .keys
            .iter()
            .enumerate()
            .filter(|&(k, s)| {
                answered(s)
                    || s.key == Key::Pending
                        && a.keys
                            .iter()
                            .enumerate()
                            .any(|(j, o)| answered(o) && placement.get(j) == placement.get(k))
            })
            .count();
        let maybe = a
            .keys
            .iter()
            .any(|s| matches!(s.key, Key::Unanswered | Key::Pending));
        self.reach = match (reached, maybe) {
            (r, _) if r >= self.cfg.majority => Reach::Majority,
            (0, false) => Reach::Majority,
            // A streak starts from a majority reached; one under way keeps
            // its start, and a minority stays one until a majority answers.
            (0, true) => match self.reach {
                Reach::Majority => Reach::unanswered(now),
                other => other,
            },
            _ => Reach::Minority,
        };
        let held_by_others = a
            .keys
            .iter()
            .any(|s| matches!(s.key, Key::Other { .. } | Key::Queued { .. }));
        tracing::trace!(
            token = a.token.short(),
            won,
            held_by_others,
            "attempt failed"
        );
        // Hand-over: an attempt for the waiters that found keys held and
        // took none, and whose writes all answered, keeps its claims while
        // anyone waits (see `Claims`); anything else releases what it may
        // have taken, and takes its claims back.
        let keep_claims = a.claims.is_some()
            && a.request.is_none()
            && self.waiters.has_waiter()
            && a.mismatch.is_none()
            && held_by_others
            && a.keys.iter().all(|s| {
                matches!(
                    s.key,
                    Key::Other { .. } | Key::Absent | Key::Failed | Key::Queued { .. }
                )
            });
        if !keep_claims {
            self.past.push((a.id, a.token.clone()));
            self.unclaim(now, &a);
        }
        // A key this attempt took has no place of its candidate (the script
        // makes none where it takes the key): make it before the key is
        // released, on the same connection, so the waiter keeps its turn
        // there.
        //
        // An acquisition that went unanswered may have taken its key as
        // well: no reply will say so (the client dropped it), and the key
        // would keep everyone out for a validity. It is released the same
        // way (the delete compares the token, and goes a whole time limit
        // after the acquisition, on its connection if that one is still out:
        // `route`).
        //
        // A waiter that does not reach a majority keeps no place: it lapses
        // like the others it stops refreshing (`Reach`).
        let refreshing = self.cfg.fair.is_some_and(|f| self.refreshing(now, f.life));
        let keep_place = a
            .candidate
            .filter(|_| refreshing)
            .and_then(|c| self.waiters.place_by_member(c));
        for (key, s) in a.keys.iter().enumerate() {
            if matches!(s.key, Key::Ours { .. } | Key::Unanswered) {
                if let Some(place) = keep_place {
                    self.enqueue_to(now, key, vec![place]);
                }
                self.release_key(now, key, a.id, &a.token, None);
            }
        }
        if let Some((id, kind)) = a.request {
            self.refuse(
                id,
                Refusal::NotLocked {
                    acquired: won,
                    held_by_others: held_by_others && kind != RequestKind::Force,
                },
            );
        }
        if let Some((force, terms)) = self.waiters.pop_force() {
            self.start_force(now, force, *terms);
            return;
        }
        // Waiters wake when a key that blocked them changes. Keys we won and
        // released, or that were free, are not what keeps them out: waking on
        // those is how two waiting processes would wake each other at network
        // speed while a holder keeps a key out of reach.
        let wake = a
            .keys
            .iter()
            .map(|s| matches!(s.key, Key::Other { .. } | Key::Queued { .. }))
            .collect();
        let rerun = a.rerun;
        let first_queued = a
            .keys
            .iter()
            .filter_map(|s| match s.key {
                Key::Queued { until } => Some(until),
                _ => None,
            })
            .min();
        // A claim lapses one validity after it was made: runs come at
        // least three times a validity, so the claims stay live.
        let claims_ttl = keep_claims.then_some(a.terms.life.ttl);
        // Claims stand only where they were sent and are heeded: through a
        // fair queue (ours, or another locker's on the key), the queue
        // decides who is next, and a release deletes the key.
        let claims_stand = keep_claims
            && a.claims.as_ref().is_some_and(|c| c.sent)
            && !a.keys.iter().any(|s| matches!(s.key, Key::Queued { .. }));
        let at_once = match rerun {
            Rerun::No => false,
            Rerun::Changed => !claims_stand,
            Rerun::Now => true,
        };
        let claimed = keep_claims.then(|| Box::new(a));
        if at_once && self.waiters.has_waiter() {
            self.phase = Phase::Idle {
                wake,
                retry_at: None,
                claimed,
            };
            self.start_attempt(now, SetMode::Nx, None);
            return;
        }
        let mut retry_at = now + self.retry_period(held_by_others);
        if let Some(ttl) = claims_ttl {
            retry_at = retry_at.min(now + ttl / 3);
        }
        if rerun == Rerun::Changed && claims_stand {
            retry_at = retry_at.min(now + self.cfg.timeout);
        }
        if let Some(f) = self.cfg.fair {
            // Keep the places fresh, and look again when the waiter ahead of
            // ours loses its place (it died, or stopped waiting unseen): the
            // key is free then, and nothing else would wake us.
            retry_at = retry_at.min(now + f.refresh);
            if let Some(until) = first_queued {
                retry_at = retry_at.min(until + Duration::from_millis(1));
                // A queue of the name: go through its gate.
                self.gated = true;
            }
        }
        let retry_at = Some(retry_at);
        self.phase = Phase::Idle {
            wake,
            retry_at,
            claimed,
        };
    }

    /// The fallback retry of waiters. With tracking, an invalidation normally
    /// wakes them first; this covers what tracking cannot see (fred drops
    /// FLUSHALL's invalidation, a gap during a reconnect). Without tracking it
    /// is the polling period.
    fn retry_period(&mut self, held_by_others: bool) -> Duration {
        let c = &self.cfg;
        let period = if !c.tracking {
            c.timeout
        } else if held_by_others {
            c.extend
        } else {
            // Nodes failing rather than the lock being held: retry soon.
            c.timeout.max(Duration::from_millis(50))
        };
        quorum::jitter(period, 10, self.entropy.source().next_u64())
    }

    // ===== replies =====

    fn on_reply(&mut self, now: Time, cmd: CmdId, outcome: Outcome) {
        let Some(answered) = self.cmds.answer(cmd) else {
            return;
        };
        self.apply(now, cmd, answered, outcome);
    }

    fn apply(&mut self, now: Time, cmd: CmdId, answered: Answered, outcome: Outcome) {
        let Answered {
            purpose,
            sent,
            followed,
        } = answered;
        match purpose {
            // The attempt or grant is over, and a delete of its token went
            // right behind this acquisition on its connection: a key it
            // made ours is deleted already (a late reply of a key with
            // majority won, the lock released at once).
            Purpose::Acquire { attempt, key, .. } if followed && !self.is_current(attempt) => {
                tracing::trace!(key, "late key of a decided attempt; deleted right behind");
            }
            Purpose::Acquire { attempt, key, life } => {
                self.on_key_reply(now, cmd, attempt, key, sent, outcome, Some(life));
                self.catch_up(now, attempt, key);
            }
            Purpose::Extend { grant, key, life } => {
                self.on_key_reply(now, cmd, grant, key, sent, outcome, Some(life))
            }
            Purpose::Verify { owner, key } => {
                self.on_key_reply(now, cmd, owner, key, sent, outcome, None)
            }
            Purpose::Release { key, group, .. } => {
                // An attempt went on without waiting for this delete (a
                // chain, a try, a force).
                let went_on =
                    !matches!(self.phase, Phase::Releasing { group: g, .. } if Some(g) == group);
                if let Some(g) = group.and_then(|id| self.groups.iter_mut().find(|g| g.id == id)) {
                    match outcome {
                        Outcome::Released(true) => g.deleted += 1,
                        Outcome::Released(false) => {}
                        _ => g.unconfirmed += 1,
                    }
                }
                match group {
                    Some(group) => {
                        self.maybe_group_done(now, group);
                        if went_on && outcome == Outcome::Released(true) {
                            self.deleted_under(now, key);
                        }
                    }
                    // A clean-up (a late "ours" of an attempt given up)
                    // deleted the key: this process freed it, and with
                    // NOLOOP tracking it hears no invalidation of its own
                    // delete. Its waiters, which saw the key taken (by that
                    // very token), would wait for a wake-up that never comes
                    // while the fair queue keeps other processes behind
                    // them: wake them as an invalidation would.
                    None if outcome == Outcome::Released(true) => {
                        self.on_invalidated(now, Some(key), None)
                    }
                    None => {}
                }
            }
            Purpose::Queue { key } => {
                if let Some(why) = outcome.failure() {
                    tracing::debug!(key, why, "fair queue update failed");
                }
            }
            // Best effort: a claim left standing is handed to a token nobody
            // here takes, which is released under it (`on_handed`).
            Purpose::Unclaim { key } => {
                if let Some(why) = outcome.failure() {
                    tracing::debug!(key, why, "claim not taken back");
                }
            }
            Purpose::FenceRead {
                attempt,
                round,
                node,
            } => {
                let next = match &mut self.phase {
                    Phase::Attempting(a) if a.id == attempt => match &mut a.fencing {
                        Some(f) => f.on_read(
                            round,
                            node,
                            match outcome {
                                Outcome::Fence(v) => Some(v),
                                _ => None,
                            },
                        ),
                        None => FenceNext::Wait,
                    },
                    _ => FenceNext::Wait,
                };
                self.on_fence_next(now, attempt, next);
            }
            Purpose::FenceWrite {
                attempt,
                round,
                node,
            } => {
                let next = match &mut self.phase {
                    Phase::Attempting(a) if a.id == attempt => match &mut a.fencing {
                        Some(f) => f.on_write(
                            round,
                            node,
                            match outcome {
                                Outcome::FenceWritten { raised, .. } => Some(raised),
                                _ => None,
                            },
                        ),
                        None => FenceNext::Wait,
                    },
                    _ => FenceNext::Wait,
                };
                self.on_fence_next(now, attempt, next);
            }
        }
    }

    /// An acquisition of the grant's own attempt answered while the lock is
    /// held: its key was left out of the extension rounds while it was out
    /// (see `extend`), and it counts the attempt's TTL, which may be shorter
    /// than the grant's terms now ask for (a local hand-over to a holder
    /// with a longer validity). A key that would lapse before the next
    /// round could extend it goes into a round now.
    fn catch_up(&mut self, now: Time, attempt: u64, key: usize) {
        let Phase::Holding(g) = &mut self.phase else {
            return;
        };
        if g.id != attempt {
            return;
        }
        // A key not ours, or failed, is taken back with NX by the next
        // round, as before.
        let short = match g.keys.get(key).map(|s| s.key) {
            Some(Key::Ours { expiry }) => {
                expiry < now + g.terms.life.ttl.saturating_sub(g.terms.extend)
            }
            _ => false,
        };
        if short {
            g.next_extend = g.next_extend.min(now);
        }
    }

    /// A reply about lock key `key` for attempt or grant `owner`.
    /// `written` is what the acquire script set (it sets the TTL afresh);
    /// `None` for a read-only check.
    #[allow(clippy::too_many_arguments)]
    fn on_key_reply(
        &mut self,
        now: Time,
        cmd: CmdId,
        owner: u64,
        key: usize,
        sent: Time,
        outcome: Outcome,
        written: Option<Life>,
    ) {
        let c = self.cfg.clone();
        let writes = written.is_some();
        let (slots, terms, claims) = match &mut self.phase {
            Phase::Attempting(a) if a.id == owner => {
                (&mut a.keys, *a.terms, a.claims.as_deref_mut())
            }
            Phase::Holding(g) if g.id == owner => (&mut g.keys, *g.terms, None),
            _ => {
                // Its attempt or grant is over: a key it made ours is
                // released, and so is one its write may have taken (no
                // reply in time).
                if writes
                    && matches!(
                        outcome,
                        Outcome::Key(KeyState::Ours { .. }) | Outcome::Unanswered
                    )
                {
                    if let Some(token) = self.token_of_past(owner) {
                        tracing::debug!(key, "late key of a decided attempt; releasing");
                        self.release_key(now, key, owner, &token, None);
                    }
                }
                return;
            }
        };
        let ours = c.fingerprint.with_permits(terms.permits);
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        let touched = std::mem::take(&mut slot.touched);
        let was_pending = slot.key == Key::Pending;
        if let Some(why) = outcome.failure() {
            tracing::trace!(key, why, "command failed");
            slot.failing = true;
            if slot.key == Key::Pending && cmd > slot.seen {
                slot.key = match outcome {
                    Outcome::Unanswered if writes => Key::Unanswered,
                    _ => Key::Failed,
                };
            }
        } else if cmd > slot.seen {
            slot.seen = cmd;
            slot.failing = false;
            let mut fence_seen = None;
            let mut mismatch = None;
            slot.key = match outcome {
                Outcome::Key(KeyState::Ours { pttl_ms, fence }) => {
                    fence_seen = fence;
                    if let Some(life) = written {
                        Key::Ours {
                            expiry: life.expiry(sent),
                        }
                    } else {
                        // A check: the server's PTTL, read after `sent`, is
                        // a lower bound on the expiry by itself. It is the
                        // newest word on the key: it may be lower (someone
                        // cut the TTL) or higher (it ran after an extension
                        // whose own reply it overtook, which is then stale).
                        let reported = pttl_ms.map(|ms| {
                            quorum::key_expiry(sent, Duration::from_millis(ms), terms.life.drift)
                        });
                        match (slot.key, reported) {
                            (_, Some(r)) => Key::Ours { expiry: r },
                            (Key::Ours { expiry }, None) => Key::Ours { expiry },
                            // Ours without a TTL and nothing confirmed: no
                            // credit until the next extension sets one.
                            (_, None) => Key::Ours { expiry: sent },
                        }
                    }
                }
                Outcome::Key(KeyState::Other { forced, owner }) => {
                    mismatch = owner.filter(|fp| *fp != ours);
                    // Hand-over: the acquisition left a claim on the key.
                    if let (true, Some(c)) = (writes, claims) {
                        if let Some(left) = c.left.get_mut(key) {
                            *left = Some((cmd, sent));
                        }
                    }
                    Key::Other { forced }
                }
                Outcome::Key(KeyState::Absent) => Key::Absent,
                Outcome::Key(KeyState::Queued { head_ms }) => Key::Queued {
                    until: now + Duration::from_millis(head_ms),
                },
                _ => Key::Failed,
            };
            match slot.cap {
                Some((by, _)) if cmd >= by => slot.cap = None,
                Some((_, cap)) => {
                    if let Key::Ours { expiry } = &mut slot.key {
                        *expiry = (*expiry).min(cap);
                    }
                }
                None => {}
            }
            // A counter only counts when the script moved it (see InScript).
            let in_script = self.fences_in_script();
            if let (Some(f), true, Phase::Attempting(a)) = (fence_seen, in_script, &mut self.phase)
            {
                a.fence = Some(f);
            }
            match (mismatch, &mut self.phase) {
                (Some(theirs), Phase::Attempting(a)) => a.mismatch = Some(theirs),
                (Some(theirs), Phase::Holding(_)) => {
                    // Seen only after the majority was won (several nodes:
                    // the reply came late). The other locker may hold the
                    // name too: let go.
                    tracing::warn!(key, %ours, %theirs, "held key belongs to a locker with another configuration");
                    self.end_grant(now, LostReason::ConfigMismatch);
                    return;
                }
                _ => {}
            }
            // Someone cut a held key's TTL short: extend now.
            if let (
                false,
                Outcome::Key(KeyState::Ours {
                    pttl_ms: Some(ms), ..
                }),
                Phase::Holding(g),
            ) = (writes, &outcome, &mut self.phase)
            {
                if Duration::from_millis(*ms) < g.terms.life.ttl.saturating_sub(g.terms.extend) {
                    g.next_extend = g.next_extend.min(now);
                }
            }
        }
        // A key of the grant whose acquisition answered after the win, not
        // taken: the winner's place may stand in its queue.
        if let Phase::Holding(g) = &self.phase {
            let left_out = !matches!(g.keys[key].key, Key::Ours { .. } | Key::Pending);
            if let (true, true, Some(member)) = (was_pending, left_out, g.place) {
                self.dequeue(now, vec![member], |k| k == key);
            }
        }
        if touched {
            let recheck = match &mut self.phase {
                Phase::Attempting(a) if !matches!(a.keys[key].key, Key::Ours { .. }) => {
                    let heard = match a.keys[key].key {
                        Key::Other { .. } => Rerun::Changed,
                        _ => Rerun::Now,
                    };
                    a.rerun = a.rerun.max(heard);
                    None
                }
                Phase::Attempting(a) => Some(a.token.clone()),
                Phase::Holding(g) if matches!(g.keys[key].key, Key::Ours { .. }) => {
                    Some(g.token.clone())
                }
                _ => None,
            };
            if let Some(token) = recheck {
                self.verify(now, owner, key, &token);
            }
        }
        match &mut self.phase {
            Phase::Attempting(_) => self.decide(now),
            Phase::Holding(g) => {
                if writes && g.keys[key].failing {
                    // A node failed to answer: try that key again after a
                    // pause rather than hammer it, well before the validity
                    // runs out. Only that key: a whole round would rewrite
                    // the keys that are fine, and every rewrite wakes the
                    // waiters of other processes.
                    let retry = now + c.timeout.max(Duration::from_millis(20));
                    if retry < g.next_extend {
                        g.retry_at = Some(g.retry_at.map_or(retry, |r| r.min(retry)));
                    }
                }
                self.reevaluate(now);
            }
            _ => {}
        }
    }

    /// True if `owner` is the attempt or grant in progress.
    fn is_current(&self, owner: u64) -> bool {
        match &self.phase {
            Phase::Attempting(a) => a.id == owner,
            Phase::Holding(g) => g.id == owner,
            _ => false,
        }
    }

    fn token_of_past(&self, owner: u64) -> Option<Token> {
        self.past
            .iter()
            .find(|(id, _)| *id == owner)
            .map(|(_, t)| t.clone())
    }

    // ===== holding =====

    /// Recomputes the grant's validity from its keys; ends it when fewer than
    /// `M` keys are known ours.
    fn reevaluate(&mut self, now: Time) {
        let Phase::Holding(g) = &self.phase else {
            return;
        };
        let margin = self.margin(&g.terms);
        let Phase::Holding(g) = &mut self.phase else {
            return;
        };
        g.margin = g.margin.max(margin.into());
        let margin = Duration::from(g.margin);
        let live = g.keys.iter().filter_map(|s| s.ours_at(now));
        match quorum::validity_end(live, self.cfg.majority) {
            Some(end) if end - margin > now => {
                let ends_at = end - margin;
                if ends_at != g.ends_at {
                    let before = g.valid_until();
                    g.ends_at = ends_at;
                    let (holder, valid_until) = (g.holder, g.valid_until());
                    if valid_until != before {
                        self.status(holder, HolderStatus::Held { valid_until });
                    }
                }
            }
            _ => {
                let reason = loss_reason(&g.keys);
                self.end_grant(now, reason);
            }
        }
    }

    /// An extension round: every key, or the keys `round` names (a retry
    /// between rounds, or after a reconnect).
    fn extend(&mut self, now: Time, round: Round) {
        let Phase::Holding(g) = &mut self.phase else {
            return;
        };
        if round == Round::All {
            g.next_extend = self.cfg.next_extend(now, &g.terms);
        }
        g.retry_at = None;
        if g.hold_ends_first() {
            // The maximum hold ends the grant before its keys could lapse:
            // nothing to extend or retake.
            return;
        }
        let life = g.terms.life;
        let (id, token) = (g.id, g.token.clone());
        let placement = &self.cfg.placement;
        // Keys believed ours are only extended (XX): one that vanished
        // unnoticed must show up as lost, never be re-created over a gap.
        // Keys known not ours are taken back with NX, counted from the reply
        // on, so a minority lost in a hiccup does not weaken the lock for good.
        // Keys whose acquisition has not answered are left to it, and so are
        // keys with an acquisition of the grant's own attempt out on another
        // connection than the engine's, whichever the key is believed to be
        // (a key handed to the grant's claim while its acquisition was
        // out): nothing orders that acquisition against this extension, and
        // landing after it, it would set the key's TTL back to its own,
        // shorter, while the extension's reply counted the longer one. Its
        // reply brings the round forward if the key is short (`catch_up`).
        let cmds = &self.cmds;
        let plan: Vec<(usize, SetMode)> = g
            .keys
            .iter()
            .enumerate()
            .filter(|&(k, s)| match round {
                Round::All => true,
                Round::Failing => s.failing,
                Round::Reconnected(node) => {
                    s.resend_after_reconnect(node.is_none_or(|n| placement[k] == n))
                }
            })
            .filter_map(|(k, s)| match s.key {
                Key::Pending => None,
                _ if cmds.acquiring_elsewhere(k, id) => None,
                Key::Ours { .. } => Some((k, SetMode::Xx)),
                _ => Some((k, SetMode::Nx)),
            })
            .collect();
        // The script of an extension reads its key, as a check would.
        if g.rearm
            .is_some_and(|r| plan.iter().any(|&(k, _)| k == r.key as usize))
        {
            g.rearm = None;
        }
        let mut shortened = false;
        for (key, mode) in plan {
            let op = Op::Extend {
                token: token.clone(),
                mode,
                ttl: life.ttl,
            };
            let cmd = self.send(
                now,
                Purpose::Extend {
                    grant: id,
                    key,
                    life,
                },
                Target::Key(key),
                op,
            );
            // A write sets the key's TTL the moment it lands, which may be
            // long before its reply: count it from now on, and let no older
            // command's reply count the key beyond it. That holds whatever
            // the key is believed to be now: a shorter TTL (a hand-over to a
            // holder with a shorter validity) may land after a check or an
            // acquisition whose late reply would otherwise count the longer
            // one, even while the key is believed to expire sooner, or not
            // believed ours at all.
            let after = life.expiry(now);
            if let Phase::Holding(g) = &mut self.phase {
                let slot = &mut g.keys[key];
                let cap = slot.cap.map_or(after, |(_, c)| c.min(after));
                slot.cap = Some((cmd, cap));
                if let Key::Ours { expiry } = &mut slot.key {
                    if after < *expiry {
                        *expiry = after;
                        shortened = true;
                    }
                }
            }
        }
        if shortened {
            self.reevaluate(now);
        }
    }

    /// Ends the grant for its holder and deletes whatever keys may be ours.
    fn end_grant(&mut self, now: Time, reason: LostReason) {
        self.finish_grant(now, reason, true);
    }

    /// Ends the grant and deletes its keys; `tell` sends its holder the news
    /// (false for a grant that was never handed to anybody).
    fn finish_grant(&mut self, now: Time, reason: LostReason, tell: bool) {
        let Some(g) = self.take_grant() else {
            return;
        };
        if reason.is_loss() {
            // The shell warns, with the lock's name (`Holder::end`).
            tracing::debug!(token = g.token.short(), reason = %reason, "lock lost");
        } else {
            tracing::debug!(token = g.token.short(), "released");
        }
        if tell {
            self.status(g.holder, HolderStatus::Ended(reason));
        }
        let group = self.id();
        self.groups.push(ReleaseGroup {
            id: group,
            holder: g.holder,
            acks: Acks::default(),
            deleted: 0,
            unconfirmed: 0,
            started: now,
        });
        self.past.push((g.id, g.token.clone()));
        for (key, s) in g.keys.iter().enumerate() {
            // Anything that may hold our token: known ours, unknown, failing.
            if !matches!(s.key, Key::Other { .. } | Key::Absent | Key::Queued { .. }) || s.failing {
                self.release_key(now, key, g.id, &g.token, Some(group));
            }
        }
        // Local waiters go next, once the deletes are answered; after a
        // release by the holder (or the end of its maximum hold), with a
        // pause that lets waiters in other processes compete fairly.
        let given_up = matches!(reason, LostReason::Released | LostReason::MaxHold);
        // With fair queueing the queues decide who goes next: no pause.
        let always =
            self.cfg.fair.is_some_and(|f| f.always()) && self.waiters.head_place().is_some();
        // Released with nobody waiting: a request before the deletes are
        // answered may go right behind them, within the chain's budget.
        let unqueued = tell
            && reason == LostReason::Released
            && !self.waiters.has_waiter()
            && !self.use_queue(now);
        let chain = (unqueued
            && within_budget(g.handovers, self.cfg.handover_limit, g.acquired_at, now))
        .then_some(Chain {
            links: g.handovers + 1,
            since: g.acquired_at,
        });
        // The end of a chain (its budget spent): a request that comes
        // before the deletes are answered pauses like a queued waiter, or
        // a loop of `lock()` and a dropped guard would win the race after
        // its delete every time too.
        let spent = unqueued && chain.is_none() && g.handovers > 0;
        let pause = given_up && (self.waiters.has_waiter() || spent) && !always;
        self.phase = Phase::Releasing {
            group,
            pause,
            chain,
        };
        self.maybe_group_done(now, group);
    }

    /// Deletes key `key` if it holds `token`, the token of attempt or grant
    /// `of`.
    fn release_key(&mut self, now: Time, key: usize, of: u64, token: &Token, group: Option<u64>) {
        let fence = self.cfg.handover.is_some() && self.fences_in_script();
        self.send(
            now,
            Purpose::Release { key, of, group },
            Target::Key(key),
            Op::Release {
                token: token.clone(),
                fence,
            },
        );
    }

    /// The fencing counter moves inside the scripts that give the key to a
    /// token (one instance, `M = 1`: see [`Fencing::InScript`]).
    fn fences_in_script(&self) -> bool {
        self.cfg.fencing == Fencing::InScript && self.cfg.total == 1
    }

    /// When a group's deletes are all answered: tell its release callers, and
    /// let waiters go.
    fn maybe_group_done(&mut self, now: Time, group: u64) {
        if self
            .cmds
            .any_live(|p| matches!(p, Purpose::Release { group: Some(g), .. } if *g == group))
        {
            return;
        }
        let Some(groups) = self.groups.get_mut() else {
            return;
        };
        let Some(pos) = groups.iter().position(|g| g.id == group) else {
            return;
        };
        let g = groups.swap_remove(pos);
        for ack in g.acks {
            self.emit(Effect::Released {
                ack,
                deleted: g.deleted,
                unconfirmed: g.unconfirmed,
            });
        }
        if let Phase::Releasing {
            group: current,
            pause,
            ..
        } = self.phase
        {
            if current != group {
                return;
            }
            self.phase = Phase::Idle {
                wake: vec![false; self.cfg.total],
                retry_at: None,
                claimed: None,
            };
            if let Some((force, terms)) = self.waiters.pop_force() {
                self.start_force(now, force, *terms);
            } else if self.waiters.has_waiter() {
                if pause {
                    // Our own delete is confirmed; waiters elsewhere hear of
                    // it through an invalidation, one hop later than we do.
                    // Give them that head start (twice the delete's round
                    // trip), or this process would win every race.
                    let rtt = now.since(g.started);
                    let wait = (rtt * 2 + Duration::from_micros(100)).min(self.cfg.timeout);
                    self.phase = Phase::Idle {
                        wake: vec![false; self.cfg.total],
                        retry_at: Some(now + wait),
                        claimed: None,
                    };
                } else {
                    self.start_attempt(now, SetMode::Nx, None);
                }
            }
        }
    }

    /// Our own delete of `key` is done while an attempt went on without
    /// waiting for it. If the attempt reached the server first (its own
    /// connection did not keep it behind the delete), it found our own old
    /// key there, and with NOLOOP no invalidation of our own delete comes:
    /// this is the wake-up. An attempt still deciding retries at once if it
    /// fails, unless the key is ours already (it came after the delete); a
    /// failed one retries now, as after an invalidation.
    ///
    /// With hand-over, "done" may mean handed over, and an attempt that
    /// claims needs no wake-up: had it run before the release, its claim
    /// was there for the release to hand the key to (it, or an older
    /// claim); after, it found the key free and took it, or handed to
    /// another, and claimed it. So it is `Rerun::Changed`, which waits on
    /// standing claims. Before, an acquisition still out when the release
    /// before it answered ran again at once if it found the key held.
    fn deleted_under(&mut self, now: Time, key: usize) {
        match &mut self.phase {
            Phase::Attempting(a)
                if a.keys
                    .get(key)
                    .is_some_and(|s| !matches!(s.key, Key::Ours { .. })) =>
            {
                let claims = a.claims.as_ref().is_some_and(|c| c.sent);
                a.rerun = match a.keys[key].key {
                    Key::Pending | Key::Other { .. } if claims => a.rerun.max(Rerun::Changed),
                    _ => Rerun::Now,
                };
            }
            Phase::Idle { .. } => self.on_invalidated(now, Some(key), None),
            _ => {}
        }
    }

    /// The holder releases: hand over to the next local waiter if the policy
    /// allows, else end the grant and delete the keys.
    fn on_release(&mut self, now: Time, holder: HolderId, ack: Option<AckId>) {
        let current = matches!(&self.phase, Phase::Holding(g) if g.holder == holder);
        if !current {
            // Already over: wait for that grant's deletes if they are still
            // out, else answer at once.
            if let Some(ack) = ack {
                match self.groups.iter_mut().find(|g| g.holder == holder) {
                    Some(g) => g.acks.push(ack),
                    None => self.emit(Effect::Released {
                        ack,
                        deleted: 0,
                        unconfirmed: 0,
                    }),
                }
            }
            return;
        }
        let Phase::Holding(g) = &self.phase else {
            return;
        };
        // Not through a queue: the next local waiter may not be next.
        let hand_over = self.waiters.has_waiter()
            && !self.use_queue(now)
            && may_hand_over(
                g.handovers,
                self.cfg.handover_limit,
                g.acquired_at,
                g.ends_at,
                now,
                self.cfg.timeout,
            );
        if hand_over {
            let next = self.id();
            let (to, terms) = self
                .waiters
                .pop_waiter()
                .expect("checked: a waiter is queued");
            let margin = self.margin(&terms);
            let next_extend = self.cfg.next_extend(now, &terms);
            let Phase::Holding(g) = &mut self.phase else {
                return;
            };
            let old = std::mem::replace(&mut g.holder, next);
            g.handovers += 1;
            // The next holder's terms: its validity from the next extension
            // on (sooner if it is shorter), its own maximum hold.
            g.hold_until = terms.max_hold.map(|d| now + d);
            g.terms = terms;
            g.next_extend = g.next_extend.min(next_extend);
            // The margin in force only grows, so the core's deadline never
            // moves later without an extension (the published end is the
            // next holder's own: its terms' margin before the computed end).
            let in_force = Duration::from(g.margin);
            if margin > in_force {
                g.ends_at = g.ends_at - (margin - in_force);
                g.margin = margin.into();
            }
            let (valid_until, hold_until, fence) = (g.valid_until(), g.hold_until, g.fence);
            tracing::trace!(
                token = g.token.short(),
                handovers = g.handovers,
                "handed over locally"
            );
            self.status(old, HolderStatus::Ended(LostReason::Released));
            // The grant first, the releasing caller's answer last: on tokio
            // the task woken last runs first, so the caller that released
            // queues its next request before the new holder can release
            // again, and the hand-overs chain (measured: with the opposite
            // order, two tasks alternating `lock()`/`release().await` got
            // every other grant handed over instead of almost all of them).
            self.emit(Effect::Grant {
                to,
                holder: next,
                valid_until,
                hold_until,
                fence,
            });
            if let Some(ack) = ack {
                self.emit(Effect::Released {
                    ack,
                    deleted: 0,
                    unconfirmed: 0,
                });
            }
            return;
        }
        self.end_grant(now, LostReason::Released);
        if let Some(ack) = ack {
            match self.groups.iter_mut().find(|g| g.holder == holder) {
                Some(g) => g.acks.push(ack),
                None => self.emit(Effect::Released {
                    ack,
                    deleted: 0,
                    unconfirmed: 0,
                }),
            }
        }
    }

    // ===== invalidations =====

    fn on_invalidated(&mut self, now: Time, key: Option<usize>, node: Option<usize>) {
        let c = self.cfg.clone();
        let in_scope = |i: usize| match (key, node) {
            (Some(k), _) => k == i,
            (None, Some(n)) => c.placement.get(i) == Some(&n),
            (None, None) => true,
        };
        match &mut self.phase {
            Phase::Holding(g) => {
                // A reconnect (no key named; also sent when invalidations
                // were dropped) ends the wait of a key whose extension failed
                // on that node: the failed keys are retried now (those of
                // other nodes too: one more try each), not at their retry
                // time, which may come after the validity the keys have left
                // (10,000 held locks of 1 s validity, their extension cut by
                // a reconnect of 100 ms, were lost while their keys were
                // still theirs). So is a key of that node whose write is
                // still out: it went on the connection that broke, and its
                // answer may never come, or come as a failure after this
                // re-check (10,000 locks cut while their round of extensions
                // was out were all lost, the node back 45 ms later). The
                // extension reads the key as a check would.
                let stuck = |i: usize| g.keys[i].resend_after_reconnect(in_scope(i));
                let retry = key.is_none() && (0..g.keys.len()).any(|i| in_scope(i) && stuck(i));
                // Re-check the others with a read-only script: it never
                // writes, so it cannot invalidate itself (no loop even
                // without NOLOOP).
                let (id, token) = (g.id, g.token.clone());
                let keys: Vec<usize> = (0..g.keys.len())
                    .filter(|&i| {
                        in_scope(i)
                            && !(retry && stuck(i))
                            && !matches!(g.keys[i].key, Key::Other { .. } | Key::Absent)
                    })
                    .collect();
                for k in keys {
                    self.verify(now, id, k, &token);
                }
                if retry {
                    self.extend(now, Round::Reconnected(node));
                }
            }
            Phase::Attempting(a) => {
                let (id, token) = (a.id, a.token.clone());
                let mut ours = Vec::new();
                for (i, s) in a.keys.iter_mut().enumerate() {
                    if !in_scope(i) {
                        continue;
                    }
                    match s.key {
                        Key::Ours { .. } => ours.push(i),
                        Key::Pending => s.touched = true,
                        // Held by another: it changed, so a retry may
                        // succeed (see `Rerun::Changed`).
                        Key::Other { .. } => a.rerun = a.rerun.max(Rerun::Changed),
                        // Free, queued for, failed: retry at once.
                        _ => a.rerun = Rerun::Now,
                    }
                }
                if key.is_none() {
                    // A reconnect: invalidations may have been lost.
                    a.rerun = Rerun::Now;
                }
                for k in ours {
                    self.verify(now, id, k, &token);
                }
            }
            Phase::Idle {
                wake,
                retry_at,
                claimed: Some(_),
            } if key.is_some() => {
                // Hand-over: a key the waiting attempt claimed changed. While
                // its claims stand, a release of a locker with hand-over
                // gives the key to a claim (ours, and its message says so,
                // or an older one), and an extension changes nothing: the
                // common cases need nothing. A key freed otherwise (released
                // by a locker without hand-over, expired, deleted by a third
                // party) is found by a run within one time limit. Before,
                // every waiter read the key at every change: one command
                // and an engine wake-up per waiting process per hand-over,
                // which made four contending processes slower than without
                // hand-over (BENCHMARKS.md, "valkeylock with hand-over").
                let changed = wake.iter().enumerate().any(|(i, w)| *w && in_scope(i));
                if changed && self.waiters.has_waiter() {
                    let soon = now + self.cfg.timeout;
                    *retry_at = Some(retry_at.map_or(soon, |r| r.min(soon)));
                }
            }
            Phase::Idle { wake, .. } => {
                let woken =
                    key.is_none() || wake.iter().enumerate().any(|(i, w)| *w && in_scope(i));
                if woken && self.waiters.has_waiter() {
                    self.start_attempt(now, SetMode::Nx, None);
                }
            }
            Phase::Releasing { .. } | Phase::Closing | Phase::Closed => {}
        }
    }

    /// Hand-over: a release gave key `key` to `token`, under the claim that
    /// command `cmd` left. The key counts as ours from the instant `cmd` was
    /// sent, as if `cmd` had taken it: the release set the expiry `cmd`
    /// would have set (`scripts::RELEASE_HANDOVER_LUA`).
    fn on_handed(&mut self, now: Time, key: usize, token: Token, cmd: CmdId, fence: Option<u64>) {
        if key >= self.cfg.total {
            return;
        }
        match &self.phase {
            Phase::Idle {
                claimed: Some(a), ..
            } if a.token == token && self.claim_resumable(now, a) => {
                match a.claim_sent(key, cmd) {
                    Some(sent) => {
                        let expiry = a.terms.life.expiry(sent);
                        self.take_key(now, key, &token, cmd, expiry, fence);
                    }
                    // A claim whose sending this core no longer knows: the
                    // run finds the key ours (its own token).
                    None => self.start_attempt(now, SetMode::Nx, None),
                }
            }
            Phase::Attempting(a) if a.token == token => {
                let sent = a
                    .claim_sent(key, cmd)
                    .or_else(|| match self.cmds.sent_of(cmd) {
                        Some((
                            Purpose::Acquire {
                                attempt, key: k, ..
                            },
                            sent,
                        )) if attempt == a.id && k == key => Some(sent),
                        _ => None,
                    });
                if let Some(sent) = sent {
                    let expiry = a.terms.life.expiry(sent);
                    self.take_key(now, key, &token, cmd, expiry, fence);
                }
            }
            Phase::Holding(g) if g.token == token => {
                // A key the winning attempt did not take (a majority was
                // enough), handed since: a check counts it in the grant and
                // arms tracking on it.
                let id = g.id;
                self.verify(now, id, key, &token);
            }
            Phase::Closed => {}
            _ => {
                // Nobody here takes it: its waiters gave up, or its attempt
                // is over. Let it go; the claims' token is used no more.
                let of = match &mut self.phase {
                    Phase::Idle { claimed, .. }
                        if claimed.as_ref().is_some_and(|a| a.token == token) =>
                    {
                        match claimed.take() {
                            Some(a) => {
                                self.unclaim(now, &a);
                                a.id
                            }
                            None => 0,
                        }
                    }
                    _ => 0,
                };
                tracing::debug!(
                    key,
                    token = token.short(),
                    "key handed over to nobody; releasing"
                );
                self.release_key(now, key, of, &token, None);
            }
        }
    }

    /// Hand-over: takes back the claims attempt `a` may have left, on every
    /// key it did not take, so that no release hands a key to a token
    /// nobody waits with. The script takes a claim out only if it is still
    /// `a`'s token's: the next waiter's claim, under the same channel, stays.
    fn unclaim(&mut self, now: Time, a: &Attempt) {
        if a.claims.is_none() {
            return;
        }
        for (key, s) in a.keys.iter().enumerate() {
            if !matches!(s.key, Key::Ours { .. }) {
                let op = Op::Unclaim {
                    token: a.token.clone(),
                };
                self.send(now, Purpose::Unclaim { key }, Target::Key(key), op);
            }
        }
    }

    /// Whether the waiting attempt `a` goes on for the waiters now: someone
    /// waits, on its terms (a token carries them), and the next run does not
    /// go through a fair queue's gate (see `begin_attempt`).
    fn claim_resumable(&self, now: Time, a: &Attempt) -> bool {
        self.waiters.head_terms() == Some(*a.terms) && !self.runs_through_queue(now, &a.terms)
    }

    /// Whether the waiters' next run on `terms` goes through a fair queue's
    /// gate: what `queue_args` decides for it.
    fn runs_through_queue(&self, now: Time, terms: &Terms) -> bool {
        self.queues_for(terms)
            .is_some_and(|f| f.always() || self.use_queue(now))
    }

    /// Hand-over: key `key` is `token`'s until `expiry`, as of command
    /// `cmd` (the claim a hand-over was made under). The waiting attempt
    /// goes on with it counted (a new run,
    /// which sends for the other keys only if it is still undecided then),
    /// or the run under way counts it. Newest-sent-wins: a reply of a
    /// command sent after `cmd` is newer news of the key.
    fn take_key(
        &mut self,
        now: Time,
        key: usize,
        token: &Token,
        cmd: CmdId,
        expiry: Time,
        fence: Option<u64>,
    ) {
        let in_script = self.fences_in_script();
        let run = matches!(&self.phase, Phase::Idle { .. })
            .then(|| self.begin_attempt(now, SetMode::Nx, None));
        // An acquisition of the key out on another connection than the
        // engine's, which carries the hand-over's message, is in no known
        // order with the hand-over: its reply is no newer news of the key.
        // Had it run first, it found the key the releaser's ("other": the
        // key is not lost); had it run after, it found our token and set
        // its TTL from then on, past the hand-over's.
        let elsewhere = self.cmds.newest_elsewhere(key);
        let Phase::Attempting(a) = &mut self.phase else {
            return;
        };
        if a.token != *token {
            // The run did not resume the claims' attempt (`claim_resumable`
            // said it would): give the key back, and go on with the run.
            self.release_key(now, key, 0, token, None);
            if let Some((queue, claim)) = run {
                self.send_acquires(now, SetMode::Nx, queue, claim);
            }
            return;
        }
        let slot = &mut a.keys[key];
        if cmd >= slot.seen {
            tracing::trace!(key, token = token.short(), "key handed over");
            slot.seen = elsewhere.map_or(cmd, |e| e.max(cmd));
            slot.failing = false;
            slot.key = Key::Ours { expiry };
            // The release moved the counter as it set the key to our token,
            // in one script on the one instance: above every token granted
            // before, below every one granted after, as the acquire
            // script's would be. A run that found the key first moved it
            // itself (and that value stands).
            if in_script && a.fence.is_none() {
                a.fence = fence;
            }
        }
        self.decide(now);
        let undecided = matches!(&self.phase, Phase::Attempting(a) if a.token == *token);
        if let (Some((queue, claim)), true) = (run, undecided) {
            self.send_acquires(now, SetMode::Nx, queue, claim);
        }
        // The hand-over's write took the key's tracking (if a read of
        // ours had armed it since the last change): a check arms it again,
        // and confirms the key. Held now, the check waits (see `Rearm`); an
        // attempt still undecided needs it at once, to hear of the key.
        if !self.cfg.tracking {
            return;
        }
        match &mut self.phase {
            // The grant this key decided, made just now (a key handed to
            // a grant already held goes through `on_handed`'s check).
            Phase::Holding(g) if g.token == *token => {
                g.rearm = Some(Rearm {
                    at: now + REARM_DELAY,
                    key: key as u32,
                });
            }
            Phase::Attempting(a) if a.token == *token => {
                let id = a.id;
                self.verify(now, id, key, token);
            }
            _ => {}
        }
    }

    /// Hand-over: the check of the key handed to the grant goes now (see
    /// [`Rearm`]).
    fn rearm(&mut self, now: Time) {
        let Phase::Holding(g) = &mut self.phase else {
            return;
        };
        let Some(r) = g.rearm.take() else {
            return;
        };
        let (id, token) = (g.id, g.token.clone());
        self.verify(now, id, r.key as usize, &token);
    }

    fn verify(&mut self, now: Time, owner: u64, key: usize, token: &Token) {
        self.send(
            now,
            Purpose::Verify { owner, key },
            Target::Key(key),
            Op::Verify {
                token: token.clone(),
            },
        );
    }

    // ===== time =====

    fn on_timeout(&mut self, now: Time) {
        // Commands that did not answer in time count as failed.
        for (cmd, c) in self.cmds.expire(now) {
            self.apply(now, cmd, c.into(), Outcome::Unanswered);
        }
        match &self.phase {
            Phase::Holding(g) if now >= g.deadline() => {
                let reason = if g.hold_ends_first() {
                    LostReason::MaxHold
                } else {
                    loss_reason(&g.keys)
                };
                self.end_grant(now, reason);
            }
            Phase::Holding(g) if now >= g.next_extend => self.extend(now, Round::All),
            Phase::Holding(g) if g.retry_at.is_some_and(|r| now >= r) => {
                self.extend(now, Round::Failing)
            }
            Phase::Holding(g) if g.rearm.is_some_and(|r| now >= r.at) => self.rearm(now),
            Phase::Idle {
                retry_at: Some(at), ..
            } if now >= *at && self.waiters.has_waiter() => {
                self.start_attempt(now, SetMode::Nx, None);
            }
            _ => {}
        }
        if self.refresh_at.is_some_and(|r| now >= r) {
            self.refresh_at = None;
            if !matches!(self.phase, Phase::Closing | Phase::Closed) {
                self.enqueue_due(now);
            }
        }
        // A waiter that has waited long enough takes its place now, whatever
        // the phase: the next release must find it queued.
        if let Some(f) = self.cfg.fair {
            let ripe = f
                .ripe_at_first_unsent(&self.waiters)
                .is_some_and(|at| at <= now);
            if !f.always() && ripe && !matches!(self.phase, Phase::Closing | Phase::Closed) {
                self.enqueue_due(now);
            }
        }
        if let Some(q) = self.quiet_since {
            if !self.idle_reported && now >= q + IDLE_GRACE {
                self.idle_reported = true;
                self.emit(Effect::Idle);
            }
        }
    }

    fn on_close(&mut self, now: Time) {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        if matches!(self.phase, Phase::Holding(_)) {
            self.end_grant(now, LostReason::Closed);
        }
        if let Phase::Attempting(a) = &mut self.phase {
            if let Some((id, _)) = a.request.take() {
                self.refuse(id, Refusal::Closed);
            }
            // Its keys are released, its late keys too.
            self.waiters_refuse_all(now);
            self.attempt_failed(now);
        }
        self.waiters_refuse_all(now);
        self.phase = Phase::Closing;
    }

    fn waiters_refuse_all(&mut self, now: Time) {
        let members = self.waiters.sent_places();
        self.dequeue(now, members.iter().map(|p| p.member).collect(), |_| true);
        let ids: Vec<ReqId> = self.waiters.drain().collect();
        for id in ids {
            self.refuse(id, Refusal::Closed);
        }
    }

    /// Book-keeping after every event: closing, idleness, old tokens.
    fn after(&mut self, now: Time) {
        let cmds = &self.cmds;
        if let Some(past) = self.past.get_mut() {
            past.retain(|(owner, _)| cmds.any(|p| p.owner() == Some(*owner)));
        }
        if matches!(self.phase, Phase::Closing) && self.cmds.idle() {
            self.phase = Phase::Closed;
            self.cmds.clear();
            self.past.take();
            // Release callers still waiting: their deletes went unanswered.
            for g in self.groups.take() {
                for ack in g.acks {
                    self.emit(Effect::Released {
                        ack,
                        deleted: g.deleted,
                        unconfirmed: g.unconfirmed,
                    });
                }
            }
            self.emit(Effect::Closed);
            return;
        }
        let quiet =
            matches!(self.phase, Phase::Idle { .. }) && self.waiters.is_empty() && self.cmds.idle();
        match (quiet, self.quiet_since) {
            (true, None) => {
                self.quiet_since = Some(now);
                self.idle_reported = false;
            }
            (false, Some(_)) => self.quiet_since = None,
            _ => {}
        }
    }
}

/// Why fewer than `M` keys are ours: the most common recorded cause among the
/// keys lost, `Unreachable` when keys just ran out while commands failed.
fn loss_reason(keys: &[Slot]) -> LostReason {
    let count = |want: fn(&Key) -> bool| keys.iter().filter(|s| want(&s.key)).count();
    let candidates: [(LostReason, usize); 3] = [
        (
            LostReason::Forced,
            count(|k| matches!(k, Key::Other { forced: true })),
        ),
        (
            LostReason::Overwritten,
            count(|k| matches!(k, Key::Other { forced: false })),
        ),
        (LostReason::Deleted, count(|k| matches!(k, Key::Absent))),
    ];
    let best = candidates
        .iter()
        .copied()
        .filter(|(_, n)| *n > 0)
        .max_by_key(|(_, n)| *n);
    match best {
        Some((r, _)) => r,
        None if keys.iter().any(|s| s.failing) => LostReason::Unreachable,
        None => LostReason::Expired,
    }
}
