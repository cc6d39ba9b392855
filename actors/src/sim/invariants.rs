//! The invariants checked after every step of a run, and the book-keeping
//! they need. Each states what it assumes; see `mod.rs` for the list.

use std::collections::{HashMap, HashSet};

use crate::core::{Config, Fencing, HolderStatus};
use crate::scripts::Token;

use super::model::is_forced;
use super::network::Link;
use super::process::Stage;
use super::world::{World, DATA_LOSS};
use super::{Knobs, MS};

/// State the invariants keep across steps.
#[derive(Debug)]
pub(super) struct Checks {
    /// Tokens whose keys a `force_lock` overwrote: their holders may overlap
    /// with the forcing one until they hear of it, on purpose.
    pub(super) victims: HashSet<String>,
    /// Real time each token stopped being live in its core.
    ended: HashMap<String, u64>,
    /// Per name: the highest fencing token granted, and its lock token.
    fence_max: Vec<Option<(u64, String)>>,
    /// Per (process, name): the lock token and fence of its last grant (a
    /// local hand-over keeps both).
    last_grant: Vec<Vec<Option<(String, u64)>>>,
    /// Per name: since when a waiter waits on a free lock with a majority
    /// reachable.
    stuck_since: Vec<Option<u64>>,
    /// Data-loss runs: since when a held token has fewer than `M` keys.
    short_since: HashMap<String, u64>,
    /// Per name: a third party's key blocks it until then (real time).
    pub(super) blocked_until: Vec<u64>,
    /// How long a waiter may wait on a free, reachable lock (invariant 3).
    pub(super) liveness_bound: u64,
    /// How long a holder may go on after data loss took its majority.
    told_bound: u64,
}

impl Checks {
    pub(super) fn new(k: &Knobs) -> Checks {
        let validity = k.validity_ms * MS;
        let extend = validity / 2;
        let timeout = validity / 10;
        let reply_bound = timeout + timeout / 2 + 10 * MS;
        let trip = k.max_delay_ms * MS + 2 * timeout + 2 * MS;
        Checks {
            victims: HashSet::new(),
            ended: HashMap::new(),
            fence_max: vec![None; k.names],
            last_grant: vec![vec![None; k.names]; k.procs],
            stuck_since: vec![None; k.names],
            blocked_until: vec![0; k.names],
            short_since: HashMap::new(),
            // Keys of a grant that ended unreachable, or written by a late
            // acquisition, live at most one validity; a waiter whose wake-up
            // was lost retries within its jittered fallback period (1.1 ×
            // extend), twice if the first retry splits the keys with another
            // waiter; an attempt is decided, and its deletes answered, within
            // a reply bound each, plus the release pause (≤ timeout) and a
            // few trips.
            liveness_bound: validity + extend * 22 / 10 + 4 * reply_bound + timeout + 4 * trip,
            // The next extension (≤ extend away) reads the loss, within a
            // reply bound; or a reconnect's re-check does.
            told_bound: extend + 3 * reply_bound + 2 * trip,
        }
    }

    pub(super) fn token_ended(&mut self, token: Token, now: u64) {
        self.ended.insert(token.as_str().to_owned(), now);
    }

    /// Invariant 4: a key of `token` now lives until `expiry`; if the token's
    /// life ended, that may be at most `limit` (one trip plus the TTL) after.
    /// Expiries only move on writes, so checking writes checks every key.
    pub(super) fn key_written(&self, token: &Token, expiry: u64, limit: u64) -> Result<(), String> {
        match self.ended.get(token.as_str()) {
            Some(&end) if expiry > end + limit + MS => Err(format!(
                "a key of a token that ended at {:.3}ms written to live until {:.3}ms",
                end as f64 / 1e6,
                expiry as f64 / 1e6
            )),
            _ => Ok(()),
        }
    }

    /// Invariant 5: fencing tokens strictly increase per name in grant order.
    /// Assumes no restart or data loss so far (the counters live on the
    /// nodes). A force may overtake an attempt in flight, so a decrease
    /// between a force's grant and its victim's is excused.
    pub(super) fn granted(
        &mut self,
        proc: usize,
        name: usize,
        token: Option<&Token>,
        fence: u64,
        counters_lost: bool,
        cfg: &Config,
    ) -> Result<(), String> {
        self.stuck_since[name] = None;
        let Some(token) = token else {
            return Ok(());
        };
        let token = token.as_str();
        let last = self.last_grant[proc][name].replace((token.to_owned(), fence));
        if cfg.fencing == Fencing::Off || counters_lost {
            return Ok(());
        }
        if let Some((t, f)) = last {
            if t == token {
                // A local hand-over: same keys, same fence.
                return if f == fence {
                    Ok(())
                } else {
                    Err(format!("hand-over changed the fence {f} -> {fence}"))
                };
            }
        }
        if fence == 0 {
            return Err(format!("p{proc} name{name}: fencing on but fence 0"));
        }
        if let Some((max, mtok)) = &self.fence_max[name] {
            if fence <= *max {
                let forced = is_forced(token)
                    || is_forced(mtok)
                    || self.victims.contains(token)
                    || self.victims.contains(mtok.as_str());
                if !forced {
                    return Err(format!(
                        "p{proc} name{name}: fencing token {fence} not above {max} granted before"
                    ));
                }
                return Ok(());
            }
        }
        self.fence_max[name] = Some((fence, token.to_owned()));
        Ok(())
    }
}

impl World {
    /// The `M`-th longest real expiry among `token`'s keys of `name` (keys
    /// lost in an in-model restart count until their expiry).
    fn mth_expiry(&self, name: usize, token: &str) -> u64 {
        let total = self.cfg.total;
        let mut exp = [0u64; 8];
        for (key, slot_exp) in exp.iter_mut().enumerate().take(total) {
            let node = &self.nodes[self.cfg.placement[key]];
            let slot = name * total + key;
            let mut e = node
                .peek(slot, self.now)
                .filter(|e| e.value == token)
                .map_or(0, |e| e.expiry);
            for g in &node.ghosts {
                if g.slot == slot && g.value == token && g.expiry > self.now {
                    e = e.max(g.expiry);
                }
            }
            *slot_exp = e;
        }
        exp.sort_unstable_by(|a, b| b.cmp(a));
        exp[self.cfg.majority - 1]
    }

    /// Whether process `proc` reaches nodes holding a majority of the keys
    /// (a stalled node reaches nobody).
    pub(super) fn reaches_majority(&self, proc: usize) -> bool {
        let up = (0..self.cfg.total)
            .filter(|&k| {
                let n = self.cfg.placement[k];
                let c = &self.conns[proc][n];
                self.nodes[n].up
                    && c.link == Link::Up
                    && c.slow == 0
                    && self.stalls[n].1 <= self.now
            })
            .count();
        up >= self.cfg.majority
    }

    /// Every invariant, after one step.
    pub(super) fn check(&mut self) -> Result<(), String> {
        let data_loss_family = self.k.faults & DATA_LOSS != 0;
        let mut reach = [false; 8];
        for (p, r) in reach.iter_mut().enumerate().take(self.k.procs) {
            *r = self.reaches_majority(p);
        }
        for name in 0..self.k.names {
            // (process, token, short) of everyone who considers itself holder.
            let mut holders: Vec<(usize, Option<String>, bool)> = Vec::new();
            let mut waiting = false;
            for (pi, p) in self.procs.iter().enumerate() {
                let local = p.clock.local(self.now);
                for &i in &p.active {
                    let c = &p.callers[i];
                    if c.name != name {
                        continue;
                    }
                    if let Stage::Waiting = c.stage {
                        if !c.cancelled && c.kind == crate::core::RequestKind::Wait && reach[pi] {
                            waiting = true;
                        }
                    }
                    let Stage::Held {
                        status: HolderStatus::Held { valid_until },
                        token,
                        until_real,
                        ..
                    } = &c.stage
                    else {
                        continue;
                    };
                    // The holder is told by the end of its validity: the
                    // core's deadline is the published one, or earlier by
                    // the shell's allowance.
                    if local > *valid_until + std::time::Duration::from_millis(1) {
                        return Err(format!(
                            "p{pi} req{} still Held at {local:?}, past its valid_until {valid_until:?}",
                            i + 1
                        ));
                    }
                    if local >= *valid_until {
                        continue;
                    }
                    let mut short = false;
                    if let Some(t) = token.as_ref().filter(|_| data_loss_family) {
                        // Retaken keys (an extension's NX) can restore the
                        // majority: the clock restarts at the next loss.
                        if self.mth_expiry(name, t.as_str()) >= *until_real {
                            self.inv.short_since.remove(t.as_str());
                        }
                    }
                    if let Some(t) = token {
                        // Invariant 2: validity within the M-th key's life.
                        let need = *until_real;
                        let have = self.mth_expiry(name, t.as_str());
                        if have < need && !self.inv.victims.contains(t.as_str()) {
                            if !data_loss_family {
                                return Err(format!(
                                    "p{pi} req{} name{name}: valid_until {valid_until:?} is real {:.3}ms, but its M-th key lives only until {:.3}ms",
                                    i + 1,
                                    need as f64 / 1e6,
                                    have as f64 / 1e6
                                ));
                            }
                            short = true;
                            let since = *self
                                .inv
                                .short_since
                                .entry(t.as_str().to_owned())
                                .or_insert(self.now);
                            if self.now - since > self.inv.told_bound {
                                let core = &p.cores[name].core;
                                return Err(format!(
                                    "p{pi} req{} name{name}: lost its majority to data loss {:.3}ms ago and was not told (real {}, local {local:?}, timer {:?}, clock {:?}, next timeout {:?}, {core:?})",
                                    i + 1,
                                    (self.now - since) as f64 / 1e6,
                                    self.now, p.cores[name].timer, p.clock, core.next_timeout()
                                ));
                            }
                        }
                    }
                    holders.push((pi, token.as_ref().map(|t| t.as_str().to_owned()), short));
                }
            }
            // Invariant 1: one holder per name at any real instant.
            for a in 0..holders.len() {
                for b in a + 1..holders.len() {
                    let (pa, ta, sa) = &holders[a];
                    let (pb, tb, sb) = &holders[b];
                    if pa == pb {
                        return Err(format!("p{pa} name{name}: two local holders at once"));
                    }
                    let victim = |t: &Option<String>| {
                        t.as_ref().is_some_and(|t| self.inv.victims.contains(t))
                    };
                    if victim(ta) || victim(tb) || *sa || *sb {
                        self.stats.excused += 1;
                        continue;
                    }
                    return Err(format!(
                        "name{name}: p{pa} and p{pb} both consider themselves holder"
                    ));
                }
            }
            // Invariant 3: a waiter does not wait long on a free lock.
            // A third party's key holds the name like a holder would.
            let free = holders.is_empty() && self.now >= self.inv.blocked_until[name];
            if free && waiting {
                let since = *self.inv.stuck_since[name].get_or_insert(self.now);
                if self.now - since > self.inv.liveness_bound {
                    return Err(format!(
                        "name{name}: free and reachable for {:.3}ms, waiters still wait",
                        (self.now - since) as f64 / 1e6
                    ));
                }
            } else {
                self.inv.stuck_since[name] = None;
            }
        }
        Ok(())
    }
}
