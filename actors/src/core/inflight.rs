//! The in-flight command table: every command a lock core has sent and not
//! yet heard back about, with what it was for, when it was sent, and when it
//! is overdue.
//!
//! This replaces reply counters: a reply is matched to its command by id, so
//! a late reply can never be counted against the wrong round, and "is anything
//! of kind X still out" is a query, never a number to keep in step. A command
//! whose reply does not come by its deadline (its `NodeActor` was killed with
//! the command queued, say) is handed back once as overdue so the core can
//! treat it as failed. Acquisitions and extensions stay in the table a while
//! longer: a reply that comes after all may still say a key is ours, and such
//! a key must be kept or released, never forgotten.

use std::time::Duration;

use super::quorum::Life;
use super::time::Time;
use crate::few::Room;

/// A command's id, unique per lock core and increasing in the order sent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub(crate) struct CmdId(pub(crate) u64);

/// What a command was sent for: the id of the attempt or grant it serves,
/// and the key or node it targets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Purpose {
    /// Acquisition of key `key` by attempt `attempt`, writing `life`.
    Acquire {
        attempt: u64,
        key: usize,
        life: Life,
    },
    /// Extension (or retake) of key `key` of grant `grant`, writing `life`.
    Extend { grant: u64, key: usize, life: Life },
    /// Read-only check of key `key` of attempt or grant `owner`.
    Verify { owner: u64, key: usize },
    /// Compare-and-delete of key `key` under the token of attempt or grant
    /// `of`; `group` ties it to the end of a grant whose release callers
    /// wait for (none for clean-ups). It serves no attempt or grant still
    /// going: `owner` is `None` for it.
    Release {
        key: usize,
        of: u64,
        group: Option<u64>,
    },
    /// An update of key `key`'s fair queue; nothing waits for it.
    Queue { key: usize },
    /// A claim on key `key` taken back; nothing waits for it.
    Unclaim { key: usize },
    /// Fencing counter read on node `node`, round `round` of attempt `attempt`.
    FenceRead {
        attempt: u64,
        round: u32,
        node: usize,
    },
    /// Fencing counter write on node `node`, round `round` of attempt `attempt`.
    FenceWrite {
        attempt: u64,
        round: u32,
        node: usize,
    },
}

impl Purpose {
    /// The attempt or grant a command serves (none for a clean-up delete).
    pub(crate) fn owner(&self) -> Option<u64> {
        match *self {
            Purpose::Acquire { attempt, .. }
            | Purpose::FenceRead { attempt, .. }
            | Purpose::FenceWrite { attempt, .. } => Some(attempt),
            Purpose::Extend { grant, .. } => Some(grant),
            Purpose::Verify { owner, .. } => Some(owner),
            Purpose::Release { .. } | Purpose::Queue { .. } | Purpose::Unclaim { .. } => None,
        }
    }

    /// The key a command reads or writes; `None` for the fencing counter's
    /// commands, which target a node.
    pub(crate) fn key(&self) -> Option<usize> {
        match *self {
            Purpose::Acquire { key, .. }
            | Purpose::Extend { key, .. }
            | Purpose::Verify { key, .. }
            | Purpose::Release { key, .. }
            | Purpose::Queue { key }
            | Purpose::Unclaim { key } => Some(key),
            Purpose::FenceRead { .. } | Purpose::FenceWrite { .. } => None,
        }
    }

    /// What a write sets on its key; `None` for commands that write no
    /// key of ours (their late replies cannot report one).
    pub(crate) fn life(&self) -> Option<Life> {
        match *self {
            Purpose::Acquire { life, .. } | Purpose::Extend { life, .. } => Some(life),
            _ => None,
        }
    }
}

/// The connection a command went on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum Lane {
    /// The engine's connection of its node: what the shell is not told
    /// otherwise.
    #[default]
    Engine,
    /// A caller's direct connection, by its generation (each one opened has
    /// its own, and fred never reconnects one: one generation, one TCP
    /// connection, whose commands the server runs in the order sent).
    Direct(u64),
    /// A direct connection, written later by a task of its own (a waiter's
    /// retry made on the engine's thread): in no known order with any other
    /// command, those of its own connection included.
    Unordered,
}

/// Which connection a command may take (`InFlight::route`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Route {
    /// The engine's only.
    Engine,
    /// The caller's direct connection, whichever is open, or the engine's.
    Direct,
    /// The direct connection of this generation only, or the engine's:
    /// writes of its key out went there, and it must not overtake them.
    Behind(u64),
}

/// A command in the table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cmd {
    pub(crate) purpose: Purpose,
    /// When it was handed to the node: every expiry estimate starts here.
    pub(crate) sent: Time,
    /// The connection it went on.
    lane: Lane,
    /// An acquisition with a delete of its own token sent right behind it
    /// on its direct connection: whatever its reply says, the key is not
    /// left ours.
    followed: bool,
    /// Its reply is overdue after this.
    deadline: Time,
    /// Past its deadline: already reported as failed, kept until `forget_at`
    /// only so that a late reply is routed.
    overdue: Option<Time>,
}

/// The table of one lock core: a vector in id order (ids are issued in
/// increasing order, so a new command goes at the end). It holds a handful
/// of commands at a time (a key's, an extension's): a search is cheaper than
/// a tree, and a held lock keeps a few hundred bytes for it, not a tree node.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// One word while it has no room (a held lock between extensions).
    cmds: Room<Vec<(CmdId, Cmd)>>,
    next: u64,
}

/// An answered command: what it was for, and when it was sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answered {
    pub(crate) purpose: Purpose,
    pub(crate) sent: Time,
    /// A delete of its token went right behind it (`Cmd::followed`).
    pub(crate) followed: bool,
}

impl From<Cmd> for Answered {
    fn from(c: Cmd) -> Self {
        Answered {
            purpose: c.purpose,
            sent: c.sent,
            followed: c.followed,
        }
    }
}

impl InFlight {
    /// Records a command sent at `now`, overdue after `bound`. An overdue
    /// acquisition or extension is remembered for as long as the key it
    /// may have written lives.
    pub(crate) fn send(&mut self, purpose: Purpose, now: Time, bound: Duration) -> CmdId {
        self.next += 1;
        let id = CmdId(self.next);
        // Room for one to start with: a lock of one key rarely has more out,
        // and a lock keeps whatever room its table ever had until it
        // settles (`trim`).
        self.cmds.push((
            id,
            Cmd {
                purpose,
                sent: now,
                lane: Lane::Engine,
                followed: false,
                deadline: now + bound,
                overdue: None,
            },
        ));
        id
    }

    /// Takes the command a reply answers; `None` for an unknown id (answered
    /// already, or forgotten).
    pub(crate) fn answer(&mut self, id: CmdId) -> Option<Answered> {
        let cmds = self.cmds.get_mut()?;
        let pos = cmds.iter().position(|(c, _)| *c == id)?;
        let (_, c) = cmds.remove(pos);
        Some(c.into())
    }

    /// Commands whose deadline passed by `now`, each reported once; forgets
    /// overdue commands whose retention ended.
    pub(crate) fn expire(&mut self, now: Time) -> Vec<(CmdId, Cmd)> {
        let mut due = Vec::new();
        let Some(cmds) = self.cmds.get_mut() else {
            return due;
        };
        cmds.retain_mut(|(id, c)| match c.overdue {
            Some(forget_at) => forget_at > now,
            None if c.deadline <= now => {
                due.push((*id, *c));
                match c.purpose.life() {
                    Some(life) => {
                        c.overdue = Some(c.sent + life.ttl);
                        c.sent + life.ttl > now
                    }
                    None => false,
                }
            }
            None => true,
        });
        due
    }

    /// The earliest instant `expire` has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.cmds
            .iter()
            .map(|(_, c)| c.overdue.unwrap_or(c.deadline))
            .min()
    }

    /// True if a command not yet overdue matches `f`.
    pub(crate) fn any_live(&self, f: impl Fn(&Purpose) -> bool) -> bool {
        self.cmds
            .iter()
            .any(|(_, c)| c.overdue.is_none() && f(&c.purpose))
    }

    /// True if any command, live or overdue, matches `f`.
    pub(crate) fn any(&self, f: impl Fn(&Purpose) -> bool) -> bool {
        self.cmds.iter().any(|(_, c)| f(&c.purpose))
    }

    /// What command `id` was sent for, and when, if it is in the table.
    pub(crate) fn sent_of(&self, id: CmdId) -> Option<(Purpose, Time)> {
        self.cmds
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, c)| (c.purpose, c.sent))
    }

    /// What command `id` was sent for, if it is in the table.
    pub(crate) fn purpose_of(&self, id: CmdId) -> Option<Purpose> {
        self.cmds
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, c)| c.purpose)
    }

    /// Which connection command `id` may take, going by the other commands
    /// of its key out, live or overdue. Our own deletes and read-only checks
    /// are in the way of nothing: deletes commute with each other (each
    /// compares its own token) and go before an acquisition sent right
    /// behind them (see `lock::Chain`), and a read changes nothing whatever
    /// its order. Acquisitions that went on one direct connection keep it
    /// behind them there (the server runs one connection's commands in
    /// order). Any other write out keeps it on the engine's connection;
    /// so does a command with no key (the fencing counter's) or unknown.
    pub(crate) fn route(&self, id: CmdId) -> Route {
        let Some(key) = self.purpose_of(id).and_then(|p| p.key()) else {
            return Route::Engine;
        };
        let mut route = Route::Direct;
        for (c, cmd) in self.cmds.iter() {
            if *c == id || cmd.purpose.key() != Some(key) {
                continue;
            }
            match (cmd.purpose, cmd.lane, route) {
                (Purpose::Verify { .. } | Purpose::Release { .. }, _, _) => {}
                (Purpose::Acquire { .. }, Lane::Direct(g), Route::Direct) => {
                    route = Route::Behind(g)
                }
                (Purpose::Acquire { .. }, Lane::Direct(g), Route::Behind(h)) if g == h => {}
                _ => return Route::Engine,
            }
        }
        route
    }

    /// Records that command `id` went on direct connection `generation`. A
    /// delete that went behind its own token's acquisition there marks that
    /// acquisition `followed`.
    pub(crate) fn went_direct(&mut self, id: CmdId, generation: u64) {
        let lane = Lane::Direct(generation);
        let Some(purpose) = self
            .cmds
            .iter_mut()
            .find(|(c, _)| *c == id)
            .map(|(_, cmd)| {
                cmd.lane = lane;
                cmd.purpose
            })
        else {
            return;
        };
        let Purpose::Release { key, of, .. } = purpose else {
            return;
        };
        for (c, cmd) in self.cmds.iter_mut() {
            if *c < id
                && cmd.lane == lane
                && matches!(cmd.purpose, Purpose::Acquire { attempt, key: k, .. } if attempt == of && k == key)
            {
                cmd.followed = true;
            }
        }
    }

    /// Records that command `id` went on a direct connection in no known
    /// order (`Lane::Unordered`).
    pub(crate) fn went_unordered(&mut self, id: CmdId) {
        if let Some((_, cmd)) = self.cmds.iter_mut().find(|(c, _)| *c == id) {
            cmd.lane = Lane::Unordered;
        }
    }

    /// The acquisitions of key `key` out, live or overdue, on another
    /// connection than the engine's: each one's id and attempt. They may
    /// land after anything the engine's connection carries from now on.
    fn acquisitions_elsewhere(&self, key: usize) -> impl Iterator<Item = (CmdId, u64)> + '_ {
        self.cmds.iter().filter_map(move |(id, c)| match c.purpose {
            Purpose::Acquire {
                key: k, attempt, ..
            } if k == key && c.lane != Lane::Engine => Some((*id, attempt)),
            _ => None,
        })
    }

    /// True if attempt `attempt` has an acquisition of key `key` out on
    /// another connection than the engine's (see `LockCore::extend`).
    /// Another attempt's, under another token, cannot write a key that
    /// holds ours.
    pub(crate) fn acquiring_elsewhere(&self, key: usize, attempt: u64) -> bool {
        self.acquisitions_elsewhere(key).any(|(_, a)| a == attempt)
    }

    /// The newest acquisition of key `key` out on another connection than
    /// the engine's (see `LockCore::take_key`).
    pub(crate) fn newest_elsewhere(&self, key: usize) -> Option<CmdId> {
        self.acquisitions_elsewhere(key).map(|(id, _)| id).max()
    }

    /// True if no command is out on the engine's connection, live or
    /// overdue: a message that connection carries then has none of its
    /// replies to come before it (see `LockCore::engine_quiet`).
    pub(crate) fn none_on_engine(&self) -> bool {
        self.cmds.iter().all(|(_, c)| c.lane != Lane::Engine)
    }

    /// True if no command is waiting for its reply (overdue ones aside).
    pub(crate) fn idle(&self) -> bool {
        self.cmds.iter().all(|(_, c)| c.overdue.is_some())
    }

    /// Gives back the table's room if nothing is in it, live or overdue.
    pub(crate) fn trim(&mut self) {
        self.cmds.trim();
    }

    /// Forgets everything (the core is closed).
    pub(crate) fn clear(&mut self) {
        self.cmds.take();
    }

    /// Whether the table has room.
    #[cfg(test)]
    pub(crate) fn has_room(&self) -> bool {
        self.cmds.has_room()
    }

    /// Commands remembered, live or overdue.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cmds.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Time {
        Time::from_nanos(ms * 1_000_000)
    }

    const MS: Duration = Duration::from_millis(1);

    /// Key 0 of attempt 1, written with a TTL of `ttl_ms`.
    fn acquire(ttl_ms: u32) -> Purpose {
        Purpose::Acquire {
            attempt: 1,
            key: 0,
            life: Life::of(ttl_ms * MS),
        }
    }

    /// A delete of key 0 under the token of attempt 1.
    fn delete(group: Option<u64>) -> Purpose {
        Purpose::Release {
            key: 0,
            of: 1,
            group,
        }
    }

    #[test]
    fn replies_match_their_command_once() {
        let mut t = InFlight::default();
        let a = t.send(acquire(100), at(0), 10 * MS);
        let b = t.send(Purpose::Verify { owner: 1, key: 0 }, at(1), 10 * MS);
        assert!(a < b, "ids increase in the order sent");
        let got = t.answer(b).unwrap();
        assert_eq!(got.purpose, Purpose::Verify { owner: 1, key: 0 });
        assert_eq!(got.sent, at(1));
        assert!(
            t.answer(b).is_none(),
            "a duplicate reply is not matched again"
        );
        assert!(t.answer(CmdId(99)).is_none());
        assert!(!t.idle());
        t.answer(a).unwrap();
        assert!(t.idle());
    }

    #[test]
    fn overdue_commands_are_reported_once_and_kept_only_if_they_may_own_a_key() {
        let mut t = InFlight::default();
        let acq = t.send(acquire(100), at(0), 10 * MS);
        let rel = t.send(
            Purpose::Release {
                key: 1,
                of: 1,
                group: None,
            },
            at(0),
            10 * MS,
        );
        let later = t.send(
            Purpose::Extend {
                grant: 1,
                key: 2,
                life: Life::of(100 * MS),
            },
            at(5),
            10 * MS,
        );
        assert_eq!(t.next_deadline(), Some(at(10)));
        assert!(t.expire(at(9)).is_empty());
        let due: Vec<CmdId> = t.expire(at(10)).iter().map(|d| d.0).collect();
        assert_eq!(due, vec![acq, rel]);
        assert!(t.expire(at(11)).is_empty(), "reported once");
        // The release is gone; the acquisition is still routed if it answers.
        assert!(t.answer(rel).is_none());
        assert!(!t.any_live(|p| matches!(p, Purpose::Acquire { .. })));
        assert!(t.any_live(|p| matches!(p, Purpose::Extend { .. })));
        assert_eq!(t.answer(acq).unwrap().sent, at(0));
        t.answer(later).unwrap();
        assert!(t.idle());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_write_goes_alone_but_for_checks_and_our_own_deletes() {
        let mut t = InFlight::default();
        let acq = t.send(acquire(100), at(0), 10 * MS);
        assert_eq!(t.route(acq), Route::Direct);
        // Another key, or the fencing counter: not in the way.
        t.send(Purpose::Verify { owner: 1, key: 1 }, at(0), 10 * MS);
        let fence = t.send(
            Purpose::FenceRead {
                attempt: 1,
                round: 0,
                node: 0,
            },
            at(0),
            10 * MS,
        );
        assert_eq!(t.route(acq), Route::Direct);
        assert_eq!(
            t.route(fence),
            Route::Engine,
            "the counter's commands have no key"
        );
        // A check of the same key is a read: in the way of nothing.
        let check = t.send(Purpose::Verify { owner: 1, key: 0 }, at(1), 10 * MS);
        assert_eq!(t.route(acq), Route::Direct);
        t.answer(check).unwrap();
        // Another write of the same key is, overdue too: it may still land.
        assert_eq!(t.expire(at(10)).len(), 3);
        let release = |of, group| Purpose::Release { key: 0, of, group };
        let rel = t.send(release(1, None), at(11), 10 * MS);
        assert_eq!(t.route(rel), Route::Engine);
        t.answer(acq).unwrap();
        assert_eq!(t.route(rel), Route::Direct);
        // Our deletes are not: another delete, or an acquisition right
        // behind them.
        let rel2 = t.send(release(1, Some(2)), at(12), 10 * MS);
        let next = t.send(acquire(100), at(12), 10 * MS);
        assert_eq!(t.route(next), Route::Direct);
        assert_eq!(t.route(rel2), Route::Engine, "the acquisition is out");
        t.answer(next).unwrap();
        assert_eq!(t.route(rel2), Route::Direct);
        assert_eq!(t.route(CmdId(99)), Route::Engine, "unknown");
    }

    /// What `listen` asks before it takes a hand-over's message: a command
    /// on the engine's connection, live or overdue, makes it wait for that
    /// connection's copy; one on another connection does not.
    #[test]
    fn none_on_engine_counts_only_the_engines_connection() {
        let mut t = InFlight::default();
        assert!(t.none_on_engine(), "nothing out");
        let direct = t.send(acquire(100), at(0), 10 * MS);
        assert!(
            !t.none_on_engine(),
            "sent: the engine's until told otherwise"
        );
        t.went_direct(direct, 7);
        assert!(t.none_on_engine());
        let retry = t.send(acquire(100), at(1), 10 * MS);
        t.went_unordered(retry);
        assert!(
            t.none_on_engine(),
            "a retry written later by a task of its own"
        );
        let check = t.send(acquire(100), at(2), 10 * MS);
        assert!(!t.none_on_engine());
        // Overdue, it may still answer on that connection.
        assert_eq!(t.expire(at(2) + 11 * MS).len(), 3);
        assert!(!t.none_on_engine(), "overdue on the engine's connection");
        t.answer(check).unwrap();
        assert!(t.none_on_engine());
    }

    #[test]
    fn writes_go_behind_acquisitions_on_the_direct_connection_they_took() {
        let mut t = InFlight::default();
        let acq = t.send(acquire(100), at(0), 10 * MS);
        t.went_direct(acq, 7);
        // A delete of its token, and the next acquisition behind that:
        // both behind it, on connection 7 only.
        let rel = t.send(delete(Some(1)), at(1), 10 * MS);
        assert_eq!(t.route(rel), Route::Behind(7));
        let next = t.send(
            Purpose::Acquire {
                attempt: 2,
                key: 0,
                life: Life::of(100 * MS),
            },
            at(1),
            10 * MS,
        );
        assert_eq!(t.route(next), Route::Behind(7));
        // The delete went there: the acquisition of its token is followed
        // (not a later one of another token).
        t.went_direct(rel, 7);
        t.went_direct(next, 7);
        let other = t.send(acquire(100), at(2), 10 * MS);
        assert_eq!(t.route(other), Route::Behind(7));
        assert!(t.answer(acq).unwrap().followed);
        assert!(!t.answer(next).unwrap().followed);
        // Acquisitions out on two direct connections (one replaced): no
        // connection keeps the order of both.
        let on_8 = t.send(acquire(100), at(3), 10 * MS);
        t.went_direct(other, 7);
        t.went_direct(on_8, 8);
        let last = t.send(acquire(100), at(3), 10 * MS);
        assert_eq!(t.route(last), Route::Engine);
        // Nor does an acquisition that took the engine's, or an extension.
        t.answer(other).unwrap();
        t.answer(on_8).unwrap();
        let engine = t.send(acquire(100), at(4), 10 * MS);
        assert_eq!(t.route(last), Route::Engine);
        t.answer(engine).unwrap();
        assert_eq!(t.route(last), Route::Direct, "the delete is still out");
        t.send(
            Purpose::Extend {
                grant: 1,
                key: 0,
                life: Life::of(100 * MS),
            },
            at(5),
            10 * MS,
        );
        assert_eq!(t.route(last), Route::Engine);
    }

    #[test]
    fn a_delete_on_another_connection_follows_nothing() {
        let mut t = InFlight::default();
        let acq = t.send(acquire(100), at(0), 10 * MS);
        t.went_direct(acq, 7);
        let rel = t.send(delete(None), at(1), 10 * MS);
        // On the engine's connection (not recorded), or on connection 8.
        let rel8 = t.send(delete(None), at(1), 10 * MS);
        t.went_direct(rel8, 8);
        assert!(!t.answer(acq).unwrap().followed);
        t.answer(rel).unwrap();
    }

    #[test]
    fn overdue_acquisitions_are_forgotten_after_their_retention() {
        let mut t = InFlight::default();
        t.send(acquire(50), at(0), 10 * MS);
        assert_eq!(t.expire(at(10)).len(), 1);
        assert!(t.idle(), "an overdue command does not keep the core busy");
        assert_eq!(t.next_deadline(), Some(at(50)));
        assert!(t.expire(at(50)).is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_deadline(), None);
    }
}
