//! One simulated run: the nodes, the network, the processes and their cores,
//! driven by one event loop on virtual real time. The loop plays the shell:
//! it carries out each core's effects as the `LockActor` does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::core::{
    CmdId, Config, Draws, Effect, Event, Fair, Fencing, Handover, HolderStatus, Life, LockCore, Op,
    Outcome, Refusal, RequestKind, Route, Target, Terms, Time,
};

use super::invariants::Checks;
use super::model::{Node, Out};
use super::network::{Conn, Dest, Ev, Lane, Link, Pending, Queue};
use super::process::{Caller, Clock, CoreSlot, Process, Stage};
use super::rng::{Rng, SimEntropy};
use super::{Knobs, MS};

/// Fault kinds (bits of `Knobs::faults`).
pub(super) const DROP: u32 = 1;
pub(super) const CUT: u32 = 2;
pub(super) const SLOW: u32 = 4;
/// A restart that stays down for longer than the validity (in the model).
pub(super) const RESTART: u32 = 8;
pub(super) const FLUSH: u32 = 16;
/// A restart that comes back empty at once (outside the model).
pub(super) const RESTART_NOW: u32 = 32;
/// A third party deletes or overwrites a lock key (outside the model).
pub(super) const OUTSIDE: u32 = 64;
/// A node runs nothing for a while (stopped, or every link to it frozen):
/// the commands and invalidations held up run when it ends (`World::stall`).
pub(super) const STALL: u32 = 128;
pub(super) const ALL_FAULTS: u32 = 255;
/// Faults that break Redlock's assumption that only lockers write the keys.
pub(super) const DATA_LOSS: u32 = FLUSH | RESTART_NOW | OUTSIDE;

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunStage {
    /// Workload and faults.
    Main,
    /// No new callers or faults, everything healed: every waiter must get
    /// through.
    Quiesce,
    /// Every core closes.
    Closing,
}

/// How a command may use a direct connection (see the shell's
/// `LockState::send_direct`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DirectUse {
    /// Fed on a caller's runtime: it opens one if none is open, and the
    /// core is told which one the command took.
    Caller,
    /// Fed on the engine's thread: only one already open, and the core is
    /// told only that it went on one, in no known order (the shell's task
    /// writes it later).
    IfOpen,
}

/// Counters of a run.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    pub(super) steps: u64,
    pub(super) grants: u64,
    pub(super) faults: u64,
    /// Overlaps explained by a force or by data loss.
    pub(super) excused: u64,
    /// Commands sent, per process.
    pub(super) cmds: Vec<u64>,
    /// Commands sent on direct connections.
    pub(super) direct: u64,
    /// Of those, acquisitions fed on the engine's thread (waiters' retries).
    pub(super) engine_direct: u64,
    /// Acquisitions sent right behind their process's own deletes (chains).
    pub(super) chained: u64,
    /// Writes sent on a direct connection behind acquisitions of their key
    /// out there (`Route::Behind`).
    pub(super) behind: u64,
    /// Hand-overs whose message reached their claimant.
    pub(super) handed: u64,
    /// Of those, the ones whose token its core no longer used (given back).
    pub(super) handed_to_nobody: u64,
    /// Of those, the ones that carried the fencing counter the release
    /// moved.
    pub(super) handed_fenced: u64,
    /// Of those, the ones taken as read beside a direct connection
    /// (`listen`), before the engine's copy.
    pub(super) handed_here: u64,
    /// Claims passed over by releases, their process not listening (filled
    /// in at the end of a run).
    pub(super) passed_over: u64,
}

/// One simulated run.
#[derive(Debug)]
pub(super) struct World {
    pub(super) k: Knobs,
    pub(super) cfg: Arc<Config>,
    /// Real time, nanoseconds.
    pub(super) now: u64,
    net: Rng,
    work: Rng,
    q: Queue,
    pub(super) nodes: Vec<Node>,
    /// `conns[process][node]`: the engine's connections.
    pub(super) conns: Vec<Vec<Conn>>,
    /// `directs[process][node]`: the direct connections (`Knobs::direct`).
    directs: Vec<Vec<Conn>>,
    /// The event being fed came from a caller's runtime (a request, a
    /// release, a direct connection's reply): what it sends may go direct.
    caller_fed: bool,
    pub(super) procs: Vec<Process>,
    pub(super) stage: RunStage,
    pub(super) trace: Option<VecDeque<String>>,
    pub(super) inv: Checks,
    pub(super) stats: Stats,
    /// A restart happened (fencing counters lost).
    pub(super) restarted: bool,
    /// A data-loss fault happened.
    pub(super) data_lost: bool,
    /// The quiesce or closing stage must be over by then.
    deadline: u64,
    /// The scheduler stops feeding workload after this many steps.
    pub(super) stop_workload: bool,
    /// Per node, when its last stall started and ended (real ns): a server
    /// that runs nothing, or every link to it frozen (`World::stall`).
    pub(super) stalls: Vec<(u64, u64)>,
    /// Every stall so far, of any node (start, end).
    stalled_spans: Vec<(u64, u64)>,
    /// The hand-over messages taken, by process, core and copy's content:
    /// each comes twice with `listen` (`Shared::first_handed`).
    handed_seen:
        std::collections::HashSet<(usize, usize, u32, CmdId, crate::scripts::Token, usize)>,
}

/// Keeps the trace short: the last lines are what explain a failure.
const TRACE_LINES: usize = 300;

impl World {
    pub(super) fn new(k: &Knobs, trace: bool) -> World {
        let mut root = Rng::new(k.seed);
        let mut net = root.fork();
        let mut work = root.fork();
        let validity = Duration::from_millis(k.validity_ms);
        let total = 2 * k.majority - 1;
        let cfg = Arc::new(Config {
            majority: k.majority,
            total,
            nodes: k.nodes,
            placement: (0..total).map(|i| i % k.nodes).collect(),
            terms: Arc::new(Terms::new(Life::of(validity), validity / 2)),
            extend: validity / 2,
            timeout: validity / 10,
            tracking: k.tracking,
            handover_limit: k.handover,
            fencing: k.fencing,
            fingerprint: crate::scripts::Fingerprint::new(k.majority, k.nodes),
            epoch: Time::ZERO,
            fair: None,
            handover: None,
        });
        let slots = k.names * total;
        let nodes = (0..k.nodes)
            .map(|_| Node::new(slots, k.names, k.procs, k.noloop, k.tracking, k.claims))
            .collect();
        let conns = (0..k.procs)
            .map(|_| (0..k.nodes).map(|_| Conn::new()).collect())
            .collect();
        let directs = (0..k.procs)
            .map(|_| (0..k.nodes).map(|_| Conn::closed()).collect())
            .collect();
        let mut procs = Vec::new();
        for p in 0..k.procs {
            let clock = Clock {
                offset: root.range(0, 1_000_000 * MS),
                ppm: root.range(0, 2 * k.max_ppm) as i64 - k.max_ppm as i64,
            };
            let local = clock.local(0);
            // Its wall clock: the servers' (`model::wall_us`), as its own
            // clock (offset and rate error) shows it.
            // Without fair queueing, waiters queue once they have waited
            // one validity, as the engine's.
            let pcfg = Arc::new(Config {
                fair: Some(Fair {
                    wall_origin_us: super::model::WALL_BASE_US - clock.offset / 1_000,
                    life: validity,
                    refresh: validity / 3,
                    after: if k.fair { Duration::ZERO } else { validity },
                }),
                handover: k.claims.then(|| Handover {
                    wall_origin_us: super::model::WALL_BASE_US - clock.offset / 1_000,
                }),
                ..(*cfg).clone()
            });
            let cores = (0..k.names)
                .map(|_| CoreSlot {
                    core: new_core(pcfg.clone(), Box::new(SimEntropy(root.fork())), local, k),
                    inc: 0,
                    timer: None,
                    live: None,
                    closed: false,
                    spins: 0,
                })
                .collect();
            procs.push(Process {
                clock,
                // Every other process counts as one with many holders: its
                // locks give back their tables' room as soon as granted.
                crowded: p % 2 == 1,
                cfg: pcfg,
                cores,
                callers: Vec::new(),
                active: Vec::new(),
                acks: Vec::new(),
                next_ack: 0,
            });
        }
        let mut q = Queue::default();
        for proc in 0..k.procs {
            for name in 0..k.names {
                let at = work.range(0, k.validity_ms * MS / 2);
                q.push(at, Ev::Arrive { proc, name });
            }
        }
        if k.faults != 0 {
            q.push(net.range(0, k.validity_ms * MS), Ev::Fault);
        }
        let stats = Stats {
            cmds: vec![0; k.procs],
            ..Stats::default()
        };
        World {
            inv: Checks::new(k),
            k: k.clone(),
            cfg,
            now: 0,
            net,
            work,
            q,
            nodes,
            conns,
            directs,
            caller_fed: false,
            procs,
            stage: RunStage::Main,
            trace: trace.then(VecDeque::new),
            stats,
            handed_seen: Default::default(),
            restarted: false,
            data_lost: false,
            deadline: u64::MAX,
            stop_workload: false,
            stalls: vec![(0, 0); k.nodes],
            stalled_spans: Vec::new(),
        }
    }

    pub(super) fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            if t.len() == TRACE_LINES {
                t.pop_front();
            }
            t.push_back(format!("{:>10.3}ms {}", self.now as f64 / 1e6, line()));
        }
    }

    /// The longest one-way trip a message can take (slow links included).
    pub(super) fn max_trip(&self) -> u64 {
        self.k.max_delay_ms * MS + self.slow_max() + 2 * MS
    }

    fn slow_max(&self) -> u64 {
        2 * self.cfg.timeout.as_nanos() as u64
    }

    pub(super) fn ttl(&self) -> u64 {
        self.k.validity_ms * MS
    }

    /// A caller's own terms: the locker's, or a validity of ½ or ¾ of it
    /// (never longer, so the liveness bounds hold), and sometimes a maximum
    /// hold shorter than the validity or spanning several extensions.
    fn random_terms(&mut self) -> Option<Terms> {
        let base = *self.cfg.terms;
        let ttl = match self.work.below(3) {
            0 => return None,
            1 => base.life.ttl / 2,
            _ => base.life.ttl * 3 / 4,
        };
        let mut terms = Terms::new(Life::of(ttl), ttl / 2);
        if self.work.chance(50) {
            let hold = self.work.range(ttl.as_nanos() as u64 / 4, 3 * self.ttl());
            terms.max_hold = Some(Duration::from_nanos(hold));
        }
        Some(terms)
    }

    // ===== the loop =====

    /// Runs the schedule to its end; `Err` describes the first violation.
    pub(super) fn run(&mut self) -> Result<(), String> {
        let cap = self.k.steps + 200_000;
        loop {
            if self.stats.steps >= self.k.steps && self.stage == RunStage::Main {
                self.quiesce();
            }
            if self.stage == RunStage::Quiesce && self.all_done() {
                self.close_all()?;
            }
            if self.stage == RunStage::Closing && self.all_closed() {
                return self.finish();
            }
            if self.now > self.deadline {
                return Err(format!(
                    "{:?} stage not over by its deadline: {}",
                    self.stage,
                    self.pending_summary()
                ));
            }
            if self.stats.steps >= cap {
                return Err("no quiescence within the step cap".into());
            }
            if !self.step()? {
                return Err(format!(
                    "nothing left to happen in stage {:?}: {}",
                    self.stage,
                    self.pending_summary()
                ));
            }
            self.stats.steps += 1;
            self.check()?;
        }
    }

    /// Runs the main phase until real time `until` (scenarios without the
    /// random schedule's ending).
    pub(super) fn run_until(&mut self, until: u64) -> Result<(), String> {
        loop {
            let next = self
                .next_timer()
                .map(|t| t.0)
                .into_iter()
                .chain(self.q.peek_at())
                .min();
            if next.is_none_or(|t| t > until) {
                self.now = until;
                return Ok(());
            }
            self.step()?;
            self.stats.steps += 1;
            self.check()?;
        }
    }

    /// The earliest core timer: (real time, process, name).
    fn next_timer(&self) -> Option<(u64, usize, usize)> {
        let mut timer: Option<(u64, usize, usize)> = None;
        for (p, proc) in self.procs.iter().enumerate() {
            for (n, slot) in proc.cores.iter().enumerate() {
                if let Some(t) = slot.timer {
                    if timer.is_none_or(|(b, _, _)| t < b) {
                        timer = Some((t, p, n));
                    }
                }
            }
        }
        timer
    }

    /// Runs the next event; false when nothing is left.
    fn step(&mut self) -> Result<bool, String> {
        let timer = self.next_timer();
        let next = self.q.peek_at();
        match (timer, next) {
            (Some((t, p, n)), q) if q.is_none_or(|q| t <= q) => {
                self.now = self.now.max(t);
                self.log(|| format!("p{p} name{n} timeout"));
                self.feed(p, n, Event::Timeout)?;
                Ok(true)
            }
            (_, Some(_)) => {
                let (at, ev) = self.q.pop().expect("peeked");
                self.now = self.now.max(at);
                self.event(ev)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn event(&mut self, ev: Ev) -> Result<(), String> {
        if let Some(at) = self.stalled(&ev) {
            self.q.push(at, ev);
            return Ok(());
        }
        match ev {
            Ev::Exec {
                to,
                node,
                lane,
                epoch,
                cmd,
                target,
                op,
            } => self.exec(to, node, lane, epoch, cmd, target, op),
            Ev::Reply {
                to,
                node,
                lane,
                epoch,
                cmd,
                outcome,
            } => {
                let c = self.conn(to.proc, node, lane);
                if c.epoch != epoch || c.link != Link::Up {
                    return Ok(());
                }
                c.forget(to.name, to.inc, cmd);
                self.replied(to, node, lane, cmd, outcome)
            }
            Ev::Failed {
                to,
                node,
                lane,
                cmd,
            } => {
                self.conn(to.proc, node, lane).forget(to.name, to.inc, cmd);
                let outcome = Outcome::Failed("connection closed");
                self.replied(to, node, lane, cmd, outcome)
            }
            Ev::DirectOpen { proc, node } => {
                self.open_direct(proc, node);
                Ok(())
            }
            Ev::Inval {
                proc,
                node,
                epoch,
                slot,
            } => match self.pushed_to(proc, node, (epoch, false), slot) {
                Some((to, key)) => self.deliver(to, Event::Invalidated { key }),
                None => Ok(()),
            },
            Ev::Handed {
                proc,
                node,
                epoch,
                beside,
                slot,
                token,
                cmd,
                fence,
            } => {
                let Some((to, key)) = self.pushed_to(proc, node, (epoch, beside), slot) else {
                    return Ok(());
                };
                let core = &self.procs[to.proc].cores[to.name].core;
                if beside && !core.engine_quiet() {
                    return Ok(());
                }
                if !self.first_handed(to, cmd, &token, key) {
                    return Ok(());
                }
                self.stats.handed += 1;
                let core = &self.procs[to.proc].cores[to.name].core;
                if core.live_token() != Some(&token) {
                    self.stats.handed_to_nobody += 1;
                }
                if fence.is_some() {
                    self.stats.handed_fenced += 1;
                }
                if beside {
                    self.stats.handed_here += 1;
                }
                let event = Event::Handed {
                    key,
                    token,
                    cmd,
                    fence,
                };
                self.deliver(to, event)
            }
            Ev::Local { proc, event } => {
                for name in 0..self.k.names {
                    self.log(|| format!("p{proc} name{name} {event:?}"));
                    self.feed(proc, name, event.clone())?;
                }
                Ok(())
            }
            Ev::Expire {
                node,
                slot,
                version,
            } => {
                let mut out = Out::default();
                self.nodes[node].expire(self.now, slot, version, &mut out);
                self.node_out(node, out)
            }
            Ev::Arrive { proc, name } => self.as_caller(|w| w.arrive(proc, name)),
            Ev::Cancel { proc, req } => self.cancel(proc, req),
            Ev::CancelCore { proc, req } => self.cancel_core(proc, req),
            Ev::Release { proc, req, ack } => self.as_caller(|w| w.release(proc, req, ack)),
            Ev::Fault => {
                if self.stage == RunStage::Main {
                    self.fault();
                }
                Ok(())
            }
            Ev::Reconnect { proc, node } => {
                self.reconnect(proc, node);
                Ok(())
            }
            Ev::Fast { proc, node } => {
                self.conns[proc][node].slow = 0;
                self.directs[proc][node].slow = 0;
                Ok(())
            }
            Ev::NodeUp { node } => {
                self.log(|| format!("node{node} up (empty)"));
                self.nodes[node].up = true;
                for proc in 0..self.k.procs {
                    self.reconnect(proc, node);
                }
                Ok(())
            }
        }
    }

    // ===== the nodes and the network =====

    /// Stalls `node` for `dur` from now (`World::stalled`): the `STALL`
    /// fault, or a scenario's.
    pub(super) fn stall(&mut self, node: usize, dur: u64) {
        self.log(|| format!("FAULT node{node} stalls for {}ms", dur / MS));
        self.stalls[node] = (self.now, self.now + dur);
        self.stalled_spans.push(self.stalls[node]);
    }

    /// The longest trip a stall adds: a command sent as it starts runs as it
    /// ends.
    fn longest_stall(&self) -> u64 {
        self.stalled_spans
            .iter()
            .map(|(from, until)| until - from)
            .max()
            .unwrap_or(0)
    }

    /// Sends what `node` pushes to process `proc` on its engine
    /// connection (an invalidation, a hand-over's message), made for the
    /// connection's epoch: lost if the link is down.
    fn push_on(&mut self, proc: usize, node: usize, make: impl FnOnce(u32) -> Ev) {
        let c = &self.conns[proc][node];
        if c.link != Link::Up {
            return;
        }
        let epoch = c.epoch;
        let d = c.delay(&mut self.net, self.k.max_delay_ms * MS);
        self.q.push(self.now + d, make(epoch));
    }

    /// True the first time core `to` is handed key `key` under `token` for
    /// the claim `cmd`, as `Shared::first_handed` tells the engine. Now and
    /// then a copy counts as new again, as one that came later than the
    /// locker remembers does: the core must take it as a key handed again.
    fn first_handed(
        &mut self,
        to: Dest,
        cmd: CmdId,
        token: &crate::scripts::Token,
        key: usize,
    ) -> bool {
        let id = (to.proc, to.name, to.inc, cmd, token.clone(), key);
        self.handed_seen.insert(id) || self.net.chance(3)
    }

    /// Where a message that `node` pushed about `slot` on process `proc`'s
    /// engine connection of `epoch`, or the connection beside its direct
    /// connection of `epoch` (`beside`, see `listen`), goes (the core of its
    /// name, and the key): nowhere if that connection broke since, as with
    /// the server.
    fn pushed_to(
        &self,
        proc: usize,
        node: usize,
        (epoch, beside): (u32, bool),
        slot: usize,
    ) -> Option<(Dest, usize)> {
        let c = match beside {
            true => &self.directs[proc][node],
            false => &self.conns[proc][node],
        };
        if c.epoch != epoch || c.link != Link::Up {
            return None;
        }
        let total = self.cfg.total;
        let (name, key) = (slot / total, slot % total);
        let inc = self.procs[proc].cores[name].inc;
        Some((Dest { proc, name, inc }, key))
    }

    /// When a command reaching a stalled node runs, or an invalidation it
    /// sent reaches its process: when the stall ends, the links healing one
    /// process after another from the last to the first (as the test proxy
    /// heals its links in a row, and a thawed server reads its sockets in
    /// some order), each connection in its own order. Meanwhile the node's
    /// clock runs: keys and fair-queue places lapse as their times pass.
    fn stalled(&self, ev: &Ev) -> Option<u64> {
        let (node, proc) = match ev {
            Ev::Exec { node, to, .. } => (*node, to.proc),
            Ev::Inval { node, proc, .. } | Ev::Handed { node, proc, .. } => (*node, *proc),
            _ => return None,
        };
        let (_, until) = self.stalls[node];
        let behind = (self.k.procs - 1 - proc) as u64 * 10_000;
        (self.now < until).then_some(until + behind)
    }

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &mut self,
        to: Dest,
        node: usize,
        lane: Lane,
        epoch: u32,
        cmd: crate::core::CmdId,
        target: Target,
        op: Op,
    ) -> Result<(), String> {
        if !self.nodes[node].up {
            return Ok(());
        }
        let live = {
            let c = self.conn(to.proc, node, lane);
            c.epoch == epoch && c.link == Link::Up
        };
        // A command on a connection that broke meanwhile may still have
        // reached the server before the break: its reply is lost.
        if !live && self.net.chance(50) {
            return Ok(());
        }
        let total = self.cfg.total;
        let slot = match target {
            Target::Key(k) => to.name * total + k,
            Target::Fence(_) => 0,
        };
        if let (Op::Acquire { token, mode, .. }, Target::Key(_)) = (&op, target) {
            if *mode == crate::scripts::SetMode::Force {
                if let Some(e) = self.nodes[node].peek(slot, self.now) {
                    if e.value != token.as_str() {
                        self.inv.victims.insert(e.value.clone());
                    }
                }
            }
        }
        let mut out = Out::default();
        let ttl = match &op {
            Op::Acquire { ttl, .. } | Op::Extend { ttl, .. } => ttl.as_nanos() as u64,
            _ => self.ttl(),
        };
        let tracker = self.tracker(to.proc, lane);
        let outcome =
            self.nodes[node].exec(self.now, tracker, to.name, slot, &op, ttl, cmd, &mut out);
        if let Op::Acquire { token, .. } | Op::Extend { token, .. } = &op {
            if !out.expiries.is_empty() {
                self.inv.key_written(
                    token,
                    self.now + ttl,
                    self.max_trip() + self.longest_stall() + ttl,
                )?;
            }
        }
        self.log(|| {
            format!(
                "node{node} runs {cmd:?} of p{} name{} {target:?} {op:?} ({lane:?}) -> {outcome:?}",
                to.proc, to.name
            )
        });
        self.node_out(node, out)?;
        if live {
            let c = match lane {
                Lane::Engine => &mut self.conns[to.proc][node],
                Lane::Direct => &mut self.directs[to.proc][node],
            };
            let d = c.delay(&mut self.net, self.k.max_delay_ms * MS);
            let at = c.arrival_at_proc(self.now, d);
            self.q.push(
                at,
                Ev::Reply {
                    to,
                    node,
                    lane,
                    epoch,
                    cmd,
                    outcome,
                },
            );
        }
        Ok(())
    }

    /// Sends a node's invalidations and hand-overs, and schedules its
    /// expiries.
    fn node_out(&mut self, node: usize, out: Out) -> Result<(), String> {
        // A hand-over's message goes to the claimant's engine connection,
        // where it subscribes (a claim made on its direct connection too),
        // and is lost with that connection.
        for h in out.handed {
            let token = crate::scripts::Token::from_wire(h.token.as_bytes())
                .ok_or_else(|| format!("node{node} handed slot{} to a malformed token", h.slot))?;
            self.inv.key_written(
                &token,
                h.lapse,
                self.max_trip() + self.longest_stall() + self.ttl(),
            )?;
            self.push_on(h.proc, node, |epoch| Ev::Handed {
                proc: h.proc,
                node,
                epoch,
                beside: false,
                slot: h.slot,
                token: token.clone(),
                cmd: h.cmd,
                fence: h.fence,
            });
            // And beside the process's direct connection, if one is open
            // (`listen`), in no order with the engine's copy.
            let d = &self.directs[h.proc][node];
            if d.link == Link::Up {
                let (epoch, delay) = (d.epoch, d.delay(&mut self.net, self.k.max_delay_ms * MS));
                let ev = Ev::Handed {
                    proc: h.proc,
                    node,
                    epoch,
                    beside: true,
                    slot: h.slot,
                    token,
                    cmd: h.cmd,
                    fence: h.fence,
                };
                self.q.push(self.now + delay, ev);
            }
        }
        for (slot, version, at) in out.expiries {
            self.q.push(
                at,
                Ev::Expire {
                    node,
                    slot,
                    version,
                },
            );
        }
        for inv in out.invals {
            // Tracked for a direct connection: redirected to the engine's
            // connection it was opened against, and lost if that one is
            // gone (the server finds no client with the id).
            let procs = self.k.procs;
            let proc = inv.proc % procs;
            let c = &self.conns[proc][node];
            if inv.proc >= procs && self.directs[proc][node].redirect != c.epoch {
                self.log(|| {
                    format!(
                        "node{node} invalidation of slot{} for p{proc}'s direct connection lost: its redirect is gone",
                        inv.slot
                    )
                });
                continue;
            }
            self.push_on(proc, node, |epoch| Ev::Inval {
                proc,
                node,
                epoch,
                slot: inv.slot,
            });
        }
        Ok(())
    }

    /// Sends `cmd` on the connection `route` allows, as `how` may use a
    /// direct connection; the generation of the direct connection it took,
    /// if it took one.
    fn send(
        &mut self,
        to: Dest,
        cmd: crate::core::CmdId,
        target: Target,
        op: Op,
        route: Route,
        how: DirectUse,
    ) -> Option<u64> {
        let node = match target {
            Target::Key(k) => self.cfg.placement[k],
            Target::Fence(n) => n,
        };
        self.stats.cmds[to.proc] += 1;
        let usable = |w: &mut World| match how {
            DirectUse::Caller => w.direct_lane(to.proc, node),
            DirectUse::IfOpen => w.direct_open(to.proc, node),
        };
        let direct = match route {
            Route::Engine => false,
            Route::Direct => usable(self),
            Route::Behind(generation) => {
                usable(self) && u64::from(self.directs[to.proc][node].epoch) == generation
            }
        };
        if direct && how == DirectUse::IfOpen {
            self.stats.engine_direct += 1;
        }
        let lane = if direct {
            self.stats.direct += 1;
            if matches!(route, Route::Behind(_)) {
                self.stats.behind += 1;
            }
            Lane::Direct
        } else {
            Lane::Engine
        };
        let taken = direct.then(|| u64::from(self.directs[to.proc][node].epoch));
        let c = match lane {
            Lane::Engine => &mut self.conns[to.proc][node],
            Lane::Direct => &mut self.directs[to.proc][node],
        };
        match c.link {
            Link::Down => {
                let at = self.now + self.net.range(10_000, 500_000);
                self.q.push(
                    at,
                    Ev::Failed {
                        to,
                        node,
                        lane,
                        cmd,
                    },
                );
            }
            // Lost in the partition; the core's table times it out.
            Link::Cut => {}
            Link::Up => {
                c.pending.push(Pending {
                    name: to.name,
                    inc: to.inc,
                    cmd,
                });
                let d = c.delay(&mut self.net, self.k.max_delay_ms * MS);
                let at = c.arrival_at_node(self.now, d);
                let epoch = c.epoch;
                self.q.push(
                    at,
                    Ev::Exec {
                        to,
                        node,
                        lane,
                        epoch,
                        cmd,
                        target,
                        op,
                    },
                );
            }
        }
        taken
    }

    /// The connection of `lane` from `proc` to `node`.
    fn conn(&mut self, proc: usize, node: usize, lane: Lane) -> &mut Conn {
        match lane {
            Lane::Engine => &mut self.conns[proc][node],
            Lane::Direct => &mut self.directs[proc][node],
        }
    }

    /// Whose tracking a read on `lane` arms (see `Node::tracked`).
    fn tracker(&self, proc: usize, lane: Lane) -> usize {
        match lane {
            Lane::Engine => proc,
            Lane::Direct => self.k.procs + proc,
        }
    }

    /// Runs `f` as the feeding of an event from a caller's runtime.
    fn as_caller(
        &mut self,
        f: impl FnOnce(&mut World) -> Result<(), String>,
    ) -> Result<(), String> {
        self.caller_fed = true;
        let r = f(self);
        self.caller_fed = false;
        r
    }

    /// A command's reply (or failure) reaches its core. On the direct lane
    /// it is fed on the caller's runtime, and followed by a re-check of the
    /// node when the engine's connection changed since the direct one was
    /// opened (as `direct::Link::run` does).
    fn replied(
        &mut self,
        to: Dest,
        node: usize,
        lane: Lane,
        cmd: crate::core::CmdId,
        outcome: Outcome,
    ) -> Result<(), String> {
        match lane {
            Lane::Engine => self.deliver(to, Event::Reply { cmd, outcome }),
            Lane::Direct => {
                let e = &self.conns[to.proc][node];
                let moved = e.link == Link::Down || e.epoch != self.directs[to.proc][node].redirect;
                self.as_caller(|w| {
                    w.deliver(to, Event::Reply { cmd, outcome })?;
                    if moved {
                        w.deliver(to, Event::Recheck { node: Some(node) })?;
                    }
                    Ok(())
                })
            }
        }
    }

    /// Whether a command of `proc` for `node` may take the direct
    /// connection, as `direct::conn` decides: one is open and redirected to
    /// the engine's current connection. A stale one (the engine's connection
    /// was replaced) is closed; if none is open or opening, one is opened
    /// for the commands after this one.
    fn direct_lane(&mut self, proc: usize, node: usize) -> bool {
        let engine = &self.conns[proc][node];
        // No engine connection: nothing to redirect to.
        if engine.link == Link::Down {
            return false;
        }
        let epoch = engine.epoch;
        let d = &self.directs[proc][node];
        if d.link != Link::Down {
            if d.redirect == epoch {
                return true;
            }
            self.log(|| format!("p{proc}-node{node} direct connection stale: replaced"));
            self.close_direct(proc, node);
        }
        let d = &mut self.directs[proc][node];
        if !d.opening {
            d.opening = true;
            let at = self.now + self.net.range(100_000, 2 * MS);
            self.q.push(at, Ev::DirectOpen { proc, node });
        }
        false
    }

    /// Whether `proc`'s direct connection to `node` is open and redirected
    /// to the current engine connection, opening none (`direct::open_conn`).
    fn direct_open(&self, proc: usize, node: usize) -> bool {
        let engine = &self.conns[proc][node];
        let d = &self.directs[proc][node];
        engine.link != Link::Down && d.link != Link::Down && d.redirect == engine.epoch
    }

    fn open_direct(&mut self, proc: usize, node: usize) {
        let (up, epoch) = {
            let e = &self.conns[proc][node];
            (e.link == Link::Up && self.nodes[node].up, e.epoch)
        };
        let d = &mut self.directs[proc][node];
        d.opening = false;
        if up && d.link == Link::Down {
            d.link = Link::Up;
            d.epoch += 1;
            d.redirect = epoch;
            d.slow = 0;
            self.nodes[node].listen_beside(proc, true);
            self.log(|| format!("p{proc}-node{node} direct connection open"));
        }
    }

    /// A direct connection closes: its commands fail or go unanswered, the
    /// server forgets what it tracked for it, and the process's locks
    /// re-check their keys on the node (`direct::Closing`).
    fn close_direct(&mut self, proc: usize, node: usize) {
        let tracker = self.tracker(proc, Lane::Direct);
        let d = &mut self.directs[proc][node];
        if d.link == Link::Down {
            return;
        }
        d.epoch += 1;
        d.link = Link::Down;
        let pending = std::mem::take(&mut d.pending);
        self.nodes[node].untrack(tracker);
        self.nodes[node].listen_beside(proc, false);
        self.fail_pending(proc, node, Lane::Direct, pending);
        let at = self.now + self.net.range(10_000, MS);
        let event = Event::Recheck { node: Some(node) };
        self.q.push(at, Ev::Local { proc, event });
    }

    /// The commands that were out on a connection that closed: each fails
    /// soon after, or is never answered.
    fn fail_pending(&mut self, proc: usize, node: usize, lane: Lane, pending: Vec<Pending>) {
        for p in pending {
            if self.net.chance(60) {
                let at = self.now + self.net.range(10_000, 1_000_000);
                let to = Dest {
                    proc,
                    name: p.name,
                    inc: p.inc,
                };
                let cmd = p.cmd;
                self.q.push(
                    at,
                    Ev::Failed {
                        to,
                        node,
                        lane,
                        cmd,
                    },
                );
            }
        }
    }

    /// The connection closes: the server forgets its tracking; commands
    /// awaiting replies fail at once or are never answered.
    fn close_conn(&mut self, proc: usize, node: usize, reconnect: bool) {
        let c = &mut self.conns[proc][node];
        c.epoch += 1;
        c.link = Link::Down;
        let pending = std::mem::take(&mut c.pending);
        self.nodes[node].untrack(proc);
        self.nodes[node].listen(proc, false);
        self.fail_pending(proc, node, Lane::Engine, pending);
        if reconnect {
            let timeout = self.cfg.timeout.as_nanos() as u64;
            let at = self.now + self.net.range(MS, 2 * timeout);
            self.q.push(at, Ev::Reconnect { proc, node });
        }
    }

    /// The connection is back (after a close or a partition): a fresh
    /// connection with nothing tracked, and a re-check for every core.
    fn reconnect(&mut self, proc: usize, node: usize) {
        if !self.nodes[node].up || self.conns[proc][node].link == Link::Up {
            return;
        }
        // A direct connection cut off with it is found dead by then (fred's
        // unresponsive check) and closed: never reconnected.
        if self.directs[proc][node].link == Link::Cut {
            self.close_direct(proc, node);
        }
        let c = &mut self.conns[proc][node];
        if c.link == Link::Cut {
            c.epoch += 1;
            c.pending.clear();
            self.nodes[node].untrack(proc);
        }
        c.link = Link::Up;
        self.nodes[node].listen(proc, true);
        self.log(|| format!("p{proc} reconnected to node{node}"));
        let at = self.now + self.net.range(10_000, MS);
        self.q.push(
            at,
            Ev::Local {
                proc,
                event: Event::Recheck { node: Some(node) },
            },
        );
    }

    fn fault(&mut self) {
        let kinds: Vec<u32> = (0..8)
            .map(|b| 1u32 << b)
            .filter(|f| self.k.faults & f != 0)
            .collect();
        let f = kinds[self.net.below(kinds.len() as u64) as usize];
        let proc = self.net.below(self.k.procs as u64) as usize;
        let node = self.net.below(self.k.nodes as u64) as usize;
        let validity = self.ttl();
        let timeout = self.cfg.timeout.as_nanos() as u64;
        self.stats.faults += 1;
        match f {
            DROP if self.directs[proc][node].link == Link::Up && self.net.chance(50) => {
                self.log(|| format!("FAULT p{proc}-node{node} direct connection closed"));
                self.close_direct(proc, node);
            }
            DROP if self.conns[proc][node].link == Link::Up => {
                self.log(|| format!("FAULT p{proc}-node{node} connection closed"));
                self.close_conn(proc, node, true);
            }
            CUT if self.conns[proc][node].link == Link::Up => {
                self.log(|| format!("FAULT p{proc}-node{node} silently partitioned"));
                self.conns[proc][node].link = Link::Cut;
                if self.directs[proc][node].link == Link::Up {
                    self.directs[proc][node].link = Link::Cut;
                }
                let at = self.now + self.net.range(timeout, 3 * validity);
                self.q.push(at, Ev::Reconnect { proc, node });
            }
            SLOW => {
                let slow = self.net.range(timeout / 2, self.slow_max());
                self.log(|| format!("FAULT p{proc}-node{node} slow by {}ms", slow / MS));
                self.conns[proc][node].slow = slow;
                self.directs[proc][node].slow = slow;
                let at = self.now + self.net.range(timeout, 2 * validity);
                self.q.push(at, Ev::Fast { proc, node });
            }
            RESTART | RESTART_NOW if self.nodes[node].up => {
                let delayed = f == RESTART;
                self.log(|| format!("FAULT node{node} restarts empty (delayed: {delayed})"));
                self.nodes[node].crash(self.now, delayed);
                for p in 0..self.k.procs {
                    self.close_conn(p, node, false);
                    self.close_direct(p, node);
                }
                self.restarted = true;
                let down = if delayed {
                    validity + self.max_trip() + self.net.range(0, validity)
                } else {
                    self.data_lost = true;
                    self.net.range(0, 5 * MS)
                };
                self.q.push(self.now + down, Ev::NodeUp { node });
            }
            FLUSH if self.nodes[node].up => {
                self.data_lost = true;
                let told = self.nodes[node].flush();
                // The server sends a null invalidation; fred drops it. A
                // shell that did not would re-check.
                let deliver = self.net.chance(50);
                self.log(|| {
                    format!("FAULT node{node} FLUSHALL (invalidation delivered: {deliver})")
                });
                if deliver {
                    let mut told: Vec<usize> = told.into_iter().map(|t| t % self.k.procs).collect();
                    told.sort_unstable();
                    told.dedup();
                    for p in told {
                        if self.conns[p][node].link == Link::Up {
                            let at = self.now + self.net.range(10_000, MS);
                            let event = Event::Recheck { node: Some(node) };
                            self.q.push(at, Ev::Local { proc: p, event });
                        }
                    }
                }
            }
            // Not again before the last stall's backlog has run (a command
            // held up by two stalls would wait longer than the longest).
            STALL if self.stalls[node].1 + MS <= self.now => {
                // From a blip to past the validity: holders lose their
                // locks, keys and places lapse on the node's clock.
                let dur = self.net.range(10 * MS, validity * 3 / 2);
                self.stall(node, dur);
            }
            OUTSIDE => {
                let name = self.net.below(self.k.names as u64) as usize;
                let key = self.net.below(self.cfg.total as u64) as usize;
                let node = self.cfg.placement[key];
                let slot = name * self.cfg.total + key;
                if self.nodes[node].up {
                    self.data_lost = true;
                    let mut out = Out::default();
                    if self.net.chance(50) {
                        self.log(|| format!("FAULT outside DEL name{name} key{key}"));
                        self.nodes[node].outside_del(slot, &mut out);
                    } else {
                        self.log(|| format!("FAULT outside SET name{name} key{key}"));
                        self.nodes[node].outside_set(self.now, slot, validity, &mut out);
                        self.inv.blocked_until[name] = self.now + validity;
                    }
                    // An outsider's write hands nothing over: nothing to
                    // check that could fail.
                    let _ = self.node_out(node, out);
                }
            }
            _ => self.stats.faults -= 1,
        }
        let at = self.now + self.net.range(validity / 4, 2 * validity);
        self.q.push(at, Ev::Fault);
    }

    // ===== the callers =====

    fn arrive(&mut self, proc: usize, name: usize) -> Result<(), String> {
        if self.stage != RunStage::Main || self.stop_workload {
            return Ok(());
        }
        let validity = self.ttl();
        let at = self.now + self.work.range(0, validity);
        self.q.push(at, Ev::Arrive { proc, name });
        let p = &self.procs[proc];
        let busy = p
            .active
            .iter()
            .filter(|&&i| p.callers[i].name == name)
            .count();
        if busy >= 3 {
            return Ok(());
        }
        let kind = if self.k.force && self.work.chance(3) {
            RequestKind::Force
        } else if self.work.chance(15) {
            RequestKind::Try
        } else {
            RequestKind::Wait
        };
        self.add_caller(proc, name, kind)
    }

    /// A new caller of `proc` asks for `name`; returns its request id.
    pub(super) fn add_caller_id(
        &mut self,
        proc: usize,
        name: usize,
        kind: RequestKind,
        terms: Option<Terms>,
        forever: bool,
    ) -> Result<u64, String> {
        let p = &mut self.procs[proc];
        p.callers.push(Caller {
            name,
            kind,
            cancelled: false,
            stage: Stage::Waiting,
            asked: self.now,
            forever,
            released: false,
            permits: terms.and_then(|t| t.permits),
        });
        let idx = p.callers.len() - 1;
        p.active.push(idx);
        let id = idx as u64 + 1;
        self.log(|| format!("p{proc} name{name} request {id} {kind:?} {terms:?}"));
        self.feed(proc, name, Event::Request { id, kind, terms })?;
        Ok(id)
    }

    fn add_caller(&mut self, proc: usize, name: usize, kind: RequestKind) -> Result<(), String> {
        let forever = self.work.chance(8);
        let mut terms = if self.k.terms {
            self.random_terms()
        } else {
            None
        };
        if self.k.permits {
            // Mostly the count every caller of the name agrees on; now and
            // then another count, or a plain lock of the slot's name.
            let claim = match self.work.below(10) {
                0 => None,
                1 => Some(3),
                _ => Some(2),
            };
            if claim.is_some() {
                let mut t = terms.unwrap_or(*self.cfg.terms);
                t.permits = claim;
                terms = Some(t);
            }
        }
        let id = self.add_caller_id(proc, name, kind, terms, forever)?;
        if self.work.chance(15) {
            let at = self.now + self.work.range(0, self.ttl());
            self.q.push(at, Ev::Cancel { proc, req: id });
        }
        Ok(())
    }

    fn cancel(&mut self, proc: usize, req: u64) -> Result<(), String> {
        let Some(c) = self.procs[proc].caller(req) else {
            return Ok(());
        };
        if !matches!(c.stage, Stage::Waiting) || c.cancelled {
            return Ok(());
        }
        c.cancelled = true;
        self.log(|| format!("p{proc} caller {req} gives up"));
        // The cancellation reaches the core a mailbox hop later, or at once.
        if self.work.chance(50) {
            self.cancel_core(proc, req)
        } else {
            let at = self.now + self.work.range(0, 300_000);
            self.q.push(at, Ev::CancelCore { proc, req });
            Ok(())
        }
    }

    fn cancel_core(&mut self, proc: usize, req: u64) -> Result<(), String> {
        let Some(c) = self.procs[proc].caller(req) else {
            return Ok(());
        };
        let name = c.name;
        if matches!(c.stage, Stage::Waiting) {
            c.stage = Stage::Done;
            self.procs[proc].active.retain(|&i| i as u64 + 1 != req);
        }
        self.feed(proc, name, Event::Cancel { id: req })
    }

    fn release(&mut self, proc: usize, req: u64, ack: bool) -> Result<(), String> {
        let Some(c) = self.procs[proc].caller(req) else {
            return Ok(());
        };
        let Stage::Held { inc, holder, .. } = c.stage else {
            return Ok(());
        };
        if c.released {
            return Ok(());
        }
        c.released = true;
        let name = c.name;
        let p = &mut self.procs[proc];
        p.active.retain(|&i| i as u64 + 1 != req);
        if p.cores[name].inc != inc {
            // That core was retired: the release goes nowhere.
            return Ok(());
        }
        let ack = ack.then(|| {
            p.next_ack += 1;
            p.acks.push(p.next_ack);
            p.next_ack
        });
        self.log(|| format!("p{proc} caller {req} releases holder {holder} ack {ack:?}"));
        let again = ack.is_none() && self.work.chance(30);
        self.feed(proc, name, Event::Release { holder, ack })?;
        match self.procs[proc].caller(req).map(|c| &c.stage) {
            Some(Stage::Held {
                status: HolderStatus::Ended(_),
                ..
            }) => {}
            s => {
                return Err(format!(
                    "p{proc} name{name}: release of req{req} did not end its holder ({s:?})"
                ))
            }
        }
        // A loop of `lock()` and a dropped guard: the next request of the
        // name comes while the deletes are out (a chain, see `LockCore`).
        if again && self.stage == RunStage::Main && !self.stop_workload {
            self.add_caller(proc, name, RequestKind::Wait)?;
        }
        Ok(())
    }

    // ===== the shell =====

    fn deliver(&mut self, to: Dest, event: Event) -> Result<(), String> {
        if self.procs[to.proc].cores[to.name].inc != to.inc {
            return Ok(());
        }
        self.log(|| format!("p{} name{} <- {event:?}", to.proc, to.name));
        self.feed(to.proc, to.name, event)
    }

    /// Feeds one event to a core at its local time and carries out the
    /// effects, checking that each is well-formed (invariant 6).
    pub(super) fn feed(&mut self, proc: usize, name: usize, event: Event) -> Result<(), String> {
        let mut todo = vec![event];
        while let Some(event) = todo.pop() {
            let local = self.procs[proc].clock.local(self.now);
            let is_timeout = matches!(event, Event::Timeout);
            let slot = &mut self.procs[proc].cores[name];
            slot.core.handle(local, event);
            let fx: Vec<Effect> = std::iter::from_fn(|| slot.core.poll_effect()).collect();
            // As the shell does: a lock settled into a long hold, or just
            // granted in a process of many holders, gives back its tables'
            // room (which must change nothing else).
            let holders = if self.procs[proc].crowded {
                crate::core::CROWD
            } else {
                1
            };
            let slot = &mut self.procs[proc].cores[name];
            if slot.core.settled(local, holders) {
                slot.core.trim();
            }
            let holding = slot.core.holding();
            let inc = slot.inc;
            let live = slot.core.live_token().cloned();
            for (i, e) in fx.iter().enumerate() {
                self.log(|| format!("p{proc} name{name} -> {e:?}"));
                self.effect(
                    proc,
                    name,
                    inc,
                    local,
                    e,
                    &fx[i + 1..],
                    &holding,
                    &live,
                    &mut todo,
                )?;
            }
            // Invariant 4's book-keeping: when a token stops being live.
            let slot = &mut self.procs[proc].cores[name];
            if slot.live != live {
                if let Some(old) = slot.live.take() {
                    self.inv.token_ended(old, self.now);
                }
                let slot = &mut self.procs[proc].cores[name];
                slot.live = live;
            }
            let slot = &mut self.procs[proc].cores[name];
            let next = slot.core.next_timeout();
            if let Some(t) = next {
                if t <= local && is_timeout {
                    slot.spins += 1;
                    if slot.spins > 100 {
                        return Err(format!(
                            "p{proc} name{name}: next_timeout {t:?} stays at or before now {local:?} (busy loop)"
                        ));
                    }
                } else {
                    slot.spins = 0;
                }
            }
            let clock = self.procs[proc].clock;
            let now = self.now;
            self.procs[proc].cores[name].timer = next.map(|t| clock.real_at(t).max(now));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn effect(
        &mut self,
        proc: usize,
        name: usize,
        inc: u32,
        local: Time,
        e: &Effect,
        later: &[Effect],
        holding: &Option<crate::core::HoldingView>,
        live: &Option<crate::scripts::Token>,
        todo: &mut Vec<Event>,
    ) -> Result<(), String> {
        let cfg = self.cfg.clone();
        let here = || format!("p{proc} name{name}");
        match e {
            Effect::Send { cmd, target, op } => {
                let ok_target = match target {
                    Target::Key(k) => *k < cfg.total,
                    Target::Fence(n) => *n < cfg.nodes,
                };
                let ok_op = match (target, op) {
                    (Target::Key(k), Op::Acquire { fence, queue, .. }) => {
                        *fence == (cfg.fencing == Fencing::InScript && *k == 0 && cfg.total == 1)
                            && (queue.is_none() || self.procs[proc].cfg.fair.is_some())
                    }
                    (Target::Key(_), Op::Extend { .. } | Op::Verify { .. }) => true,
                    // A release moves the counter only where a hand-over
                    // may grant with it: one instance, counter in the script.
                    (Target::Key(k), Op::Release { fence, .. }) => {
                        *fence
                            == (self.procs[proc].cfg.handover.is_some()
                                && cfg.fencing == Fencing::InScript
                                && *k == 0
                                && cfg.total == 1)
                    }
                    (Target::Key(_), Op::Enqueue { places, .. }) => !places.is_empty(),
                    (Target::Key(_), Op::Dequeue { members, .. }) => !members.is_empty(),
                    (Target::Key(_), Op::Unclaim { .. }) => self.k.claims,
                    // The two-phase step; with the counter in the script, it
                    // is the fallback when key 0 was not among the keys won.
                    (Target::Fence(_), Op::FenceRead | Op::FenceWrite { .. }) => {
                        cfg.fencing != Fencing::Off
                    }
                    _ => false,
                };
                if !ok_target || !ok_op {
                    return Err(format!("{}: malformed Send {target:?} {op:?}", here()));
                }
                // Invariant 4: keys are written only under a live token.
                if let Op::Acquire { token, .. } | Op::Extend { token, .. } = op {
                    if live.as_ref() != Some(token) {
                        return Err(format!(
                            "{}: write {op:?} sent under a token that is not live ({live:?})",
                            here()
                        ));
                    }
                }
                // As the shell: an acquisition or release fed on a caller's
                // runtime, with no other write of its key out but its own
                // deletes and what it may go behind, may go on the direct
                // connection (and the core is told which one it took). So
                // may an acquisition fed on the engine's thread (a waiter's
                // retry), if a direct connection is open: none is opened
                // for it, and the core is told only that it went on one in
                // no known order, since the shell's task writes it later.
                let core = &self.procs[proc].cores[name].core;
                let acquire = matches!(op, Op::Acquire { .. });
                let (route, lane) = match (self.k.direct, self.caller_fed) {
                    (true, true) => (core.route(*cmd), DirectUse::Caller),
                    (true, false) if acquire => (core.route(*cmd), DirectUse::IfOpen),
                    _ => (Route::Engine, DirectUse::Caller),
                };
                if acquire && core.attempt_in_chain() {
                    self.stats.chained += 1;
                }
                let dest = Dest { proc, name, inc };
                let taken = self.send(dest, *cmd, *target, op.clone(), route, lane);
                let core = &mut self.procs[proc].cores[name].core;
                match (taken, lane) {
                    (Some(generation), DirectUse::Caller) => core.went_direct(*cmd, generation),
                    (Some(_), DirectUse::IfOpen) => core.went_unordered(*cmd),
                    (None, _) => {}
                }
            }
            Effect::Grant {
                to,
                holder,
                valid_until,
                fence,
                ..
            } => {
                let current = holding.as_ref().is_some_and(|h| h.holder == *holder);
                let ended_later = later.iter().any(|l| {
                    matches!(l, Effect::Status { holder: h, status: HolderStatus::Ended(_) } if h == holder)
                });
                if !current && !ended_later {
                    return Err(format!(
                        "{}: Grant of holder {holder} the core does not hold",
                        here()
                    ));
                }
                if current
                    && holding
                        .as_ref()
                        .is_some_and(|h| h.ends_at != *valid_until || h.fence != *fence)
                {
                    return Err(format!(
                        "{}: Grant {e:?} disagrees with the core's grant {holding:?}",
                        here()
                    ));
                }
                if *valid_until <= local {
                    return Err(format!(
                        "{}: Grant already expired ({valid_until:?} <= {local:?})",
                        here()
                    ));
                }
                let others = self.procs[proc].active.iter().any(|&i| {
                    let c = &self.procs[proc].callers[i];
                    c.name == name
                        && matches!(
                            c.stage,
                            Stage::Held {
                                status: HolderStatus::Held { .. },
                                ..
                            }
                        )
                });
                if others {
                    return Err(format!(
                        "{}: Grant while another local caller still holds",
                        here()
                    ));
                }
                let token = holding
                    .as_ref()
                    .filter(|h| h.holder == *holder)
                    .map(|h| h.token.clone());
                let Some(c) = self.procs[proc].caller(*to) else {
                    return Err(format!("{}: Grant to unknown request {to}", here()));
                };
                if c.name != name || !matches!(c.stage, Stage::Waiting) {
                    return Err(format!(
                        "{}: Grant to request {to} that is not waiting ({:?})",
                        here(),
                        c.stage
                    ));
                }
                // The grant's token claims its caller's permit count (a
                // hand-over never crosses claims).
                if let Some(t) = &token {
                    let claimed = claimed_permits(t.as_str());
                    if claimed != c.permits {
                        return Err(format!(
                            "{}: Grant to request {to} claiming {:?} under token {t:?} claiming {claimed:?}",
                            here(),
                            c.permits
                        ));
                    }
                }
                if c.kind == RequestKind::Wait {
                    let asked = c.asked;
                    self.check_fair_order(name, asked)
                        .map_err(|e| format!("{}: {e}", here()))?;
                }
                let c = self.procs[proc].caller(*to).expect("checked");
                let cancelled = c.cancelled;
                let forever = c.forever;
                let until_real = self.procs[proc].clock.real_at(*valid_until);
                let c = self.procs[proc].caller(*to).expect("checked");
                c.stage = Stage::Held {
                    inc,
                    holder: *holder,
                    status: HolderStatus::Held {
                        valid_until: *valid_until,
                    },
                    token: token.clone(),
                    until_real,
                };
                self.stats.grants += 1;
                self.inv.granted(
                    proc,
                    name,
                    token.as_ref(),
                    *fence,
                    self.restarted || self.data_lost,
                    &cfg,
                )?;
                if cancelled {
                    // The caller is gone: the shell releases at once.
                    let c = self.procs[proc].caller(*to).expect("checked");
                    c.released = true;
                    self.procs[proc].active.retain(|&i| i as u64 + 1 != *to);
                    todo.push(Event::Release {
                        holder: *holder,
                        ack: None,
                    });
                } else if forever && self.stage == RunStage::Main {
                    // Held until the run winds down.
                } else {
                    let hold = if self.work.chance(65) {
                        self.work.range(0, 20 * MS)
                    } else {
                        self.work.range(20 * MS, 2 * self.ttl())
                    };
                    let ack = self.work.chance(50);
                    self.q.push(
                        self.now + hold,
                        Ev::Release {
                            proc,
                            req: *to,
                            ack,
                        },
                    );
                }
            }
            Effect::Refuse { to, why } => {
                let Some(c) = self.procs[proc].caller(*to) else {
                    return Err(format!("{}: Refuse to unknown request {to}", here()));
                };
                if c.name != name || !matches!(c.stage, Stage::Waiting) {
                    return Err(format!(
                        "{}: Refuse to request {to} that is not waiting ({:?})",
                        here(),
                        c.stage
                    ));
                }
                let mismatch = matches!(why, Refusal::ConfigMismatch { .. });
                if c.kind == RequestKind::Wait
                    && *why != Refusal::Closed
                    && !(self.k.permits && mismatch)
                {
                    return Err(format!("{}: a waiting lock() refused with {why:?}", here()));
                }
                c.stage = Stage::Done;
                self.procs[proc].active.retain(|&i| i as u64 + 1 != *to);
            }
            Effect::Status { holder, status } => {
                let Some(i) = self.procs[proc].holder_index(name, inc, *holder) else {
                    return Err(format!(
                        "{}: Status for holder {holder} nobody holds",
                        here()
                    ));
                };
                let until = match status {
                    HolderStatus::Held { valid_until } => {
                        self.procs[proc].clock.real_at(*valid_until)
                    }
                    HolderStatus::Ended(_) => 0,
                };
                let c = &mut self.procs[proc].callers[i];
                let Stage::Held {
                    status: cur,
                    until_real,
                    ..
                } = &mut c.stage
                else {
                    unreachable!("holder_index finds held callers");
                };
                if let HolderStatus::Ended(_) = cur {
                    return Err(format!(
                        "{}: Status {status:?} after the holder's end",
                        here()
                    ));
                }
                if let HolderStatus::Held { valid_until } = status {
                    if *valid_until <= local {
                        return Err(format!("{}: Held status already expired", here()));
                    }
                }
                *cur = *status;
                *until_real = until;
                if let HolderStatus::Ended(_) = status {
                    if c.forever || self.stage != RunStage::Main {
                        // Nobody would release it otherwise.
                        let req = i as u64 + 1;
                        let at = self.now + self.work.range(0, 5 * MS);
                        self.q.push(
                            at,
                            Ev::Release {
                                proc,
                                req,
                                ack: false,
                            },
                        );
                    }
                }
            }
            Effect::Released { ack, .. } => {
                let acks = &mut self.procs[proc].acks;
                let Some(pos) = acks.iter().position(|a| a == ack) else {
                    return Err(format!(
                        "{}: Released for unknown or answered ack {ack}",
                        here()
                    ));
                };
                acks.swap_remove(pos);
            }
            Effect::Idle => {
                let busy = self.procs[proc].active.iter().any(|&i| {
                    let c = &self.procs[proc].callers[i];
                    c.name == name
                        && match &c.stage {
                            Stage::Waiting => !c.cancelled,
                            Stage::Held {
                                status, inc: ci, ..
                            } => *ci == inc && matches!(status, HolderStatus::Held { .. }),
                            Stage::Done => false,
                        }
                });
                if busy || holding.is_some() {
                    return Err(format!("{}: Idle while callers wait or hold", here()));
                }
                if self.stage != RunStage::Closing && later.is_empty() && self.work.chance(50) {
                    self.retire(proc, name);
                }
            }
            Effect::Closed => {
                self.procs[proc].cores[name].closed = true;
            }
        }
        Ok(())
    }

    /// Fair queueing, in a run without faults other than stalls, forces or
    /// disagreeing permit claims: a waiter granted the name must not have
    /// overtaken a waiter of any process that asked for it before, give or
    /// take what the order cannot see: a place still on its way to the
    /// servers (a trip, and a slow one, or held up by a stall), and the
    /// processes' clocks running at different rates (the order is by their
    /// wall clocks). Nor is the order kept for a waiter whose own process
    /// does not reach a majority now (a fault a scenario made by hand,
    /// `sim_slow_head_of_the_queue`), or across a stall that can lose the
    /// queue.
    fn check_fair_order(&self, name: usize, asked: u64) -> Result<(), String> {
        if !self.k.fair || self.k.faults & !STALL != 0 || self.k.force || self.k.permits {
            return Ok(());
        }
        let rates = 2 * self.k.max_ppm * self.now / 1_000_000;
        let slack = 2 * self.max_trip() + rates;
        // A place sent at `asked` that a stall held up on its way (the
        // exception of guarantee 2: a waiter whose place is still on its way
        // may be passed), or a wait across a stall of at least a place's
        // life and its aftermath, which can lose the queue (guarantee 4).
        let life = self.ttl();
        let held_up = |asked: u64| {
            self.stalled_spans.iter().any(|&(from, until)| {
                (from < asked + self.max_trip() && until > asked)
                    || (until - from >= life && until + 3 * life > asked)
            })
        };
        for (p, pr) in self.procs.iter().enumerate() {
            if !self.reaches_majority(p) {
                continue;
            }
            for &i in &pr.active {
                let v = &pr.callers[i];
                if v.name == name
                    && v.kind == RequestKind::Wait
                    && !v.cancelled
                    && matches!(v.stage, Stage::Waiting)
                    && v.asked + slack < asked
                    && !held_up(v.asked)
                {
                    return Err(format!(
                        "unfair: a waiter that asked at {} ms granted while p{p}'s waiter of {} ms still waits",
                        asked / MS,
                        v.asked / MS
                    ));
                }
            }
        }
        Ok(())
    }

    /// The shell retires an idle core; the name's next use starts a fresh
    /// one.
    fn retire(&mut self, proc: usize, name: usize) {
        let local = self.procs[proc].clock.local(self.now);
        let entropy = Box::new(SimEntropy(self.work.fork()));
        let cfg = self.procs[proc].cfg.clone();
        let slot = &mut self.procs[proc].cores[name];
        slot.core = new_core(cfg, entropy, local, &self.k);
        slot.inc += 1;
        slot.timer = None;
        self.log(|| format!("p{proc} name{name} core retired"));
    }

    // ===== winding down =====

    fn quiesce(&mut self) {
        self.stage = RunStage::Quiesce;
        self.log(|| "QUIESCE: faults healed, no new callers".to_string());
        for proc in 0..self.k.procs {
            for node in 0..self.k.nodes {
                self.conns[proc][node].slow = 0;
                self.reconnect(proc, node);
            }
        }
        let mut held = 0;
        for proc in 0..self.k.procs {
            for i in self.procs[proc].active.clone() {
                let c = &self.procs[proc].callers[i];
                if matches!(c.stage, Stage::Held { .. }) && c.forever {
                    let at = self.now + self.work.range(0, 10 * MS);
                    self.q.push(
                        at,
                        Ev::Release {
                            proc,
                            req: i as u64 + 1,
                            ack: true,
                        },
                    );
                }
                held += 1;
            }
        }
        // Each caller in turn: a hold of up to twice the validity, then the
        // liveness bound; plus a node that stays down up to twice the validity.
        let per = self.inv.liveness_bound + 2 * self.ttl();
        self.deadline = self.now + (held + 2) * per + 3 * self.ttl();
    }

    fn close_all(&mut self) -> Result<(), String> {
        self.stage = RunStage::Closing;
        self.log(|| "CLOSING".to_string());
        for proc in 0..self.k.procs {
            for name in 0..self.k.names {
                self.feed(proc, name, Event::Close)?;
            }
        }
        let bound = self.cfg.reply_bound().as_nanos() as u64;
        self.deadline = self.now + 2 * bound + 2 * self.max_trip();
        Ok(())
    }

    fn all_done(&self) -> bool {
        self.procs.iter().all(|p| p.active.is_empty())
    }

    fn all_closed(&self) -> bool {
        self.procs.iter().all(|p| p.cores.iter().all(|c| c.closed))
    }

    fn finish(&mut self) -> Result<(), String> {
        for (i, p) in self.procs.iter().enumerate() {
            if !p.acks.is_empty() {
                return Err(format!("p{i}: release acks never answered: {:?}", p.acks));
            }
        }
        Ok(())
    }

    fn pending_summary(&self) -> String {
        let mut s = String::new();
        for (pi, p) in self.procs.iter().enumerate() {
            for &i in &p.active {
                let c = &p.callers[i];
                s.push_str(&format!(
                    "p{pi} req{} name{} {:?} {:?} asked {:.3}ms; ",
                    i + 1,
                    c.name,
                    c.kind,
                    c.stage,
                    c.asked as f64 / 1e6
                ));
            }
            for (n, c) in p.cores.iter().enumerate() {
                s.push_str(&format!(
                    "p{pi} name{n} core {} closed {}; ",
                    c.core.phase_name(),
                    c.closed
                ));
            }
        }
        s
    }
}

/// The permit count a token's fingerprint claims (`…:m2n1p3` → `Some(3)`).
fn claimed_permits(token: &str) -> Option<u16> {
    let fingerprint = token.rsplit(':').next()?;
    fingerprint.split_once('p')?.1.parse().ok()
}

/// A lock core as a process's shell makes it, with the run's notice
/// allowance.
fn new_core(cfg: Arc<Config>, entropy: Box<SimEntropy>, local: Time, k: &Knobs) -> LockCore {
    let mut core = LockCore::new(cfg, Draws::Given(entropy), local);
    core.set_allowance(Duration::from_millis(k.allowance_ms));
    core
}
