//! The simulated network: one connection per (process, node), FIFO in each
//! direction (commands in order to the node, replies in order back), with
//! random delays; messages on different connections reorder freely. With
//! direct connections (`Knobs::direct`) a process has a second connection
//! to each node, whose commands race the first's.
//! Invalidations travel on a path of their own, so they can overtake or trail
//! the replies of the same connection. Plus the event queue of the run.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::core::{CmdId, Event, Op, Outcome, Target};

use super::rng::Rng;

/// The state of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    Up,
    /// Closed (by a fault or a node restart): commands fail at once.
    Down,
    /// Silently partitioned: everything sent either way is lost, nobody is
    /// told.
    Cut,
}

/// Which of a process's connections to a node a command goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// The engine's connection: its tracking is the process's, and every
    /// invalidation reaches the process on it.
    Engine,
    /// The direct connection (`crate::direct`): what it reads is tracked for
    /// it, its invalidations redirected to the engine's connection it was
    /// opened against (`Conn::redirect`).
    Direct,
}

/// A command awaiting its reply on a connection: what a connection loss
/// fails.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) name: usize,
    pub(super) inc: u32,
    pub(super) cmd: CmdId,
}

/// One (process, node) connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) link: Link,
    /// Changes when the connection closes: messages of an older epoch are
    /// lost.
    pub(super) epoch: u32,
    /// Arrival of the last command at the node, and of the last reply at the
    /// process: FIFO per direction.
    to_node: u64,
    to_proc: u64,
    /// Extra one-way delay while the link is slow.
    pub(super) slow: u64,
    pub(super) pending: Vec<Pending>,
    /// A direct connection's redirect: the epoch of the engine's connection
    /// it was opened against.
    pub(super) redirect: u32,
    /// A direct connection is being opened.
    pub(super) opening: bool,
}

impl Conn {
    pub(super) fn new() -> Conn {
        Conn {
            link: Link::Up,
            epoch: 0,
            to_node: 0,
            to_proc: 0,
            slow: 0,
            pending: Vec::new(),
            redirect: 0,
            opening: false,
        }
    }

    /// A direct connection not opened yet.
    pub(super) fn closed() -> Conn {
        Conn {
            link: Link::Down,
            ..Conn::new()
        }
    }

    /// One-way delay: mostly sub-millisecond to a few ms, sometimes tens of
    /// ms, plus the slow-link penalty.
    pub(super) fn delay(&self, rng: &mut Rng, max: u64) -> u64 {
        let d = if rng.chance(90) {
            rng.range(20_000, 2_000_000)
        } else {
            rng.range(2_000_000, max)
        };
        d + self.slow
    }

    /// When a command sent at `now` reaches the node.
    pub(super) fn arrival_at_node(&mut self, now: u64, delay: u64) -> u64 {
        self.to_node = (now + delay).max(self.to_node);
        self.to_node
    }

    /// When a reply sent at `now` reaches the process.
    pub(super) fn arrival_at_proc(&mut self, now: u64, delay: u64) -> u64 {
        self.to_proc = (now + delay).max(self.to_proc);
        self.to_proc
    }

    pub(super) fn forget(&mut self, name: usize, inc: u32, cmd: CmdId) {
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.cmd == cmd && p.name == name && p.inc == inc)
        {
            self.pending.swap_remove(i);
        }
    }
}

/// Who a message for a core is for: process, name, and the incarnation of
/// the core (a retired core's replies must not reach its successor, whose
/// command ids start again at 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dest {
    pub(super) proc: usize,
    pub(super) name: usize,
    pub(super) inc: u32,
}

/// Something that happens at an instant of real time.
#[derive(Debug, Clone)]
pub(super) enum Ev {
    /// A command reaches node `node`.
    Exec {
        to: Dest,
        node: usize,
        lane: Lane,
        epoch: u32,
        cmd: CmdId,
        target: Target,
        op: Op,
    },
    /// A reply reaches its process over connection (proc, node).
    Reply {
        to: Dest,
        node: usize,
        lane: Lane,
        epoch: u32,
        cmd: CmdId,
        outcome: Outcome,
    },
    /// An invalidation reaches process `proc` from `node`.
    Inval {
        proc: usize,
        node: usize,
        epoch: u32,
        slot: usize,
    },
    /// A hand-over's message reaches process `proc` from `node`: key `slot`
    /// is `token`'s under the claim `cmd` left, with the fencing counter
    /// `fence` the release moved, if it did. On the engine's connection of
    /// `epoch`, where its subscription is, or (`beside`) on the connection
    /// beside its direct connection of `epoch` (`listen`): that copy is in
    /// no order with anything else, and is taken only while none of the
    /// core's commands is out on the engine's connection. Either is taken
    /// only if the other was not taken first.
    Handed {
        proc: usize,
        node: usize,
        epoch: u32,
        beside: bool,
        slot: usize,
        token: crate::scripts::Token,
        cmd: CmdId,
        fence: Option<u64>,
    },
    /// A command failed at once (its connection was closed).
    Failed {
        to: Dest,
        node: usize,
        lane: Lane,
        cmd: CmdId,
    },
    /// An event from the process's own client library (a reconnect's
    /// re-check) for every current core of the process.
    Local { proc: usize, event: Event },
    /// Key `slot` written with `version` may expire on `node`.
    Expire {
        node: usize,
        slot: usize,
        version: u64,
    },
    /// A new caller of process `proc` asks for name `name`.
    Arrive { proc: usize, name: usize },
    /// Caller `req` of `proc` gives up waiting.
    Cancel { proc: usize, req: u64 },
    /// That cancellation reaches the core (a mailbox hop later).
    CancelCore { proc: usize, req: u64 },
    /// Caller `req` of `proc` releases; `ack` waits for the deletes.
    Release { proc: usize, req: u64, ack: bool },
    /// The fault generator's next move.
    Fault,
    /// Connection (proc, node) comes back (after a close or a partition).
    Reconnect { proc: usize, node: usize },
    /// The slow period of a connection ends.
    Fast { proc: usize, node: usize },
    /// Node `node` comes back up, empty.
    NodeUp { node: usize },
    /// Process `proc`'s direct connection to `node` is open (if its engine's
    /// connection still is).
    DirectOpen { proc: usize, node: usize },
}

#[derive(Debug)]
struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Earliest first, then in the order scheduled: a min-heap on (at, seq).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The run's pending events, ordered by time, ties in scheduling order.
#[derive(Debug, Default)]
pub(super) struct Queue {
    heap: BinaryHeap<Item>,
    seq: u64,
}

impl Queue {
    pub(super) fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    pub(super) fn peek_at(&self) -> Option<u64> {
        self.heap.peek().map(|i| i.at)
    }

    pub(super) fn pop(&mut self) -> Option<(u64, Ev)> {
        self.heap.pop().map(|i| (i.at, i.ev))
    }
}
