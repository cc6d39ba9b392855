//! A model of the Valkey nodes: keys with a value and an absolute expiry on
//! the node's clock (which is real time), the scripts of `crate::scripts` with
//! their exact semantics, and default-mode client tracking per connection.
//!
//! Keys are numbered per node by slot: lock key `k` of name `n` is slot
//! `n * total + k` (each node only ever sees the slots placed on it). The
//! fencing counters are not tracked: nothing reads them through the cache.

use crate::core::{Claim, CmdId, Op, Outcome, Place, Queue};
use crate::scripts::{KeyState, SetMode, Token};

use super::MS;

/// The servers' wall clock at real time 0, µs since the Unix epoch (a
/// process's arrival times are this as its own clock shows it).
pub(super) const WALL_BASE_US: u64 = 2_000_000_000_000;

/// The servers' wall clock at real time `now` (ns), µs since the Unix epoch.
fn wall_us(now: u64) -> u64 {
    WALL_BASE_US + now / 1_000
}

/// One waiter in a key's fair queue (`FAIR_LUA`'s two sorted sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queued {
    since_us: u64,
    member: u64,
    /// Real time its place lapses.
    deadline: u64,
}

/// One key's fair queue: `FAIR_LUA`'s `{key}:q` and `{key}:qd` as one list,
/// `{key}:qt`, and `{key}:qs`.
#[derive(Debug, Clone, Default)]
struct FairQueue {
    /// In order (arrival, then member).
    places: Vec<Queued>,
    /// When the queue last changed (real ns), while it has places.
    changed: Option<u64>,
    /// When its three keys expire (real ns): half a place's life after the
    /// last deadline as of the last change. Only a stall longer than a
    /// place's life reaches it.
    expires: u64,
    /// `{key}:qs`: until when (real ns) a rebuild of the lost queue is under
    /// way; a key of its own, which the three keys' expiry leaves.
    rebuild_until: u64,
}

/// One key: its value and when it expires (real nanoseconds).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) value: String,
    pub(super) expiry: u64,
    /// Changes on every write, so a stale expiry event is recognised.
    version: u64,
}

/// An invalidation for connection `proc` about `slot` (a tracking index: see
/// `Node::tracked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Inval {
    pub(super) proc: usize,
    pub(super) slot: usize,
}

/// A claim on a key (an entry of `ACQUIRE_LUA`'s hash `{key}:c`):
/// its process, the claimed token, when the key handed under it expires
/// (real ns), the command that left it, and the waiter's arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClaimEntry {
    proc: usize,
    token: String,
    lapse: u64,
    cmd: CmdId,
    arrival_us: u64,
}

/// A hand-over's message (`RELEASE_HANDOVER_LUA`'s `PUBLISH`): to process
/// `proc`, key `slot` is now `token`'s under the claim `cmd` left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HandedMsg {
    pub(super) proc: usize,
    pub(super) slot: usize,
    pub(super) token: String,
    pub(super) cmd: CmdId,
    pub(super) lapse: u64,
    /// The fencing counter the release moved, if it did.
    pub(super) fence: Option<u64>,
}

/// What a command did besides its reply: invalidations to send, hand-overs
/// to tell, and expiry events to schedule (slot, version, at).
#[derive(Debug, Default)]
pub(super) struct Out {
    pub(super) invals: Vec<Inval>,
    pub(super) handed: Vec<HandedMsg>,
    pub(super) expiries: Vec<(usize, u64, u64)>,
}

/// A key lost in a restart, remembered with the expiry it had: for the
/// in-model restart (down for at least the validity) it still counts as alive
/// until then, since nobody can take it over before.
#[derive(Debug, Clone)]
pub(super) struct Ghost {
    pub(super) slot: usize,
    pub(super) value: String,
    pub(super) expiry: u64,
}

/// One Valkey node.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) up: bool,
    pub(super) keys: Vec<Option<Entry>>,
    /// The fencing counter of each name.
    pub(super) fences: Vec<u64>,
    /// Per connection (a process's engine connection at its index, its
    /// direct connection at `procs` + its index): bit `slot` set while
    /// tracked.
    tracked: Vec<u64>,
    pub(super) ghosts: Vec<Ghost>,
    /// Each slot's fair queue.
    queues: Vec<FairQueue>,
    /// Each slot's claims, in the order they were made.
    claims: Vec<Vec<ClaimEntry>>,
    /// Releases hand a key with a live claim to the oldest claimant
    /// (`RELEASE_HANDOVER_LUA`).
    handover: bool,
    /// Per process: its engine connection's subscription to its hand-over
    /// channel stands (the server has not seen that connection close). A
    /// release passes over the claims of a process nobody hears for.
    listening: Vec<bool>,
    /// Per process: the subscription beside its direct connection
    /// (`listen`) stands. Either one makes a release hand the key over.
    beside: Vec<bool>,
    /// Claims a release passed over, their process not listening.
    pub(super) passed_over: u64,
    version: u64,
    /// `CLIENT TRACKING ... NOLOOP`: a connection's own writes do not
    /// invalidate it (its tracking entry is still forgotten).
    noloop: bool,
    tracking: bool,
}

/// Tokens of `force_lock` start with `F` (see `Token::from_bytes`).
pub(super) fn is_forced(value: &str) -> bool {
    matches!(
        Token::owner_state(value.as_bytes()),
        KeyState::Other { forced: true, .. }
    )
}

impl Node {
    pub(super) fn new(
        slots: usize,
        names: usize,
        procs: usize,
        noloop: bool,
        tracking: bool,
        handover: bool,
    ) -> Node {
        Node {
            up: true,
            keys: vec![None; slots],
            fences: vec![0; names],
            tracked: vec![0; 2 * procs],
            ghosts: Vec::new(),
            queues: vec![FairQueue::default(); slots],
            claims: vec![Vec::new(); slots],
            handover,
            listening: vec![true; procs],
            beside: vec![false; procs],
            passed_over: 0,
            version: 0,
            noloop,
            tracking,
        }
    }

    /// The live entry of `slot` at `now`, if any (without side effects).
    pub(super) fn peek(&self, slot: usize, now: u64) -> Option<&Entry> {
        self.keys[slot].as_ref().filter(|e| e.expiry > now)
    }

    fn track(&mut self, conn: usize, slot: usize) {
        if self.tracking {
            self.tracked[conn] |= 1 << slot;
        }
    }

    /// `slot` changed: every connection tracking it gets one invalidation
    /// (the writer too, unless NOLOOP), and all forget it.
    fn changed(&mut self, slot: usize, writer: Option<usize>, out: &mut Out) {
        let bit = 1u64 << slot;
        for proc in 0..self.tracked.len() {
            if self.tracked[proc] & bit == 0 {
                continue;
            }
            self.tracked[proc] &= !bit;
            if self.noloop && writer == Some(proc) {
                continue;
            }
            out.invals.push(Inval { proc, slot });
        }
    }

    /// Lazy expiry on access, as the server does.
    fn get(&mut self, now: u64, slot: usize, out: &mut Out) -> Option<String> {
        if self.keys[slot].as_ref().is_some_and(|e| e.expiry <= now) {
            self.keys[slot] = None;
            self.changed(slot, None, out);
        }
        self.keys[slot].as_ref().map(|e| e.value.clone())
    }

    fn write(&mut self, slot: usize, value: String, expiry: u64, conn: usize, out: &mut Out) {
        self.version += 1;
        self.keys[slot] = Some(Entry {
            value,
            expiry,
            version: self.version,
        });
        out.expiries.push((slot, self.version, expiry));
        self.changed(slot, Some(conn), out);
    }

    /// Active expiry: the key set with `version` expires now.
    pub(super) fn expire(&mut self, now: u64, slot: usize, version: u64, out: &mut Out) {
        let due = self.keys[slot]
            .as_ref()
            .is_some_and(|e| e.version == version && e.expiry <= now);
        if due {
            self.keys[slot] = None;
            self.changed(slot, None, out);
        }
    }

    /// One call of `FAIR_LUA` on `slot`'s queue, `step` its work: first the
    /// catch-up on a stall (the deadlines move forward by the part of the
    /// time since the queue last changed beyond half a place's `life`),
    /// then `step`; when the queue changed, it records the time.
    fn in_queue<R>(
        &mut self,
        now: u64,
        slot: usize,
        life: std::time::Duration,
        step: impl FnOnce(&mut Node) -> R,
    ) -> R {
        let gap = (life.as_millis() as u64 / 2) * MS;
        let q = &mut self.queues[slot];
        if q.changed.is_some() && now >= q.expires {
            *q = FairQueue {
                rebuild_until: q.rebuild_until,
                ..FairQueue::default()
            };
        }
        let mut touched = false;
        if let Some(late) = q.changed.and_then(|c| now.checked_sub(c + gap)) {
            if late > 0 {
                q.places.iter_mut().for_each(|e| e.deadline += late);
                touched = true;
            }
        }
        let before = q.places.clone();
        let r = step(self);
        let q = &mut self.queues[slot];
        if touched || q.places != before {
            q.changed = (!q.places.is_empty()).then_some(now);
            q.expires = q.places.iter().map(|e| e.deadline).max().unwrap_or(0) + gap;
        }
        r
    }

    /// `FAIR_LUA`'s first step after the catch-up: drop lapsed places.
    fn prune(&mut self, now: u64, slot: usize) {
        self.queues[slot].places.retain(|e| e.deadline > now);
    }

    /// Places or refreshes `places`, all but `skip`.
    fn place(
        &mut self,
        now: u64,
        slot: usize,
        places: &[Place],
        life: std::time::Duration,
        skip: Option<u64>,
    ) {
        let life = life.as_nanos() as u64;
        let q = &mut self.queues[slot].places;
        for p in places.iter().filter(|p| Some(p.member) != skip) {
            let deadline = now + life;
            match q.iter_mut().find(|e| e.member == p.member) {
                Some(e) => e.deadline = deadline,
                None => q.push(Queued {
                    since_us: p.since_us.max(wall_us(now).saturating_sub(600_000_000)),
                    member: p.member,
                    deadline,
                }),
            }
        }
        q.sort_by_key(|e| (e.since_us, e.member));
    }

    /// The waiter at the head of `slot`'s queue and when its place lapses.
    fn head(&self, slot: usize) -> Option<(u64, u64)> {
        self.queues[slot]
            .places
            .first()
            .map(|e| (e.member, e.deadline))
    }

    fn dequeue(&mut self, slot: usize, members: &[u64]) {
        self.queues[slot]
            .places
            .retain(|e| !members.contains(&e.member));
    }

    /// `ACQUIRE_LUA` on one key. Returns the key's state and whether it was
    /// freshly set (for the in-script fencing counter).
    #[allow(clippy::too_many_arguments)]
    fn acquire_key(
        &mut self,
        now: u64,
        conn: usize,
        slot: usize,
        token: &str,
        mode: SetMode,
        ttl: u64,
        queue: Option<&Queue>,
        claim: Option<(Claim, CmdId)>,
        out: &mut Out,
    ) -> (KeyState, bool) {
        if queue.is_some() {
            self.prune(now, slot);
        }
        // The places: all of them while the key stays out of reach; when it
        // is taken, all but the candidate's (which stays if it was there).
        let place = |node: &mut Node, taken: bool| {
            if let Some(q) = queue {
                let skip = if taken { q.candidate } else { None };
                node.place(now, slot, &q.places, q.life, skip);
            }
        };
        let cur = self.get(now, slot, out);
        self.track(conn, slot);
        let ours = KeyState::Ours {
            pttl_ms: None,
            fence: None,
        };
        // A claim is `NX`'s, and for a key it does not take.
        let claim = claim.filter(|_| mode == SetMode::Nx && queue.is_none());
        let proc = conn % (self.tracked.len() / 2);
        let unclaim = |node: &mut Node| {
            if claim.is_some_and(|(c, _)| c.before) {
                node.claims[slot].retain(|c| c.proc != proc);
            }
        };
        match cur {
            Some(v) if v == token => {
                place(self, true);
                unclaim(self);
                // PEXPIRE: a write, then the script's GET re-arms tracking.
                self.write(slot, v, now + ttl, conn, out);
                self.track(conn, slot);
                // Found ours by a run that claimed before: handed to it, so
                // fresh for the fencing counter.
                (ours, claim.is_some_and(|(c, _)| c.before))
            }
            Some(v) if mode != SetMode::Force => {
                place(self, false);
                if let Some((c, cmd)) = claim {
                    let claims = &mut self.claims[slot];
                    let entry = ClaimEntry {
                        proc,
                        token: token.to_owned(),
                        lapse: now + ttl,
                        cmd,
                        arrival_us: c.arrival_us,
                    };
                    match claims.iter_mut().find(|e| e.proc == proc) {
                        Some(e) => *e = entry,
                        None => claims.push(entry),
                    }
                }
                (Token::owner_state(v.as_bytes()), false)
            }
            None if mode == SetMode::Xx => {
                place(self, false);
                (KeyState::Absent, false)
            }
            _ => {
                if let Some(q) = queue.filter(|_| mode != SetMode::Force) {
                    // `R`: the candidate's place is gone, so was the queue.
                    let gone = q
                        .candidate
                        .is_some_and(|c| !self.queues[slot].places.iter().any(|e| e.member == c));
                    if q.rejoin && gone {
                        let rebuilding = self.queues[slot].rebuild_until.saturating_sub(now);
                        let lost = self.queues[slot].places.is_empty();
                        place(self, false);
                        if rebuilding > 0 {
                            let head_ms = rebuilding / MS;
                            return (KeyState::Queued { head_ms }, false);
                        }
                        if lost {
                            self.queues[slot].rebuild_until = now + q.settle.as_nanos() as u64;
                            let head_ms = q.settle.as_millis() as u64;
                            return (KeyState::Queued { head_ms }, false);
                        }
                    }
                    if let Some((head, until)) = self.head(slot) {
                        let mine = Some(head) == q.candidate
                            || q.places.iter().any(|p| p.member == head)
                            || q.members.contains(&head);
                        if !mine {
                            place(self, false);
                            let head_ms = until.saturating_sub(now) / MS;
                            return (KeyState::Queued { head_ms }, false);
                        }
                    }
                }
                place(self, true);
                unclaim(self);
                self.write(slot, token.to_owned(), now + ttl, conn, out);
                self.track(conn, slot);
                (ours, true)
            }
        }
    }

    /// Runs `op` for connection `conn` on `slot` (a lock key) or the fencing
    /// counter of `name`. `ttl` is what a write sets, in nanoseconds.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn exec(
        &mut self,
        now: u64,
        conn: usize,
        name: usize,
        slot: usize,
        op: &Op,
        ttl: u64,
        cmd: CmdId,
        out: &mut Out,
    ) -> Outcome {
        match op {
            Op::Acquire {
                token,
                mode,
                fence,
                queue,
                claim,
                ..
            } => {
                let queue = queue.as_deref();
                let claim = claim.map(|c| (c, cmd));
                let mut acquire = |node: &mut Node| {
                    node.acquire_key(
                        now,
                        conn,
                        slot,
                        token.as_str(),
                        *mode,
                        ttl,
                        queue,
                        claim,
                        out,
                    )
                };
                let (state, fresh) = match queue {
                    Some(q) => self.in_queue(now, slot, q.life, acquire),
                    None => acquire(self),
                };
                match state {
                    KeyState::Ours { pttl_ms, .. } if *fence => {
                        if fresh {
                            self.fences[name] += 1;
                        }
                        Outcome::Key(KeyState::Ours {
                            pttl_ms,
                            fence: Some(self.fences[name]),
                        })
                    }
                    s => Outcome::Key(s),
                }
            }
            Op::Extend { token, mode, .. } => Outcome::Key(
                self.acquire_key(now, conn, slot, token.as_str(), *mode, ttl, None, None, out)
                    .0,
            ),
            Op::Verify { token } => {
                let cur = self.get(now, slot, out);
                self.track(conn, slot);
                Outcome::Key(match cur {
                    Some(v) if v == token.as_str() => {
                        let expiry = self.keys[slot].as_ref().map_or(now, |e| e.expiry);
                        KeyState::Ours {
                            // PTTL in whole milliseconds, rounded down.
                            pttl_ms: Some((expiry - now) / MS),
                            fence: None,
                        }
                    }
                    Some(v) => Token::owner_state(v.as_bytes()),
                    None => KeyState::Absent,
                })
            }
            Op::Release { token, fence } => {
                let cur = self.get(now, slot, out);
                self.track(conn, slot);
                if cur.as_deref() == Some(token.as_str()) {
                    let counter = fence.then_some(name);
                    if !self.hand(now, slot, token.as_str(), conn, counter, out) {
                        self.keys[slot] = None;
                        self.changed(slot, Some(conn), out);
                    }
                    Outcome::Released(true)
                } else {
                    Outcome::Released(false)
                }
            }
            Op::Enqueue { places, life } => self.in_queue(now, slot, *life, |node| {
                node.prune(now, slot);
                node.place(now, slot, places, *life, None);
                Outcome::Queued
            }),
            Op::Dequeue { members, life } => self.in_queue(now, slot, *life, |node| {
                node.dequeue(slot, members);
                Outcome::Queued
            }),
            // `UNCLAIM_LUA`: this process's claim, if it is still the token's.
            Op::Unclaim { token } => {
                let proc = conn % (self.tracked.len() / 2);
                self.claims[slot].retain(|c| !(c.proc == proc && c.token == token.as_str()));
                Outcome::Unclaimed
            }
            Op::FenceRead => Outcome::Fence(self.fences[name]),
            Op::FenceWrite { value } => {
                let cur = self.fences[name];
                if cur < *value {
                    self.fences[name] = *value;
                    Outcome::FenceWritten {
                        raised: true,
                        value: *value,
                    }
                } else {
                    Outcome::FenceWritten {
                        raised: false,
                        value: cur,
                    }
                }
            }
        }
    }

    /// `RELEASE_HANDOVER_LUA`'s hand-over of `slot`, ours (`mine`): to the
    /// oldest live claim (by arrival, then claimant) whose process listens
    /// (its `PUBLISH` reaches a subscriber), unless the key has a fair
    /// queue; claims that lapsed, those passed over and the one handed are
    /// taken out. With `counter` (a name), the first key set moves that
    /// name's fencing counter, once, and the messages carry it. True if the
    /// key was handed.
    fn hand(
        &mut self,
        now: u64,
        slot: usize,
        mine: &str,
        conn: usize,
        counter: Option<usize>,
        out: &mut Out,
    ) -> bool {
        if !self.handover || !self.queues[slot].places.is_empty() {
            return false;
        }
        let claims = &mut self.claims[slot];
        claims.sort_by_key(|c| (c.arrival_us, c.proc));
        let mut fence = None;
        while !claims.is_empty() {
            let c = claims.remove(0);
            if c.token == mine || c.lapse <= now {
                continue;
            }
            // The script sets the key for each candidate it tries, and
            // moves the counter at the first.
            if let (Some(name), None) = (counter, fence) {
                self.fences[name] += 1;
                fence = Some(self.fences[name]);
            }
            if !self.listening[c.proc] && !self.beside[c.proc] {
                self.passed_over += 1;
                continue;
            }
            self.write(slot, c.token.clone(), c.lapse, conn, out);
            out.handed.push(HandedMsg {
                proc: c.proc,
                slot,
                token: c.token,
                cmd: c.cmd,
                lapse: c.lapse,
                fence,
            });
            return true;
        }
        false
    }

    /// A connection closed: the server forgets what it tracked.
    pub(super) fn untrack(&mut self, conn: usize) {
        self.tracked[conn] = 0;
    }

    /// Process `proc`'s engine connection closed (`false`: the server drops
    /// its subscription) or came back (`true`: the node subscribes before
    /// it takes commands).
    pub(super) fn listen(&mut self, proc: usize, on: bool) {
        self.listening[proc] = on;
    }

    /// Process `proc`'s direct connection opened (`true`: with it, the
    /// subscription beside it, `listen`) or closed (`false`).
    pub(super) fn listen_beside(&mut self, proc: usize, on: bool) {
        self.beside[proc] = on;
    }

    /// A third party deletes `slot` (outside the model).
    pub(super) fn outside_del(&mut self, slot: usize, out: &mut Out) {
        if self.keys[slot].take().is_some() {
            self.changed(slot, None, out);
        }
    }

    /// A third party overwrites `slot` (outside the model).
    pub(super) fn outside_set(&mut self, now: u64, slot: usize, ttl: u64, out: &mut Out) {
        self.version += 1;
        self.keys[slot] = Some(Entry {
            value: "outsider".to_owned(),
            expiry: now + ttl,
            version: self.version,
        });
        out.expiries.push((slot, self.version, now + ttl));
        self.changed(slot, None, out);
    }

    /// FLUSHALL: every key and counter gone; the server invalidates every
    /// tracking client with one null message and forgets all tracking.
    /// Returns the connections that were tracking something.
    pub(super) fn flush(&mut self) -> Vec<usize> {
        self.keys.iter_mut().for_each(|k| *k = None);
        self.fences.iter_mut().for_each(|f| *f = 0);
        self.queues
            .iter_mut()
            .for_each(|q| *q = FairQueue::default());
        self.claims.iter_mut().for_each(Vec::clear);
        let told = (0..self.tracked.len())
            .filter(|&p| self.tracked[p] != 0)
            .collect();
        self.tracked.iter_mut().for_each(|t| *t = 0);
        told
    }

    /// The node restarts empty: data, counters and tracking are gone. With
    /// `ghosts`, live keys are remembered until their expiry.
    pub(super) fn crash(&mut self, now: u64, ghosts: bool) {
        for (slot, k) in self.keys.iter_mut().enumerate() {
            if let Some(e) = k.take() {
                if ghosts && e.expiry > now {
                    self.ghosts.push(Ghost {
                        slot,
                        value: e.value,
                        expiry: e.expiry,
                    });
                }
            }
        }
        self.fences.iter_mut().for_each(|f| *f = 0);
        self.queues
            .iter_mut()
            .for_each(|q| *q = FairQueue::default());
        self.claims.iter_mut().for_each(Vec::clear);
        self.tracked.iter_mut().for_each(|t| *t = 0);
        self.up = false;
    }
}
