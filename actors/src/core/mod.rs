//! The sans-IO lock core: what a lock decides, as plain state machines that
//! take events and `now` and return effects. No actors, no client, no clock,
//! no tasks: the `LockActor` shell feeds it and carries out its effects, and
//! the simulator drives many of them against a model of Valkey.
//!
//! - `lock`: one lock name's state machine ([`LockCore`]).
//! - `inflight`: the table of commands awaiting replies.
//! - `fence`: the two-phase fencing step on several instances.
//! - `terms`: what a request sets for its grant (validity, maximum hold).
//! - `waiters`: the local queue and the hand-over policy.
//! - `ops`: the commands, targets and outcomes the core speaks in.
//! - `quorum`: the majority and timing arithmetic.
//! - `time`: the core's clock type.

mod fence;
mod inflight;
mod lock;
mod ops;
pub(crate) mod quorum;
pub(crate) use quorum::Life;
mod terms;
mod time;
mod waiters;

pub(crate) use inflight::{CmdId, Route};
#[cfg(test)]
pub(crate) use lock::HoldingView;
#[cfg(test)]
pub(crate) use lock::CROWD;
pub(crate) use lock::{
    Config, Effect, Event, Fair, Fencing, GrantView, Handover, HolderId, HolderStatus, LockCore,
    Refusal,
};
#[cfg(test)]
pub(crate) use ops::Entropy;
pub(crate) use ops::{os_random, Claim, Draws, Op, OsEntropy, Outcome, Place, Queue, Target};
pub(crate) use terms::Terms;
pub(crate) use time::Time;
pub(crate) use waiters::{ReqId, RequestKind};

#[cfg(test)]
mod tests;
