//! Table tests of the lock core: scripted events in, effects out.

use std::sync::Arc;
use std::time::Duration;

use super::lock::{IDLE_GRACE, REARM_DELAY};
use super::*;
use crate::error::LostReason;
use crate::scripts::{KeyState, SetMode};

/// A counter as entropy: tokens differ, runs repeat.
struct Counter(u64);

impl Entropy for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 33) as u8;
        }
    }
}

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Time {
    Time::from_nanos(n * 1_000_000)
}

fn config(majority: usize, nodes: usize) -> Config {
    let total = 2 * majority - 1;
    Config {
        majority,
        total,
        nodes,
        placement: (0..total).map(|i| i % nodes).collect(),
        terms: std::sync::Arc::new(Terms {
            life: Life {
                ttl: 1000 * MS,
                drift: 12 * MS,
            },
            extend: 500 * MS,
            margin: 10 * MS,
            max_hold: None,
            permits: None,
        }),
        extend: 500 * MS,
        timeout: 100 * MS,
        tracking: true,
        handover_limit: 32,
        fencing: Fencing::Off,
        fingerprint: crate::scripts::Fingerprint::new(majority, nodes),
        epoch: Time::ZERO,
        fair: None,
        handover: None,
    }
}

struct Rig {
    core: LockCore,
    now: Time,
}

impl Rig {
    fn new(cfg: Config) -> Rig {
        Rig {
            core: LockCore::new(
                Arc::new(cfg),
                Draws::Given(Box::new(Counter(7))),
                Time::ZERO,
            ),
            now: Time::ZERO,
        }
    }

    fn at(&mut self, t: Time) -> &mut Self {
        self.now = t;
        self
    }

    fn ev(&mut self, e: Event) -> Vec<Effect> {
        self.core.handle(self.now, e);
        std::iter::from_fn(|| self.core.poll_effect()).collect()
    }

    fn tick(&mut self, t: Time) -> Vec<Effect> {
        self.now = t;
        self.ev(Event::Timeout)
    }
}

fn sends(effects: &[Effect]) -> Vec<(CmdId, Target, Op)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { cmd, target, op } => Some((*cmd, *target, op.clone())),
            _ => None,
        })
        .collect()
}

fn ours() -> Outcome {
    Outcome::Key(KeyState::Ours {
        pttl_ms: None,
        fence: None,
    })
}

fn other() -> Outcome {
    Outcome::Key(KeyState::Other {
        forced: false,
        owner: None,
    })
}

fn reply(cmd: CmdId, outcome: Outcome) -> Event {
    Event::Reply { cmd, outcome }
}

/// The fencing token of the first grant among `effects`, if any.
fn granted_fence(effects: &[Effect]) -> Option<u64> {
    effects.iter().find_map(|e| match e {
        Effect::Grant { fence, .. } => Some(*fence),
        _ => None,
    })
}

fn grants(effects: &[Effect]) -> Vec<(ReqId, HolderId, Time)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Grant {
                to,
                holder,
                valid_until,
                ..
            } => Some((*to, *holder, *valid_until)),
            _ => None,
        })
        .collect()
}

fn ended(effects: &[Effect]) -> Vec<(HolderId, LostReason)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Status {
                holder,
                status: HolderStatus::Ended(r),
            } => Some((*holder, *r)),
            _ => None,
        })
        .collect()
}

/// A waiter acquires all three keys at t=0 (replies at t=1ms).
fn held(rig: &mut Rig) -> (HolderId, Vec<(CmdId, Target, Op)>) {
    let fx = rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    });
    let s = sends(&fx);
    assert_eq!(s.len(), 3);
    rig.at(ms(1));
    let mut all = Vec::new();
    for (cmd, _, _) in &s {
        all.extend(rig.ev(reply(*cmd, ours())));
    }
    let g = grants(&all);
    assert_eq!(g.len(), 1, "{all:?}");
    (g[0].1, s)
}

#[test]
fn a_waiter_is_granted_the_majority_with_validity_from_send_time() {
    let mut rig = Rig::new(config(2, 3));
    let fx = rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    });
    let s = sends(&fx);
    assert_eq!(
        s.iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![Target::Key(0), Target::Key(1), Target::Key(2)]
    );
    assert!(matches!(
        &s[0].2,
        Op::Acquire {
            mode: SetMode::Nx,
            fence: false,
            ..
        }
    ));
    rig.at(ms(3));
    assert!(grants(&rig.ev(reply(s[0].0, ours()))).is_empty());
    let fx = rig.ev(reply(s[1].0, ours()));
    // Sent at 0: 1000 − 12 drift − 10 margin.
    assert_eq!(grants(&fx), vec![(1, grants(&fx)[0].1, ms(978))]);
    assert_eq!(rig.core.phase_name(), "holding");
}

#[test]
fn a_try_against_a_held_lock_is_refused_and_its_key_released() {
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 9,
        kind: RequestKind::Try,
        terms: None,
    }));
    rig.ev(reply(s[0].0, ours()));
    rig.ev(reply(s[1].0, other()));
    let fx = rig.ev(reply(s[2].0, other()));
    assert!(fx.contains(&Effect::Refuse {
        to: 9,
        why: Refusal::NotLocked {
            acquired: 1,
            held_by_others: true
        }
    }));
    let rel = sends(&fx);
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0].1, Target::Key(0));
    assert!(matches!(rel[0].2, Op::Release { .. }));
}

#[test]
fn a_stale_ours_cannot_undo_a_newer_gone() {
    // Finding 12: replies applied in arrival order let an old "ours" undo a
    // newer "absent". Newest-sent wins.
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 3);
    // Key 0 invalidated: a verify is sent after the extension.
    let ver = sends(&rig.ev(Event::Invalidated { key: 0 }));
    assert_eq!(ver.len(), 1);
    rig.at(ms(502));
    rig.ev(reply(ver[0].0, Outcome::Key(KeyState::Absent)));
    // The extension's late "ours" for key 0 is older: ignored.
    rig.ev(reply(ext[0].0, ours()));
    // Key 1 is deleted too: only key 2 is ours, so the grant ends now.
    let v1 = sends(&rig.ev(Event::Invalidated { key: 1 }));
    let fx = rig.ev(reply(v1[0].0, Outcome::Key(KeyState::Absent)));
    assert_eq!(ended(&fx), vec![(holder, LostReason::Deleted)]);
}

#[test]
fn a_late_acquisition_reply_is_not_an_extension() {
    // Finding 12: late acquisition replies were counted as extension replies.
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.at(ms(1));
    rig.ev(reply(s[0].0, ours()));
    let g = grants(&rig.ev(reply(s[1].0, ours())));
    assert_eq!(g.len(), 1);
    // Key 2's acquisition went overdue at 160: the extension at 500 retakes
    // it with NX, the others with XX.
    let ext = sends(&rig.tick(ms(500)));
    let modes: Vec<_> = ext
        .iter()
        .map(|x| match &x.2 {
            Op::Extend { mode, .. } => *mode,
            op => panic!("{op:?}"),
        })
        .collect();
    assert_eq!(modes, vec![SetMode::Xx, SetMode::Xx, SetMode::Nx]);
    // The acquisition of key 2 answers late: ours from 0 (sent then).
    let fx = rig.at(ms(501)).ev(reply(s[2].0, ours()));
    assert!(ended(&fx).is_empty());
    rig.at(ms(502));
    let mut last = Vec::new();
    for (cmd, _, _) in &ext {
        last.extend(rig.ev(reply(*cmd, ours())));
    }
    // Validity: M-th largest of {1488, 1488, 988} = 1488 − margin.
    let until = last.iter().rev().find_map(|e| match e {
        Effect::Status {
            status: HolderStatus::Held { valid_until },
            ..
        } => Some(*valid_until),
        _ => None,
    });
    assert_eq!(until, Some(ms(1478)));
}

#[test]
fn the_holder_is_told_a_margin_before_the_computed_end() {
    // Finding 1: the deadline fired at exactly valid_until, then went through
    // a mailbox. The core's deadline is the terms' margin before the computed
    // end, plus the shell's allowance (none here), and never after the
    // published valid_until.
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 3);
    // No reply ever comes (a silent partition); commands go overdue at 660.
    assert!(ended(&rig.tick(ms(660))).is_empty());
    assert_eq!(
        rig.core.next_timeout(),
        Some(ms(977)).min(rig.core.next_timeout())
    );
    let fx = rig.tick(ms(978));
    assert_eq!(ended(&fx), vec![(holder, LostReason::Unreachable)]);
}

/// One key on one node, held from t=1 ms by a shell that asked for
/// `allowance`; returns the holder and its published end.
fn held_with_allowance(rig: &mut Rig, allowance: Duration) -> (HolderId, Time) {
    rig.core.set_allowance(allowance);
    let fx = rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    });
    rig.at(ms(1));
    let all = rig.ev(reply(sends(&fx)[0].0, ours()));
    let g = grants(&all);
    assert_eq!(g.len(), 1, "{all:?}");
    (g[0].1, g[0].2)
}

#[test]
fn the_allowance_moves_the_core_deadline_before_the_published_end() {
    // Issue #11: telling 10,000 holders at once takes the shell tens of
    // milliseconds. The core ends the grant the allowance before the
    // holder's published end, so that the last one told still learns it by
    // its valid_until; the published end keeps only the terms' margin.
    let mut rig = Rig::new(config(1, 1));
    let (holder, until) = held_with_allowance(&mut rig, 50 * MS);
    // Computed end: sent at 0, 1000 − 12 drift = 988; published 988 − 10.
    assert_eq!(until, ms(978));
    // The extension is never answered (the server is frozen).
    assert_eq!(sends(&rig.tick(ms(500))).len(), 1);
    // The core's deadline: 988 − 10 − 50.
    assert_eq!(
        rig.core.next_timeout(),
        Some(ms(928)).min(rig.core.next_timeout())
    );
    assert!(ended(&rig.tick(ms(927))).is_empty());
    let fx = rig.tick(ms(928));
    assert_eq!(ended(&fx), vec![(holder, LostReason::Unreachable)]);
    // The allowance is capped at a fifth of the validity.
    let mut rig = Rig::new(config(1, 1));
    let (_, until) = held_with_allowance(&mut rig, 500 * MS);
    assert_eq!(until, ms(978));
    rig.tick(ms(500));
    assert!(ended(&rig.tick(ms(777))).is_empty());
    assert_eq!(ended(&rig.tick(ms(778))).len(), 1);
}

#[test]
fn a_grant_needs_validity_for_one_extension_round_trip() {
    // Finding 13: a grant was handed out with any validity above zero.
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    // Replies come at 900: 978 − 900 < timeout (100).
    rig.at(ms(900));
    rig.ev(reply(s[0].0, ours()));
    let fx = rig.ev(reply(s[1].0, ours()));
    assert!(grants(&fx).is_empty(), "{fx:?}");
    assert_eq!(rig.core.phase_name(), "idle");
    assert_eq!(sends(&fx).len(), 2, "both keys released");
}

#[test]
fn a_lost_key_is_not_counted_while_another_is_pending() {
    // Finding 14: validity kept counting a key known lost when a pending key
    // could still complete the majority.
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.at(ms(1));
    rig.ev(reply(s[0].0, ours()));
    let (_, holder, _) = grants(&rig.ev(reply(s[1].0, ours())))[0];
    let v = sends(&rig.ev(Event::Invalidated { key: 1 }));
    let fx = rig.ev(reply(v[0].0, Outcome::Key(KeyState::Absent)));
    assert_eq!(ended(&fx), vec![(holder, LostReason::Deleted)]);
}

#[test]
fn waiters_wake_only_on_keys_that_blocked_them() {
    // Defect 5: a failed attempt's own deletes of free keys woke the other
    // waiting process, which woke this one, at network speed.
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.ev(reply(s[0].0, other()));
    rig.ev(reply(s[1].0, other()));
    let fx = rig.ev(reply(s[2].0, ours()));
    assert_eq!(sends(&fx).len(), 1, "key 2 released");
    assert!(sends(&rig.ev(Event::Invalidated { key: 2 })).is_empty());
    let again = sends(&rig.ev(Event::Invalidated { key: 0 }));
    assert_eq!(again.len(), 3, "the holder's key changed: retry at once");
}

#[test]
fn a_fallback_retry_is_always_armed_for_waiters() {
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    for (cmd, _, _) in &s {
        rig.ev(reply(*cmd, other()));
    }
    let at = rig.core.next_timeout().expect("retry armed");
    assert!(at >= ms(450) && at <= ms(550), "{at:?}");
    assert_eq!(sends(&rig.tick(at)).len(), 3);
}

#[test]
fn release_hands_over_to_a_local_waiter_then_deletes() {
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    });
    let fx = rig.ev(Event::Release {
        holder,
        ack: Some(50),
    });
    assert_eq!(ended(&fx), vec![(holder, LostReason::Released)]);
    let g = grants(&fx);
    assert_eq!(g.len(), 1);
    assert!(fx.contains(&Effect::Released {
        ack: 50,
        deleted: 0,
        unconfirmed: 0
    }));
    assert!(sends(&fx).is_empty(), "no round trip for a hand-over");
    // The next release deletes all three keys; its caller waits for them.
    let fx = rig.ev(Event::Release {
        holder: g[0].1,
        ack: Some(51),
    });
    let dels = sends(&fx);
    assert_eq!(dels.len(), 3);
    rig.ev(reply(dels[0].0, Outcome::Released(true)));
    rig.ev(reply(dels[1].0, Outcome::Released(true)));
    let fx = rig.ev(reply(dels[2].0, Outcome::Failed("timed out")));
    assert!(fx.contains(&Effect::Released {
        ack: 51,
        deleted: 2,
        unconfirmed: 1
    }));
}

#[test]
fn release_waits_only_for_its_own_deletes() {
    // Finding 17: release() waited until no release of any kind was out.
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    let dels = sends(&rig.ev(Event::Release { holder, ack: None }));
    assert_eq!(dels.len(), 3);
    // A second grant's holder releasing is not held up by the first's deletes.
    for (cmd, _, _) in &dels {
        rig.ev(reply(*cmd, Outcome::Released(true)));
    }
    let (holder2, _) = {
        let fx = rig.ev(Event::Request {
            id: 3,
            kind: RequestKind::Wait,
            terms: None,
        });
        let s = sends(&fx);
        let mut all = Vec::new();
        for (cmd, _, _) in &s {
            all.extend(rig.ev(reply(*cmd, ours())));
        }
        (grants(&all)[0].1, s)
    };
    // A clean-up delete of something unrelated stays out.
    let fx = rig.ev(Event::Release {
        holder: holder2,
        ack: Some(7),
    });
    let dels2 = sends(&fx);
    for (cmd, _, _) in &dels2 {
        rig.ev(reply(*cmd, Outcome::Released(true)));
    }
    assert!(rig.core.phase_name() == "idle");
    // And releasing an ended holder answers at once.
    let fx = rig.ev(Event::Release {
        holder,
        ack: Some(8),
    });
    assert_eq!(
        fx,
        vec![Effect::Released {
            ack: 8,
            deleted: 0,
            unconfirmed: 0
        }]
    );
}

#[test]
fn overdue_commands_decide_the_attempt_and_late_keys_are_released() {
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 4,
        kind: RequestKind::Try,
        terms: None,
    }));
    rig.ev(reply(s[0].0, other()));
    // Nothing else answers: at the reply bound (160 ms) the attempt fails.
    let fx = rig.tick(ms(160));
    assert!(fx.iter().any(|e| matches!(e, Effect::Refuse { to: 4, .. })));
    // Key 1's acquisition answers late, ours: released with the same token.
    let fx = rig.at(ms(170)).ev(reply(s[1].0, ours()));
    let rel = sends(&fx);
    assert_eq!(rel.len(), 1);
    let (Op::Release { token, .. }, Op::Acquire { token: t0, .. }) = (&rel[0].2, &s[1].2) else {
        panic!("{rel:?}");
    };
    assert_eq!(token, t0);
}

/// A `try_lock` (request 4) on a free name: its acquisitions.
fn tried(rig: &mut Rig) -> Vec<(CmdId, Target, Op)> {
    sends(&rig.ev(Event::Request {
        id: 4,
        kind: RequestKind::Try,
        terms: None,
    }))
}

#[test]
fn an_unanswered_acquisition_of_a_failed_attempt_is_released() {
    // The client's timeout dropped key 1's reply: the acquisition may have
    // run, and no reply will ever say so. Released with the attempt's token
    // when the attempt fails, or it would keep the key from everyone for a
    // validity. Key 2's command never ran (not connected): nothing to delete.
    let mut rig = Rig::new(config(2, 3));
    let s = tried(&mut rig);
    assert!(sends(&rig.ev(reply(s[1].0, Outcome::Unanswered))).is_empty());
    let fx = rig.ev(reply(s[0].0, other()));
    assert!(fx.iter().any(|e| matches!(e, Effect::Refuse { to: 4, .. })));
    let rel = sends(&fx);
    assert_eq!(rel.len(), 1, "{rel:?}");
    let (Op::Release { token, .. }, Op::Acquire { token: t1, .. }) = (&rel[0].2, &s[1].2) else {
        panic!("{rel:?}");
    };
    assert_eq!(rel[0].1, Target::Key(1));
    assert_eq!(token, t1);
    let fx = rig.ev(reply(s[2].0, Outcome::Failed("not connected")));
    assert!(sends(&fx).is_empty(), "{fx:?}");
}

#[test]
fn an_acquisition_unanswered_after_its_attempt_failed_is_released() {
    // The attempt is decided by keys 0 and 1 (held by others) while key 2's
    // acquisition is out; its client then gives up on it.
    let mut rig = Rig::new(config(2, 3));
    let s = tried(&mut rig);
    rig.ev(reply(s[0].0, other()));
    let fx = rig.ev(reply(s[1].0, other()));
    assert!(fx.iter().any(|e| matches!(e, Effect::Refuse { to: 4, .. })));
    assert!(sends(&fx).is_empty(), "{fx:?}");
    let rel = sends(&rig.ev(reply(s[2].0, Outcome::Unanswered)));
    assert!(
        matches!(&rel[..], [(_, Target::Key(2), Op::Release { .. })]),
        "{rel:?}"
    );
    // A failure of a command that never ran leaves nothing to delete.
    let mut rig = Rig::new(config(2, 3));
    let s = tried(&mut rig);
    rig.ev(reply(s[0].0, other()));
    rig.ev(reply(s[1].0, other()));
    let fx = rig.ev(reply(s[2].0, Outcome::Failed("not connected")));
    assert!(sends(&fx).is_empty(), "{fx:?}");
}

#[test]
fn force_takes_over_from_our_own_holder_without_deleting() {
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    assert_eq!(rig.core.holding().map(|h| h.holder), Some(holder));
    let fx = rig.ev(Event::Request {
        id: 5,
        kind: RequestKind::Force,
        terms: None,
    });
    assert_eq!(rig.core.holding(), None);
    assert_eq!(ended(&fx), vec![(holder, LostReason::Forced)]);
    let s = sends(&fx);
    assert_eq!(s.len(), 3);
    assert!(s.iter().all(|x| matches!(
        x.2,
        Op::Acquire {
            mode: SetMode::Force,
            ..
        }
    )));
}

#[test]
fn close_refuses_everyone_releases_and_finishes_when_answered() {
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    });
    let fx = rig.ev(Event::Close);
    assert_eq!(ended(&fx), vec![(holder, LostReason::Closed)]);
    assert!(fx.contains(&Effect::Refuse {
        to: 2,
        why: Refusal::Closed
    }));
    let dels = sends(&fx);
    assert_eq!(dels.len(), 3);
    assert!(!rig.core.is_closed());
    let fx = rig.ev(Event::Request {
        id: 3,
        kind: RequestKind::Try,
        terms: None,
    });
    assert_eq!(
        fx,
        vec![Effect::Refuse {
            to: 3,
            why: Refusal::Closed
        }]
    );
    // The node never answers one delete: closing still ends at its deadline.
    rig.ev(reply(dels[0].0, Outcome::Released(true)));
    rig.ev(reply(dels[1].0, Outcome::Released(true)));
    let fx = rig.tick(ms(200));
    assert!(fx.contains(&Effect::Closed), "{fx:?}");
    assert!(rig.core.is_closed());
}

#[test]
fn an_idle_core_reports_once_after_the_grace() {
    let mut rig = Rig::new(config(1, 1));
    let (holder, _) = held_one(&mut rig);
    let dels = sends(&rig.ev(Event::Release { holder, ack: None }));
    let t = ms(10);
    rig.at(t).ev(reply(dels[0].0, Outcome::Released(true)));
    assert_eq!(rig.core.next_timeout(), Some(t + IDLE_GRACE));
    assert!(!rig.tick(t + IDLE_GRACE - MS).contains(&Effect::Idle));
    assert!(rig.tick(t + IDLE_GRACE).contains(&Effect::Idle));
    assert!(!rig.tick(t + IDLE_GRACE * 2).contains(&Effect::Idle));
    assert_eq!(rig.core.next_timeout(), None);
}

fn held_one(rig: &mut Rig) -> (HolderId, CmdId) {
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    let g = grants(&rig.ev(reply(s[0].0, ours())));
    (g[0].1, s[0].0)
}

#[test]
fn fencing_on_several_nodes_waits_for_the_token() {
    let mut cfg = config(2, 3);
    cfg.fencing = Fencing::Majority;
    let mut rig = Rig::new(cfg);
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.ev(reply(s[0].0, ours()));
    let reads = sends(&rig.ev(reply(s[1].0, ours())));
    assert_eq!(reads.len(), 3);
    assert!(reads.iter().all(|r| r.2 == Op::FenceRead));
    rig.ev(reply(reads[0].0, Outcome::Fence(4)));
    let writes = sends(&rig.ev(reply(reads[1].0, Outcome::Fence(6))));
    assert!(writes.iter().all(|w| w.2 == Op::FenceWrite { value: 7 }));
    rig.ev(reply(
        writes[0].0,
        Outcome::FenceWritten {
            raised: true,
            value: 7,
        },
    ));
    // Finding 10: equal to the value but not raised by us is not an ack.
    assert!(grants(&rig.ev(reply(
        writes[1].0,
        Outcome::FenceWritten {
            raised: false,
            value: 7
        }
    )))
    .is_empty());
    let fx = rig.ev(reply(
        writes[2].0,
        Outcome::FenceWritten {
            raised: true,
            value: 7,
        },
    ));
    let fence = granted_fence(&fx);
    assert_eq!(fence, Some(7));
}

#[test]
fn extensions_tick_on_the_lockers_grid() {
    let mut cfg = config(1, 1);
    // (now, want) with a 500 ms period from epoch 0, then from epoch 3.
    for (now, want) in [(0, 500), (1, 500), (499, 500), (500, 1000), (2501, 3000)] {
        assert_eq!(cfg.next_tick_for_test(ms(now)), ms(want), "{now}");
    }
    cfg.epoch = ms(3);
    // Before the epoch (cannot happen): a full period, no panic.
    for (now, want) in [(0, 500), (3, 503), (502, 503)] {
        assert_eq!(cfg.next_tick_for_test(ms(now)), ms(want), "{now}");
    }
}

#[test]
fn a_check_that_overtakes_an_extension_reply_carries_the_extension() {
    // Without NOLOOP our own extension invalidates the key; the check sent
    // for that invalidation can answer before the (batched) extension does.
    // The extension's reply is then stale, and the check's PTTL must carry
    // the new expiry, or the holder expires although every key was extended.
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    let ext = sends(&rig.tick(ms(500)));
    let mut fx = Vec::new();
    for k in 0..3 {
        let v = sends(&rig.at(ms(503)).ev(Event::Invalidated { key: k }));
        fx.extend(rig.at(ms(504)).ev(reply(
            v[0].0,
            Outcome::Key(KeyState::Ours {
                pttl_ms: Some(998),
                fence: None,
            }),
        )));
    }
    for (cmd, _, _) in &ext {
        fx.extend(rig.at(ms(505)).ev(reply(*cmd, ours())));
    }
    assert!(ended(&rig.tick(ms(1200))).is_empty());
    assert_eq!(
        rig.core.holding().map(|h| (h.holder, h.ends_at)),
        // 503 + 998 − 12 − 10.
        Some((holder, ms(1479)))
    );
}

fn foreign(majority: usize, nodes: usize) -> Outcome {
    Outcome::Key(KeyState::Other {
        forced: false,
        owner: Some(crate::scripts::Fingerprint::new(majority, nodes)),
    })
}

#[test]
fn a_key_of_a_locker_with_another_majority_fails_every_waiter_with_the_mismatch() {
    let mut rig = Rig::new(config(2, 1));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    });
    rig.ev(reply(s[0].0, foreign(1, 1)));
    // Keys 1 and 2 are won, but the attempt is never granted; it fails once
    // its replies are in, releasing what it took.
    assert!(grants(&rig.ev(reply(s[1].0, ours()))).is_empty());
    let fx = rig.ev(reply(s[2].0, ours()));
    assert!(grants(&fx).is_empty());
    let theirs = crate::scripts::Fingerprint::new(1, 1);
    for id in [1, 2] {
        assert!(fx.contains(&Effect::Refuse {
            to: id,
            why: Refusal::ConfigMismatch {
                ours: crate::scripts::Fingerprint::new(2, 1),
                theirs
            }
        }));
    }
    assert_eq!(sends(&fx).len(), 2, "keys 1 and 2 released");
    // A plain other owner (the Go valkeylock, an old version) is just held.
    let mut rig = Rig::new(config(2, 1));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Try,
        terms: None,
    }));
    rig.ev(reply(s[0].0, other()));
    let fx = rig.ev(reply(s[1].0, other()));
    assert!(matches!(
        fx.iter().find(|e| matches!(e, Effect::Refuse { .. })),
        Some(Effect::Refuse {
            why: Refusal::NotLocked { .. },
            ..
        })
    ));
}

#[test]
fn a_mismatch_seen_after_the_majority_ends_the_grant() {
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.ev(reply(s[0].0, ours()));
    let (_, holder, _) = grants(&rig.ev(reply(s[1].0, ours())))[0];
    let fx = rig.ev(reply(s[2].0, foreign(3, 3)));
    assert_eq!(ended(&fx), vec![(holder, LostReason::ConfigMismatch)]);
}

#[test]
fn a_grant_nobody_waits_for_is_released_without_a_status() {
    // Simulator, seed 0x2e63f48cf0091f85: the only waiter cancelled while
    // its attempt was in flight; the attempt won and the core announced
    // `Ended(Released)` for a holder id no caller had ever been given.
    let mut rig = Rig::new(config(1, 1));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    assert!(rig.ev(Event::Cancel { id: 1 }).is_empty());
    let fx = rig.at(ms(1)).ev(reply(s[0].0, ours()));
    assert!(grants(&fx).is_empty(), "{fx:?}");
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Status { .. })),
        "no status for a holder nobody has: {fx:?}"
    );
    let rel = sends(&fx);
    assert_eq!(rel.len(), 1);
    assert!(matches!(rel[0].2, Op::Release { .. }));
}

#[test]
fn the_in_script_fence_is_used_only_when_key_0_is_the_majority() {
    // Simulator, seed 0xb96f171ca89f1069 (one instance, M = 2, fencing in
    // the script): p3 won key 0 and its counter moved to 7; p1 held keys 1
    // and 2, took 8 with the two-phase step, was granted and released; then
    // p3 won key 1 and was granted with 7, below the 8 granted before it.
    let mut cfg = config(2, 1);
    cfg.fencing = Fencing::InScript;
    let mut rig = Rig::new(cfg);
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    assert!(
        s.iter()
            .all(|x| matches!(x.2, Op::Acquire { fence: false, .. })),
        "no counter in the script with three keys: {s:?}"
    );
    // Even if key 0's reply carried a counter, it is not the token.
    let key0 = Outcome::Key(KeyState::Ours {
        pttl_ms: None,
        fence: Some(7),
    });
    rig.at(ms(1)).ev(reply(s[0].0, key0));
    let fx = rig.ev(reply(s[1].0, ours()));
    assert!(grants(&fx).is_empty(), "{fx:?}");
    let reads = sends(&fx);
    assert_eq!(reads.len(), 1);
    assert_eq!(
        (reads[0].1, &reads[0].2),
        (Target::Fence(0), &Op::FenceRead)
    );
    let writes = sends(&rig.ev(reply(reads[0].0, Outcome::Fence(8))));
    assert_eq!(writes[0].2, Op::FenceWrite { value: 9 });
    let fx = rig.ev(reply(
        writes[0].0,
        Outcome::FenceWritten {
            raised: true,
            value: 9,
        },
    ));
    let fence = granted_fence(&fx);
    assert_eq!(fence, Some(9));
}

#[test]
fn with_one_key_the_fence_comes_from_the_script() {
    let mut cfg = config(1, 1);
    cfg.fencing = Fencing::InScript;
    let mut rig = Rig::new(cfg);
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    assert!(matches!(s[0].2, Op::Acquire { fence: true, .. }));
    let key0 = Outcome::Key(KeyState::Ours {
        pttl_ms: None,
        fence: Some(4),
    });
    let fx = rig.at(ms(1)).ev(reply(s[0].0, key0));
    let fence = granted_fence(&fx);
    assert_eq!(fence, Some(4));
}

/// Three keys held since 0; the round of extensions at 500 answers at 501,
/// ours for keys 0 and 1, failed (`why`) for key 2.
fn key_2_failed_to_extend(rig: &mut Rig, why: &'static str) {
    held(rig);
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 3);
    rig.at(ms(501));
    rig.ev(reply(ext[0].0, ours()));
    rig.ev(reply(ext[1].0, ours()));
    rig.ev(reply(ext[2].0, Outcome::Failed(why)));
}

#[test]
fn a_failed_extension_retries_only_its_key() {
    // Defect 5 (the simulator's retry-storm figure): a key whose node does
    // not answer pulled the whole next round forward, rewriting the healthy
    // keys every few tens of milliseconds, and every rewrite woke the waiters
    // of other processes.
    let mut rig = Rig::new(config(2, 3));
    key_2_failed_to_extend(&mut rig, "timed out");
    // The retry comes one timeout later (100 ms), for key 2 alone.
    assert_eq!(rig.core.next_timeout(), Some(ms(601)));
    let retry = sends(&rig.tick(ms(601)));
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(retry[0].1, Target::Key(2));
    // Next: the retry's own reply bound (601 + 160), not a full round.
    assert_eq!(rig.core.next_timeout(), Some(ms(761)));
    let fx = rig
        .at(ms(602))
        .ev(reply(retry[0].0, Outcome::Failed("timed out")));
    assert!(sends(&fx).is_empty());
    assert_eq!(sends(&rig.tick(ms(1000))).len(), 3);
}

#[test]
fn a_reconnect_retries_a_failed_extension_at_once() {
    // An extension cut by a reconnect waited for its retry time (a timeout
    // later) even once the node was back: with 10,000 locks of 1 s validity
    // that came after the validity the keys had left, and the locks were
    // lost while their keys were still theirs.
    let mut rig = Rig::new(config(2, 3));
    key_2_failed_to_extend(&mut rig, "connection closed");
    assert_eq!(rig.core.next_timeout(), Some(ms(601)));
    // Key 2's node is back at 520: its extension goes out now.
    let fx = sends(&rig.at(ms(520)).ev(Event::Recheck { node: Some(2) }));
    assert_eq!(fx.len(), 1, "{fx:?}");
    assert_eq!(fx[0].1, Target::Key(2));
    assert!(matches!(fx[0].2, Op::Extend { .. }), "{fx:?}");
    // A reconnect of a node whose key is fine re-checks it, as before.
    let fx = sends(&rig.at(ms(530)).ev(Event::Recheck { node: Some(0) }));
    assert_eq!(fx.len(), 1, "{fx:?}");
    assert_eq!(fx[0].1, Target::Key(0));
    assert!(matches!(fx[0].2, Op::Verify { .. }), "{fx:?}");
}

#[test]
fn a_reconnect_retries_an_extension_still_out_on_that_node() {
    // A round of extensions out when the connection broke: its commands
    // never answer, or answer as failures after the reconnect's re-check.
    // The re-check only read such a key, and 10,000 locks of 1 s validity
    // cut while their round was out were all lost, the node back 45 ms
    // later (`benches/scale.rs`, reconnect section).
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 3);
    rig.at(ms(501)).ev(reply(ext[0].0, ours()));
    // Node 2 is back at 520: key 2's extension goes out again. Key 1's is
    // out on node 1, which did not reconnect: left to its own answer.
    let fx = sends(&rig.at(ms(520)).ev(Event::Recheck { node: Some(2) }));
    assert_eq!(fx.len(), 1, "{fx:?}");
    assert_eq!(fx[0].1, Target::Key(2));
    assert!(matches!(fx[0].2, Op::Extend { .. }), "{fx:?}");
    rig.at(ms(521)).ev(reply(fx[0].0, ours()));
    // The first extension's failure comes late: it changes nothing held.
    let late = rig
        .at(ms(530))
        .ev(reply(ext[2].0, Outcome::Failed("connection closed")));
    assert!(ended(&late).is_empty(), "{late:?}");
    // Past the end the first writes gave (978): keys 0 and 2 carry it.
    for t in [980, 990, 999] {
        let fx = rig.tick(ms(t));
        assert!(ended(&fx).is_empty(), "ended at {t}: {fx:?}");
    }
    let held = rig.core.holding().expect("still held");
    assert_eq!(held.holder, holder);
    assert!(held.ends_at > ms(1400), "{held:?}");
}

#[test]
fn a_recheck_of_every_node_sends_again_every_extension_still_out() {
    // Dropped invalidations (a lagging channel) re-check every node, with
    // no node named: each key's extension still out goes again, whatever
    // its node, and a key with none out is read.
    let mut rig = Rig::new(config(2, 3));
    held(&mut rig);
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 3);
    rig.at(ms(501)).ev(reply(ext[1].0, ours()));
    let fx = sends(&rig.at(ms(520)).ev(Event::Recheck { node: None }));
    let extended: Vec<Target> = fx
        .iter()
        .filter(|(_, _, op)| matches!(op, Op::Extend { .. }))
        .map(|(_, t, _)| *t)
        .collect();
    let read: Vec<Target> = fx
        .iter()
        .filter(|(_, _, op)| matches!(op, Op::Verify { .. }))
        .map(|(_, t, _)| *t)
        .collect();
    assert_eq!(extended, [Target::Key(0), Target::Key(2)], "{fx:?}");
    assert_eq!(read, [Target::Key(1)], "{fx:?}");
}

#[test]
fn our_own_write_seen_while_pending_does_not_wake_us() {
    // Without NOLOOP a waiter hears of its own SET of a free key, often
    // before the reply. If that counted as "the key changed", the failed
    // attempt would retry at once, SET the key again and hear of it again:
    // a loop at network speed. The reply decides: ours is re-checked, held
    // by another means a real change, so a retry at once.
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    assert!(sends(&rig.ev(Event::Invalidated { key: 2 })).is_empty());
    rig.ev(reply(s[0].0, other()));
    rig.ev(reply(s[1].0, other()));
    let fx = rig.ev(reply(s[2].0, ours()));
    // Key 2 released, no new attempt.
    assert_eq!(sends(&fx).len(), 1);
    assert!(matches!(sends(&fx)[0].2, Op::Release { .. }));
    // The same, but the touched key turns out held by another: retry now.
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.ev(Event::Invalidated { key: 0 });
    rig.ev(reply(s[0].0, other()));
    let fx = rig.ev(reply(s[1].0, other()));
    let retry = sends(&fx);
    assert_eq!(retry.len(), 3, "{fx:?}");
    assert!(retry.iter().all(|x| matches!(x.2, Op::Acquire { .. })));
}

/// Terms of a request: `ttl` with the default drift, margin and extension
/// period (half the TTL), and an optional maximum hold.
fn terms(ttl: u32, max_hold: Option<u32>) -> Terms {
    let mut t = Terms::new(Life::of(ttl * MS), ttl * MS / 2);
    t.max_hold = max_hold.map(|h| h * MS);
    t
}

fn statuses(effects: &[Effect]) -> Vec<Time> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Status {
                status: HolderStatus::Held { valid_until },
                ..
            } => Some(*valid_until),
            _ => None,
        })
        .collect()
}

#[test]
fn a_request_with_its_own_validity_writes_and_counts_its_ttl() {
    let mut rig = Rig::new(config(2, 3));
    // 600 ms: drift 8, margin 6, extension every 300 ms.
    let fx = rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: Some(terms(600, None)),
    });
    let s = sends(&fx);
    assert!(s
        .iter()
        .all(|x| matches!(x.2, Op::Acquire { ttl, .. } if ttl == 600 * MS)));
    rig.at(ms(1));
    let mut all = Vec::new();
    for (cmd, _, _) in &s {
        all.extend(rig.ev(reply(*cmd, ours())));
    }
    let g = grants(&all);
    assert_eq!((g.len(), g[0].0, g[0].2), (1, 1, ms(600 - 8 - 6)));
    // Off the locker's 500 ms grid: every 300 ms at most.
    assert_eq!(rig.core.next_timeout(), Some(ms(301)));
    let ext = sends(&rig.tick(ms(301)));
    assert_eq!(ext.len(), 3);
    assert!(ext
        .iter()
        .all(|x| matches!(x.2, Op::Extend { ttl, .. } if ttl == 600 * MS)));
}

#[test]
fn a_maximum_hold_ends_the_grant_deletes_its_keys_and_says_so() {
    let mut rig = Rig::new(config(2, 3));
    let fx = rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: Some(terms(1000, Some(800))),
    });
    rig.at(ms(1));
    let mut all = Vec::new();
    for (cmd, _, _) in &sends(&fx) {
        all.extend(rig.ev(reply(*cmd, ours())));
    }
    // Validity ends at 978; the hold at 801, which is what the holder is told.
    let holder = match all.iter().find(|e| matches!(e, Effect::Grant { .. })) {
        Some(Effect::Grant {
            holder,
            valid_until,
            hold_until,
            ..
        }) => {
            assert_eq!((*valid_until, *hold_until), (ms(801), Some(ms(801))));
            *holder
        }
        _ => panic!("no grant: {all:?}"),
    };
    // The hold ends before the keys would: no extension at the grid's tick.
    assert!(sends(&rig.tick(ms(500))).is_empty());
    assert!(ended(&rig.tick(ms(800))).is_empty());
    let fx = rig.tick(ms(801));
    assert_eq!(ended(&fx), vec![(holder, LostReason::MaxHold)]);
    let dels = sends(&fx);
    assert_eq!(dels.len(), 3);
    assert!(dels.iter().all(|x| matches!(x.2, Op::Release { .. })));
}

#[test]
fn a_maximum_hold_longer_than_the_validity_keeps_extending_until_it_ends() {
    let mut rig = Rig::new(config(1, 1));
    let fx = rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: Some(terms(1000, Some(1700))),
    });
    rig.at(ms(1));
    let s = sends(&fx);
    let all = rig.ev(reply(s[0].0, ours()));
    let holder = grants(&all)[0].1;
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 1, "extended while the hold lasts");
    rig.at(ms(502));
    rig.ev(reply(ext[0].0, ours()));
    // Validity now ends at 500 + 1000 − 12 − 10 = 1478; the hold at 1701.
    let ext = sends(&rig.tick(ms(1000)));
    assert_eq!(ext.len(), 1);
    rig.at(ms(1002));
    let fx = rig.ev(reply(ext[0].0, ours()));
    assert_eq!(statuses(&fx), vec![ms(1701)], "capped by the hold");
    assert!(
        sends(&rig.tick(ms(1500))).is_empty(),
        "the hold ends first now"
    );
    assert_eq!(
        ended(&rig.tick(ms(1701))),
        vec![(holder, LostReason::MaxHold)]
    );
}

#[test]
fn a_hand_over_to_a_shorter_validity_counts_the_shorter_write_from_its_send() {
    let mut rig = Rig::new(config(1, 1));
    let (holder, _) = held_with_allowance(&mut rig, Duration::ZERO);
    // A waiter with a 600 ms validity is handed the lock at 5 ms.
    rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: Some(terms(600, None)),
    });
    rig.at(ms(5));
    let fx = rig.ev(Event::Release { holder, ack: None });
    let g = grants(&fx);
    // The core keeps the larger margin in force (10 ms: its deadline is
    // 978), but the new holder's published end keeps only its own terms'
    // margin (6 ms) before the computed end, 988.
    assert_eq!(g, vec![(2, 3, ms(1000 - 12 - 6))]);
    // A check goes out at 200 ms (an invalidation of our own key).
    rig.at(ms(200));
    let check = sends(&rig.ev(Event::Invalidated { key: 0 }));
    assert!(matches!(check[0].2, Op::Verify { .. }));
    // The next extension, at 305 ms at the latest, writes 600 ms: from the
    // moment it is sent the key may live only until 305 + 600 − 8.
    let fx = rig.tick(ms(305));
    let ext = sends(&fx);
    assert!(matches!(ext[0].2, Op::Extend { ttl, .. } if ttl == 600 * MS));
    assert_eq!(statuses(&fx), vec![ms(305 + 600 - 8 - 6)]);
    // The older check's reply (a PTTL read before the write landed) must
    // not count the key beyond that.
    rig.at(ms(306));
    let fx = rig.ev(reply(
        check[0].0,
        Outcome::Key(KeyState::Ours {
            pttl_ms: Some(990),
            fence: None,
        }),
    ));
    assert!(statuses(&fx).iter().all(|t| *t <= ms(891)), "{fx:?}");
    assert!(rig.core.holding().unwrap().ends_at <= ms(891));
    // The write's own reply counts it from its send.
    rig.at(ms(307));
    rig.ev(reply(ext[0].0, ours()));
    assert_eq!(rig.core.holding().unwrap().ends_at, ms(891));
}

#[test]
fn the_grant_view_shows_hand_overs_and_minority_keys_lost() {
    let mut rig = Rig::new(config(2, 3));
    assert!(rig.core.grant_view(rig.now).is_none());
    let (holder, _) = held(&mut rig);
    let lost = |rig: &Rig| -> Vec<(usize, LostReason)> {
        let view = rig.core.grant_view(rig.now).expect("holding");
        view.lost_keys().collect()
    };
    assert_eq!(lost(&rig), vec![]);
    // A hand-over (within the window after the acquisition) keeps the grant
    // and counts.
    let grant = rig.core.grant_view(rig.now).expect("holding").grant;
    rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    });
    rig.at(ms(2));
    assert_eq!(
        grants(&rig.ev(Event::Release { holder, ack: None })).len(),
        1
    );
    let view = rig.core.grant_view(rig.now).expect("handed over");
    assert_eq!((view.grant, view.handovers), (grant, 1));
    // Key 1 deleted: one lost key of three, the majority (two) still holds.
    let v = sends(&rig.ev(Event::Invalidated { key: 1 }));
    rig.at(ms(3));
    rig.ev(reply(v[0].0, Outcome::Key(KeyState::Absent)));
    assert_eq!(lost(&rig), vec![(1, LostReason::Deleted)]);
    // The extension round takes key 1 back (NX); key 0's extension fails,
    // but key 0 is not lost while its last confirmed expiry lasts.
    let ext = sends(&rig.tick(ms(500)));
    let sent = |k: usize| ext.iter().find(|s| s.1 == Target::Key(k)).expect("sent").0;
    rig.at(ms(501));
    rig.ev(reply(sent(1), ours()));
    rig.ev(reply(sent(2), ours()));
    rig.ev(reply(sent(0), Outcome::Failed("timed out")));
    assert_eq!(lost(&rig), vec![]);
    // Past that expiry (sent at 0: 1000 − 12 drift), key 0 is unreachable.
    rig.at(ms(989));
    assert_eq!(lost(&rig), vec![(0, LostReason::Unreachable)]);
}

/// Terms of a permit slot of a semaphore of `permits`, on the locker's
/// validity.
fn permit(permits: u16) -> Option<Terms> {
    let mut t = *config(1, 1).terms;
    t.permits = Some(permits);
    Some(t)
}

#[test]
fn a_permit_claims_its_count_and_meets_another_count_as_a_mismatch() {
    let mut rig = Rig::new(config(2, 1));
    let terms = permit(3);
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms,
    }));
    for (_, _, op) in &s {
        let Op::Acquire { token, .. } = op else {
            panic!("{op:?}")
        };
        assert!(token.as_str().ends_with(":m2n1p3"), "{token:?}");
    }
    // A key held by a permit of a semaphore of 5: the same slot, another count.
    let theirs = crate::scripts::Fingerprint::new(2, 1).with_permits(Some(5));
    let fx = rig.ev(reply(
        s[0].0,
        Outcome::Key(KeyState::Other {
            forced: false,
            owner: Some(theirs),
        }),
    ));
    assert!(grants(&fx).is_empty());
    rig.ev(reply(s[1].0, ours()));
    let fx = rig.ev(reply(s[2].0, ours()));
    assert!(
        fx.contains(&Effect::Refuse {
            to: 1,
            why: Refusal::ConfigMismatch {
                ours: crate::scripts::Fingerprint::new(2, 1).with_permits(Some(3)),
                theirs
            }
        }),
        "{fx:?}"
    );
    // A plain lock of the same name is no permit of ours either.
    let mut rig = Rig::new(config(2, 1));
    let terms = permit(3);
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Try,
        terms,
    }));
    let fx: Vec<Effect> = s
        .iter()
        .flat_map(|(cmd, _, _)| rig.ev(reply(*cmd, foreign(2, 1))))
        .collect();
    assert!(fx.contains(&Effect::Refuse {
        to: 1,
        why: Refusal::ConfigMismatch {
            ours: crate::scripts::Fingerprint::new(2, 1).with_permits(Some(3)),
            theirs: crate::scripts::Fingerprint::new(2, 1)
        }
    }));
}

#[test]
fn callers_of_one_locker_that_disagree_on_the_count_are_refused_at_once() {
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    // The grant is a lock's (no permits): a permit request is refused, and
    // the grant is untouched.
    for (id, kind) in [(2, RequestKind::Wait), (3, RequestKind::Force)] {
        let terms = permit(2);
        let fx = rig.ev(Event::Request { id, kind, terms });
        assert_eq!(
            fx,
            vec![Effect::Refuse {
                to: id,
                why: Refusal::ConfigMismatch {
                    ours: crate::scripts::Fingerprint::new(2, 3).with_permits(Some(2)),
                    theirs: crate::scripts::Fingerprint::new(2, 3)
                }
            }]
        );
    }
    assert_eq!(rig.core.holding().map(|h| h.holder), Some(holder));
    // A waiter on the same terms queues, and is handed the grant.
    let fx = rig.ev(Event::Request {
        id: 4,
        kind: RequestKind::Wait,
        terms: None,
    });
    assert!(fx.is_empty(), "{fx:?}");
    let fx = rig.ev(Event::Release { holder, ack: None });
    assert_eq!(grants(&fx).len(), 1, "{fx:?}");
}

// ===== fair queueing =====

fn fair_config() -> Config {
    Config {
        fair: Some(super::Fair {
            wall_origin_us: 5_000_000,
            life: 1000 * MS,
            refresh: 500 * MS,
            after: Duration::ZERO,
        }),
        ..config(2, 3)
    }
}

fn queued(head_ms: u64) -> Outcome {
    Outcome::Key(KeyState::Queued { head_ms })
}

/// The places an effect list sends, by op.
fn queue_of(op: &Op) -> Option<&crate::core::Queue> {
    match op {
        Op::Acquire { queue, .. } => queue.as_deref(),
        _ => None,
    }
}

/// How many places `sent` makes or refreshes, by `Enqueue` or with an
/// acquisition.
fn places_made(sent: &[(CmdId, Target, Op)]) -> usize {
    sent.iter()
        .map(|(_, _, op)| match op {
            Op::Enqueue { places, .. } => places.len(),
            op => queue_of(op).map_or(0, |q| q.places.len()),
        })
        .sum()
}

#[test]
fn fair_waiters_send_their_places_and_retry_when_the_head_lapses() {
    let mut rig = Rig::new(fair_config());
    rig.at(ms(2));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    let q = queue_of(&s[0].2).expect("a fair acquisition");
    assert_eq!(q.places.len(), 1);
    let place = q.places[0];
    assert_eq!(q.candidate, Some(place.member));
    // Arrival: the wall clock at the core's origin, plus its `now`.
    assert_eq!(place.since_us, 5_002_000);
    assert_eq!(place.life, 1000 * MS);
    // Two keys free but another waiter ahead (its place lapses in 300 ms),
    // one held: no grant, a retry 1 ms after the place lapses.
    rig.at(ms(4));
    rig.ev(reply(s[0].0, queued(300)));
    rig.ev(reply(s[1].0, queued(300)));
    let fx = rig.ev(reply(s[2].0, other()));
    assert!(grants(&fx).is_empty());
    assert_eq!(rig.core.phase_name(), "idle");
    assert_eq!(rig.core.next_timeout(), Some(ms(305)));
    let s2 = sends(&rig.tick(ms(305)));
    assert_eq!(s2.len(), 3, "a retry at the lapse");
    let q2 = queue_of(&s2[0].2).expect("fair");
    assert_eq!(q2.places, vec![place], "the same place, refreshed");
    // This time ours: granted, and the place taken off the key not won.
    rig.at(ms(306));
    rig.ev(reply(s2[0].0, ours()));
    let fx = rig.ev(reply(s2[1].0, ours()));
    assert_eq!(grants(&fx).len(), 1);
    let fx = rig.ev(reply(s2[2].0, other()));
    assert!(grants(&fx).is_empty());
}

#[test]
fn fair_grants_take_the_winners_place_out_of_every_queue_it_may_stand_in() {
    let dequeues = |fx: &[Effect]| -> Vec<Target> {
        sends(fx)
            .into_iter()
            .filter(|(_, _, op)| matches!(op, Op::Dequeue { .. }))
            .map(|(_, t, _)| t)
            .collect()
    };
    let first_attempt = |rig: &mut Rig| {
        let s = sends(&rig.ev(Event::Request {
            id: 1,
            kind: RequestKind::Wait,
            terms: None,
        }));
        let member = queue_of(&s[0].2).unwrap().places[0].member;
        rig.at(ms(1));
        (s, member)
    };
    // First attempt, a key left out of reach: the script placed the waiter
    // there only.
    let mut rig = Rig::new(fair_config());
    let (s, member) = first_attempt(&mut rig);
    rig.ev(reply(s[0].0, ours()));
    rig.ev(reply(s[2].0, queued(100)));
    let fx = rig.ev(reply(s[1].0, ours()));
    assert_eq!(grants(&fx).len(), 1);
    assert_eq!(dequeues(&fx), vec![Target::Key(2)]);
    assert!(sends(&fx).iter().any(|(_, _, op)| *op
        == Op::Dequeue {
            members: vec![member],
            life: 1000 * MS,
        }));
    // Won before the last reply: its queue is cleaned up when it answers,
    // and only if that key was not taken.
    for (last, want) in [(ours(), vec![]), (queued(100), vec![Target::Key(2)])] {
        let mut rig = Rig::new(fair_config());
        let (s, _) = first_attempt(&mut rig);
        rig.ev(reply(s[0].0, ours()));
        let fx = rig.ev(reply(s[1].0, ours()));
        assert_eq!(grants(&fx).len(), 1);
        assert!(dequeues(&fx).is_empty(), "{fx:?}");
        assert_eq!(dequeues(&rig.ev(reply(s[2].0, last))), want);
    }
    // A place sent before (a second attempt): every queue.
    let mut rig = Rig::new(fair_config());
    let (s, _) = first_attempt(&mut rig);
    rig.ev(reply(s[0].0, other()));
    rig.ev(reply(s[1].0, other()));
    rig.ev(reply(s[2].0, other()));
    let s = sends(&rig.ev(Event::Invalidated { key: 0 }));
    assert_eq!(s.len(), 3, "a retry");
    rig.at(ms(2));
    rig.ev(reply(s[0].0, ours()));
    let fx = rig.ev(reply(s[1].0, ours()));
    assert_eq!(grants(&fx).len(), 1);
    assert_eq!(
        dequeues(&fx),
        vec![Target::Key(0), Target::Key(1), Target::Key(2)]
    );
}

#[test]
fn fair_locks_are_never_handed_over_locally_and_later_waiters_take_their_place_at_once() {
    let mut rig = Rig::new(fair_config());
    let (holder, _) = held(&mut rig);
    rig.at(ms(2));
    let fx = rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    });
    let s = sends(&fx);
    assert_eq!(s.len(), 3, "one place on each key: {fx:?}");
    assert!(s
        .iter()
        .all(|(_, _, op)| matches!(op, Op::Enqueue { places, .. } if places.len() == 1)));
    let fx = rig.ev(Event::Release { holder, ack: None });
    assert!(grants(&fx).is_empty(), "handed over: {fx:?}");
    assert!(sends(&fx)
        .iter()
        .all(|(_, _, op)| matches!(op, Op::Release { .. })));
}

#[test]
fn a_fair_waiter_that_gives_up_leaves_every_queue_and_a_try_sends_no_place() {
    let mut rig = Rig::new(fair_config());
    let (_holder, _) = held(&mut rig);
    rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    });
    let fx = rig.ev(Event::Cancel { id: 2 });
    let s = sends(&fx);
    assert_eq!(s.len(), 3);
    assert!(s
        .iter()
        .all(|(_, _, op)| matches!(op, Op::Dequeue { members, .. } if members.len() == 1)));
    // A try on another core: the queue gate with no place of its own.
    let mut rig = Rig::new(fair_config());
    let s = sends(&rig.ev(Event::Request {
        id: 3,
        kind: RequestKind::Try,
        terms: None,
    }));
    let q = queue_of(&s[0].2).expect("a fair try");
    assert_eq!((q.candidate, q.places.len()), (None, 0));
}

#[test]
fn a_fair_waiter_that_cannot_reach_a_majority_stops_refreshing_its_place() {
    let mut rig = Rig::new(fair_config());
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.at(ms(1));
    rig.ev(reply(s[0].0, queued(900)));
    rig.ev(reply(s[1].0, Outcome::Failed("down")));
    rig.ev(reply(s[2].0, Outcome::Failed("down")));
    assert_eq!(rig.core.phase_name(), "idle");
    // The refresh that falls due sends nothing; the retry sends no place.
    let mut s2 = Vec::new();
    for _ in 0..3 {
        let at = rig.core.next_timeout().expect("a retry");
        s2 = sends(&rig.tick(at));
        if !s2.is_empty() {
            break;
        }
    }
    assert_eq!(s2.len(), 3, "{s2:?}");
    let q = queue_of(&s2[0].2).unwrap_or_else(|| panic!("{s2:?}"));
    assert!(
        q.places.is_empty(),
        "refreshed a place it cannot use: {q:?}"
    );
    assert!(q.candidate.is_some());
}

/// Drives a fair waiter's attempts from `first` until `until`: `answer(k)` is
/// key `k`'s reply, `None` for one still out when the others decide the
/// attempt (answered `queued` 1 ms later). Every send, with its time.
fn attempts(
    rig: &mut Rig,
    first: Sent,
    until: Time,
    answer: impl Fn(usize) -> Option<Outcome>,
) -> Vec<(Time, Sent)> {
    let mut s = first;
    let mut out = Vec::new();
    while rig.now < until {
        let now = rig.now;
        let mut later = Vec::new();
        let mut sent = s.clone();
        for (id, target, op) in &s {
            if let (Target::Key(k), Op::Acquire { .. }) = (target, op) {
                match answer(*k) {
                    Some(o) => sent.extend(sends(&rig.ev(reply(*id, o)))),
                    None => later.push(*id),
                }
            }
        }
        rig.at(now + Duration::from_millis(1));
        for id in later {
            sent.extend(sends(&rig.ev(reply(id, queued(900)))));
        }
        out.push((now, sent));
        let at = rig.core.next_timeout().expect("a retry");
        assert!(at > rig.now, "a timer that does not move on: {at:?}");
        s = sends(&rig.tick(at));
    }
    out
}

/// The places made or refreshed by the sends of `log` from `from` on, and
/// before `to`.
fn places_between(log: &[(Time, Sent)], from: Time, to: Time) -> usize {
    log.iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, s)| places_made(s))
        .sum()
}

#[test]
fn a_fair_waiter_decided_while_a_reachable_key_is_out_stops_refreshing() {
    // Two of three nodes refuse at once (down): each attempt is decided with
    // key 2's acquisition still out, and node 2 answers it after. The process
    // may reach one node of three: it must not keep the head of that node's
    // queue while it cannot win (guarantee 3 of "Fair queueing"), once that
    // has lasted a place's life (1 s here).
    let mut rig = Rig::new(fair_config());
    let first = request(&mut rig, 1);
    let log = attempts(&mut rig, first, ms(3000), |k| {
        (k < 2).then_some(Outcome::Failed("down"))
    });
    assert!(log.len() > 8, "{}", log.len());
    assert_eq!(
        places_between(&log, ms(1000), ms(3000)),
        0,
        "refreshed a place it cannot use"
    );
}

#[test]
fn a_fair_waiter_decided_while_a_key_of_an_answering_node_is_out_keeps_refreshing() {
    // Three keys on two nodes: keys 0 and 2 on node 0, a majority on their
    // own. Node 1 is down and refuses at once, so each attempt is decided
    // by key 0's reply, with key 2's still out on the same node. The
    // process reaches a node that can grant the lock: it keeps its place
    // (the simulator found every locker's places lapsing while node 1 was
    // down, and nobody served: base 0x6e008).
    let cfg = Config {
        fair: fair_config().fair,
        ..config(2, 2)
    };
    assert_eq!(cfg.placement, vec![0, 1, 0]);
    let mut rig = Rig::new(cfg);
    let first = request(&mut rig, 1);
    let log = attempts(&mut rig, first, ms(3000), |k| match k {
        0 => Some(queued(900)),
        1 => Some(Outcome::Failed("down")),
        _ => None,
    });
    assert!(log.len() > 4, "{}", log.len());
    assert!(
        places_between(&log, ms(1000), ms(3000)) > 0,
        "stopped refreshing a place on the node that holds a majority of its keys"
    );
}

#[test]
fn a_win_after_a_refresh_missed_for_want_of_a_majority_refreshes_the_others_places() {
    // Two waiters of one locker, both placed. An attempt reaches one node
    // of three (a minority): the refresh that falls due sends nothing. The
    // next attempt wins for the first waiter, and the lock is held: the
    // second waiter's place must be refreshed while it is, or it lapses and
    // the release serves a later arrival of another process first
    // (simulator, base 0x6e009).
    let mut rig = Rig::new(fair_config());
    let first = request(&mut rig, 1);
    rig.at(ms(1));
    sends(&rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    }));
    rig.at(ms(2));
    for (id, target, _) in &first {
        let outcome = match target {
            Target::Key(0) => queued(900),
            _ => Outcome::Failed("down"),
        };
        rig.ev(reply(*id, outcome));
    }
    assert_eq!(rig.core.phase_name(), "idle");
    // Through the refresh that falls due (nothing sent) to the next attempt.
    let mut attempt = Vec::new();
    while attempt.is_empty() {
        let at = rig.core.next_timeout().expect("a retry");
        let sent = sends(&rig.tick(at));
        assert_eq!(
            places_made(&sent),
            0,
            "refreshed without a majority: {sent:?}"
        );
        attempt = sent
            .into_iter()
            .filter(|(_, _, op)| matches!(op, Op::Acquire { .. }))
            .collect();
    }
    let mut after_win = Vec::new();
    for (id, _, _) in &attempt {
        after_win.extend(sends(&rig.ev(reply(*id, ours()))));
    }
    assert!(rig.core.holding().is_some(), "the lock is held");
    // Within a refresh period of the win, the second waiter's place goes out.
    let won_at = rig.now;
    let mut placed = places_made(&after_win);
    while placed == 0 {
        let at = rig.core.next_timeout().expect("a timer while held");
        if at > won_at + Duration::from_millis(500) {
            break;
        }
        let sent = sends(&rig.tick(at));
        for (id, _, op) in &sent {
            if let Op::Extend { .. } = op {
                rig.ev(reply(*id, ours()));
            }
        }
        placed += places_made(&sent);
    }
    assert!(
        placed > 0,
        "the other waiter's place was not refreshed while the lock was held"
    );
}

#[test]
fn a_fair_waiter_whose_acquisitions_go_unanswered_keeps_no_place() {
    // A link slower than the reply bound: the acquisitions may have run (at
    // the head of a queue, taken the key) but their replies never come in
    // time. The waiter reached those nodes without winning them. Through an
    // outage shorter than a place's life it keeps its places (a frozen node
    // runs the refreshes when it thaws); past that, it must neither refresh
    // a place nor make one again before it deletes the keys, or it keeps
    // out everyone who can win (simulator, `sim_slow_head_of_the_queue`).
    let mut rig = Rig::new(fair_config());
    let first = request(&mut rig, 1);
    assert_eq!(queue_of(&first[0].2).map(|q| q.places.len()), Some(1));
    let log = attempts(&mut rig, first, ms(3000), |_| Some(Outcome::Unanswered));
    let deletes = |from: Time| {
        log.iter()
            .filter(|(t, _)| *t >= from)
            .flat_map(|(_, s)| s)
            .filter(|(_, _, op)| matches!(op, Op::Release { .. }))
            .count()
    };
    assert!(deletes(ms(1000)) > 4, "{} deletes", deletes(ms(1000)));
    assert!(
        places_between(&log, ms(1), ms(1000)) > 0,
        "lost its places in an outage shorter than their life"
    );
    assert_eq!(
        places_between(&log, ms(1000), ms(3000)),
        0,
        "kept a place it cannot use"
    );
    // Once its nodes answer again, it places its waiter again.
    let first = sends(&rig.tick(rig.core.next_timeout().expect("a retry")));
    let log = attempts(&mut rig, first, ms(4000), |_| Some(queued(300)));
    assert!(places_between(&log, ms(3000), ms(4000)) > 0);
}

#[test]
fn a_waiter_that_ripens_while_unanswered_takes_its_place_only_within_the_grace() {
    // Without fair queueing a waiter takes its place once it has waited a
    // while (here 700 ms, then 1.5 s): within the grace of an unanswered
    // streak it does, past it it does not, and no timer waits for it.
    for (after, placed) in [(700, true), (1500, false)] {
        let mut cfg = fair_config();
        if let Some(f) = cfg.fair.as_mut() {
            f.after = Duration::from_millis(after);
        }
        let mut rig = Rig::new(cfg);
        let first = request(&mut rig, 1);
        assert_eq!(places_made(&first), 0, "not ripe yet");
        let log = attempts(&mut rig, first, ms(3000), |_| Some(Outcome::Unanswered));
        let made = places_between(&log, ms(1), ms(3000));
        assert_eq!(made > 0, placed, "after {after} ms: {made} places");
        assert_eq!(places_between(&log, ms(1000), ms(3000)), 0);
    }
}

#[test]
fn a_new_waiter_takes_its_place_whatever_an_earlier_waiter_reached() {
    // An earlier waiter's acquisitions went unanswered past a place's life,
    // and it gave up: what its attempts reached says nothing of the next
    // waiter's, which must stand in the queues from its first attempt, or a
    // waiter of another process that came later could be served first.
    let mut rig = Rig::new(fair_config());
    let first = request(&mut rig, 1);
    let log = attempts(&mut rig, first, ms(1500), |_| Some(Outcome::Unanswered));
    assert_eq!(places_between(&log, ms(1000), ms(1500)), 0);
    rig.ev(Event::Cancel { id: 1 });
    let s2 = request(&mut rig, 2);
    let q = s2
        .iter()
        .find_map(|(_, _, op)| queue_of(op))
        .unwrap_or_else(|| panic!("an acquisition: {s2:?}"));
    assert_eq!(q.places.len(), 1, "the new waiter's first attempt: {q:?}");
}

/// Trims the core's lists: none keeps room, and what the lock is (its
/// grant, its next timeout, its phase) is as before.
fn trim_changes_nothing_but_room(rig: &mut Rig) {
    let seen = |rig: &Rig| {
        (
            rig.core.holding(),
            rig.core.next_timeout(),
            rig.core.phase_name(),
        )
    };
    let before = seen(rig);
    rig.core.trim();
    assert_eq!(rig.core.lists_with_room(), Vec::<&str>::new());
    assert_eq!(seen(rig), before);
}

#[test]
fn a_long_hold_settles_and_trimming_changes_nothing_but_room() {
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    // Just granted, or held for less than one extension period: busy still.
    assert!(!rig.core.settled(ms(1), 1));
    assert!(!rig.core.settled(ms(400), 1));
    // During the extension round: its commands are out.
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 3);
    assert!(!rig.core.settled(ms(501), 1));
    for (cmd, _, _) in &ext {
        rig.at(ms(502)).ev(reply(*cmd, ours()));
    }
    assert!(rig.core.settled(ms(502), 1));
    // The lists the request, the attempt and the extension used keep their
    // room until the lock settles; trimmed, none has any (a held lock's
    // state is then one word per list: `few::Room`).
    let used = rig.core.lists_with_room();
    assert!(
        ["effects", "commands", "waiters"]
            .iter()
            .all(|l| used.contains(l)),
        "{used:?}"
    );
    trim_changes_nothing_but_room(&mut rig);
    // A trimmed lock goes on as before: it extends on time and stays held.
    let next = sends(&rig.tick(ms(1000)));
    assert_eq!(next.len(), 3);
    assert!(!rig.core.settled(ms(1001), 1));
    for (cmd, _, _) in &next {
        rig.at(ms(1002)).ev(reply(*cmd, ours()));
    }
    assert!(ended(&rig.tick(ms(1400))).is_empty());
    assert_eq!(rig.core.holding().map(|h| h.holder), Some(holder));
    // Somebody queued: not settled, whatever the age of the grant.
    rig.at(ms(1401)).ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    });
    assert!(!rig.core.settled(ms(1401), 1));
}

#[test]
fn in_a_process_of_many_holders_a_lock_settles_once_granted_and_quiet() {
    let mut rig = Rig::new(config(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    assert_eq!(s.len(), 3);
    // Not held yet: nothing settles, however many holders.
    assert!(!rig.core.settled(ms(0), CROWD));
    rig.at(ms(1));
    let mut fx = rig.ev(reply(s[0].0, ours()));
    fx.extend(rig.ev(reply(s[1].0, ours())));
    let g = grants(&fx);
    assert_eq!(g.len(), 1, "{fx:?}");
    // Granted on a majority, the third key's acquisition still out.
    assert!(!rig.core.settled(ms(1), CROWD));
    rig.ev(reply(s[2].0, ours()));
    // Quiet: settled for a process of `CROWD` holders or more, not below
    // (there it waits for a period, as in the test above).
    assert!(rig.core.settled(ms(1), CROWD));
    assert!(rig.core.settled(ms(1), usize::MAX));
    assert!(!rig.core.settled(ms(1), CROWD - 1));
    assert!(!rig.core.lists_with_room().is_empty());
    trim_changes_nothing_but_room(&mut rig);
    // Trimmed at once, it extends on time and stays held.
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 3);
    for (cmd, _, _) in &ext {
        rig.at(ms(502)).ev(reply(*cmd, ours()));
    }
    assert!(ended(&rig.tick(ms(900))).is_empty());
    assert_eq!(rig.core.holding().map(|h| h.holder), Some(g[0].1));
    // Somebody queued: not settled, however many holders.
    rig.at(ms(901)).ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    });
    assert!(!rig.core.settled(ms(901), CROWD));
}

#[test]
fn only_a_lone_acquisition_or_release_of_its_key_may_go_by_the_callers_connection() {
    let mut rig = Rig::new(config(2, 3));
    let acq = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    // A free name's acquisitions: nothing else of their keys is out.
    assert!(acq
        .iter()
        .all(|(cmd, _, _)| rig.core.route(*cmd) == Route::Direct));
    // An invalidation of a key whose acquisition is out sends nothing yet;
    // the replies win the majority, and key 2 stays out.
    rig.at(ms(1));
    rig.ev(reply(acq[0].0, ours()));
    let g = grants(&rig.ev(reply(acq[1].0, ours())));
    assert_eq!(g.len(), 1);
    // A check of key 0 is out: nothing of key 0 may go direct meanwhile.
    let ver = sends(&rig.ev(Event::Invalidated { key: 0 }));
    assert_eq!(ver.len(), 1);
    assert!(
        rig.core.route(ver[0].0) == Route::Engine,
        "a check is not a write a caller waits for"
    );
    // The extension round: extensions never go direct.
    let ext = sends(&rig.tick(ms(500)));
    assert!(!ext.is_empty());
    assert!(ext
        .iter()
        .all(|(cmd, _, _)| rig.core.route(*cmd) == Route::Engine));
    for (cmd, _, _) in &ext {
        rig.ev(reply(*cmd, ours()));
    }
    rig.ev(reply(ver[0].0, ours()));
    rig.ev(reply(acq[2].0, ours()));
    // Released with nothing else out: every delete may go direct.
    let rel = sends(&rig.ev(Event::Release {
        holder: g[0].1,
        ack: Some(1),
    }));
    assert_eq!(rel.len(), 3, "{rel:?}");
    assert!(rel
        .iter()
        .all(|(cmd, _, op)| matches!(op, Op::Release { .. })
            && rig.core.route(*cmd) == Route::Direct));
}

#[test]
fn a_release_behind_an_extension_of_its_key_stays_on_the_engines_connection() {
    let mut rig = Rig::new(config(2, 3));
    let (holder, _) = held(&mut rig);
    let ext = sends(&rig.tick(ms(500)));
    assert_eq!(ext.len(), 3);
    // Key 1's extension answered; keys 0 and 2 are still out.
    rig.ev(reply(ext[1].0, ours()));
    let rel = sends(&rig.ev(Event::Release {
        holder,
        ack: Some(1),
    }));
    assert_eq!(rel.len(), 3, "{rel:?}");
    let direct: Vec<Target> = rel
        .iter()
        .filter(|(cmd, _, _)| rig.core.route(*cmd) == Route::Direct)
        .map(|x| x.1)
        .collect();
    // On another connection a delete could land before the extension still
    // out, which would then find the key gone (harmless, token-checked) or,
    // were it a retake, write it back after the delete.
    assert_eq!(direct, vec![Target::Key(1)]);
}

/// Held with majority 2 of 3 after the replies of keys 0 and 1, every
/// acquisition sent on direct connection 7, key 2's still out; then
/// released: the deletes, by key.
fn released_with_key_2_out(rig: &mut Rig) -> (CmdId, Vec<(CmdId, Target, Op)>) {
    let acq = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    assert_eq!(acq.len(), 3);
    for (cmd, _, _) in &acq {
        rig.core.went_direct(*cmd, 7);
    }
    rig.at(ms(1));
    rig.ev(reply(acq[0].0, ours()));
    let g = grants(&rig.ev(reply(acq[1].0, ours())));
    assert_eq!(g.len(), 1);
    let rel = sends(&rig.ev(Event::Release {
        holder: g[0].1,
        ack: Some(1),
    }));
    let keys: Vec<Target> = rel.iter().map(|x| x.1).collect();
    assert_eq!(keys, [0, 1, 2].map(Target::Key), "{rel:?}");
    (acq[2].0, rel)
}

/// The `Released` acknowledgements among `effects`: (deleted, unconfirmed).
fn acknowledged(effects: &[Effect]) -> Vec<(usize, usize)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Released {
                deleted,
                unconfirmed,
                ..
            } => Some((*deleted, *unconfirmed)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lock_released_at_once_deletes_its_last_key_behind_its_acquisition() {
    // Several nodes: the grant came with keys 0 and 1, key 2's acquisition
    // is still out when the lock is released. Its delete goes behind it on
    // the connection it took (which runs them in order): not on the
    // engine's, where it could overtake the acquisition and find nothing.
    let mut rig = Rig::new(config(2, 3));
    let (late, rel) = released_with_key_2_out(&mut rig);
    assert_eq!(rig.core.route(rel[0].0), Route::Direct);
    assert_eq!(rig.core.route(rel[1].0), Route::Direct);
    assert_eq!(rig.core.route(rel[2].0), Route::Behind(7));
    rig.core.went_direct(rel[2].0, 7);
    // Key 2's late "ours": the delete right behind it takes the key, so
    // nothing more is sent for it.
    let fx = rig.ev(reply(late, ours()));
    assert!(sends(&fx).is_empty(), "{fx:?}");
    rig.ev(reply(rel[0].0, Outcome::Released(true)));
    rig.ev(reply(rel[1].0, Outcome::Released(true)));
    let fx = rig.ev(reply(rel[2].0, Outcome::Released(true)));
    assert_eq!(acknowledged(&fx), [(3, 0)]);
}

#[test]
fn a_late_key_whose_delete_went_another_way_is_released_again() {
    // The same, but key 2's delete took the engine's connection (the direct
    // one was busy, or replaced): it may have run before the acquisition,
    // so the acquisition's "ours" is released as a late key.
    let mut rig = Rig::new(config(2, 3));
    let (late, rel) = released_with_key_2_out(&mut rig);
    let fx = rig.ev(reply(rel[2].0, Outcome::Released(false)));
    assert!(sends(&fx).is_empty(), "{fx:?}");
    let again = sends(&rig.ev(reply(late, ours())));
    assert!(
        matches!(&again[..], [(_, Target::Key(2), Op::Release { .. })]),
        "{again:?}"
    );
}

/// Commands an event sent, as [`sends`] lists them.
type Sent = Vec<(CmdId, Target, Op)>;

/// A request of request id `id` at the rig's time: the acquisitions it sends.
fn request(rig: &mut Rig, id: ReqId) -> Sent {
    sends(&rig.ev(Event::Request {
        id,
        kind: RequestKind::Wait,
        terms: None,
    }))
}

/// Holder `holder` drops its guard (no ack): the deletes it sends.
fn dropped(rig: &mut Rig, holder: HolderId) -> Sent {
    sends(&rig.ev(Event::Release { holder, ack: None }))
}

/// One turn of a loop of `lock()` and a dropped guard on a free name: a
/// grant to request 1, its guard dropped, and request 2 made before the
/// delete is answered. The deletes and the acquisitions sent.
fn dropped_then_requested(rig: &mut Rig) -> (Sent, Sent) {
    let (holder, _) = held_one(rig);
    let del = dropped(rig, holder);
    let acq = request(rig, 2);
    (del, acq)
}

/// `s` is one acquisition and nothing else.
fn one_acquisition(s: &[(CmdId, Target, Op)]) -> bool {
    matches!(s, [(_, _, Op::Acquire { .. })])
}

#[test]
fn a_request_right_after_a_release_goes_behind_its_deletes() {
    // A loop of `lock()` and a dropped guard: the next acquisition does
    // not wait for the delete's reply, and may take the caller's connection
    // right behind it (the only other command of its key).
    let mut rig = Rig::new(config(1, 1));
    let (del, acq) = dropped_then_requested(&mut rig);
    assert!(matches!(&del[..], [(_, _, Op::Release { .. })]), "{del:?}");
    assert!(one_acquisition(&acq), "{acq:?}");
    assert_eq!(rig.core.route(acq[0].0), Route::Direct);
    // The server answers both in order: the delete, then the acquisition.
    assert!(sends(&rig.ev(reply(del[0].0, Outcome::Released(true)))).is_empty());
    let g = grants(&rig.ev(reply(acq[0].0, ours())));
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].0, 2);
    assert_eq!(rig.core.grant_view(rig.now).map(|v| v.handovers), Some(1));
}

#[test]
fn a_chain_of_acquisitions_behind_our_deletes_is_bounded_like_hand_overs() {
    // Other processes hear of a delete a hop later than the acquisition
    // right behind it: past the hand-over budget (here 2) the next request
    // waits for the deletes, and they race it.
    let mut cfg = config(1, 1);
    cfg.handover_limit = 2;
    let mut rig = Rig::new(cfg);
    let (mut holder, _) = held_one(&mut rig);
    for id in 2..=3 {
        let del = dropped(&mut rig, holder);
        let acq = request(&mut rig, id);
        assert_eq!(acq.len(), 1, "request {id} goes behind the deletes");
        rig.ev(reply(del[0].0, Outcome::Released(true)));
        holder = grants(&rig.ev(reply(acq[0].0, ours())))[0].1;
    }
    let del = dropped(&mut rig, holder);
    assert!(request(&mut rig, 4).is_empty(), "the budget is spent");
    // And the others get a head start, as after a release with waiters.
    rig.at(rig.now + MS);
    assert!(sends(&rig.ev(reply(del[0].0, Outcome::Released(true)))).is_empty());
    let at = rig.core.next_timeout().expect("the pause ends");
    assert!(at > rig.now, "{at:?}");
    let acq = sends(&rig.tick(at));
    assert!(one_acquisition(&acq), "{acq:?}");
    let g = grants(&rig.ev(reply(acq[0].0, ours())));
    assert_eq!(g[0].0, 4);
    assert_eq!(rig.core.grant_view(rig.now).map(|v| v.handovers), Some(0));
    // A fresh chain, but only within the window from its first grant.
    rig.at(rig.now + 11 * MS);
    let del = dropped(&mut rig, g[0].1);
    assert!(request(&mut rig, 5).is_empty(), "the window is over");
    assert_eq!(
        sends(&rig.ev(reply(del[0].0, Outcome::Released(true)))).len(),
        1
    );
}

#[test]
fn no_chain_after_a_release_with_waiters_or_a_loss() {
    // No hand-over budget: a waiter queued at the release goes after the
    // pause, and a newcomer meanwhile does not chain past it.
    let mut cfg = config(1, 1);
    cfg.handover_limit = 0;
    let mut rig = Rig::new(cfg);
    let (holder, _) = held_one(&mut rig);
    assert!(request(&mut rig, 2).is_empty());
    dropped(&mut rig, holder);
    assert!(request(&mut rig, 3).is_empty());
    // A grant lost (its extension found the key taken) is no chain: the
    // request goes as on a free name, not behind a delete.
    let mut rig = Rig::new(config(1, 1));
    held_one(&mut rig);
    let ext = sends(&rig.tick(ms(500)));
    rig.ev(reply(ext[0].0, other()));
    assert!(rig.core.holding().is_none());
    assert_ne!(rig.core.phase_name(), "attempting");
    request(&mut rig, 2);
    assert!(!rig.core.attempt_in_chain());
}

#[test]
fn an_acquisition_that_overtook_our_delete_is_woken_by_its_reply() {
    // On two connections the acquisition may reach the server first: it
    // finds our own old key and fails, and with NOLOOP no invalidation of
    // our own delete would come. The delete's reply wakes it instead.
    let mut rig = Rig::new(config(1, 1));
    let (del, acq) = dropped_then_requested(&mut rig);
    assert!(sends(&rig.ev(reply(acq[0].0, other()))).is_empty());
    assert_eq!(rig.core.phase_name(), "idle");
    let again = sends(&rig.ev(reply(del[0].0, Outcome::Released(true))));
    assert!(one_acquisition(&again), "{again:?}");
    let g = grants(&rig.ev(reply(again[0].0, ours())));
    assert_eq!(g[0].0, 2);
}

#[test]
fn an_acquisition_answered_after_our_delete_but_run_before_it_retries_at_once() {
    // The replies of the delete and of the acquisition are fed by different
    // tasks: the delete's may be fed first although the acquisition ran
    // first at the server and found our own old key.
    let mut rig = Rig::new(config(1, 1));
    let (del, acq) = dropped_then_requested(&mut rig);
    assert!(sends(&rig.ev(reply(del[0].0, Outcome::Released(true)))).is_empty());
    let again = sends(&rig.ev(reply(acq[0].0, other())));
    assert!(one_acquisition(&again), "{again:?}");
    // In the usual order nothing more is sent: no check of a key won.
    let g = grants(&rig.ev(reply(again[0].0, ours())));
    assert_eq!(g[0].0, 2);
    let del = dropped(&mut rig, g[0].1);
    let acq = request(&mut rig, 3);
    assert!(sends(&rig.ev(reply(del[0].0, Outcome::Released(true)))).is_empty());
    let fx = rig.ev(reply(acq[0].0, ours()));
    assert_eq!(grants(&fx).len(), 1);
    assert!(sends(&fx).is_empty(), "{fx:?}");
}

#[test]
fn an_acquisition_behind_our_delete_and_a_check_may_still_go_direct() {
    // The engine's connection heard of a change (our own delete, in a loop
    // of `lock()` and a dropped guard) and the holder checks its key: the
    // check is a read, so the next acquisition may still take the caller's
    // connection, behind the delete; only another write keeps it off.
    let mut rig = Rig::new(config(1, 1));
    let (holder, _) = held_one(&mut rig);
    let check = sends(&rig.ev(Event::Invalidated { key: 0 }));
    assert!(
        matches!(&check[..], [(_, _, Op::Verify { .. })]),
        "{check:?}"
    );
    dropped(&mut rig, holder);
    let acq = request(&mut rig, 2);
    assert!(one_acquisition(&acq), "{acq:?}");
    assert_eq!(rig.core.route(acq[0].0), Route::Direct);
    assert!(
        rig.core.route(check[0].0) == Route::Engine,
        "a check never goes direct"
    );
}

// ===== hand-over across processes =====

fn handover_config() -> Config {
    handover_config_of(1, 1)
}

/// [`config`] with hand-over across processes.
fn handover_config_of(majority: usize, nodes: usize) -> Config {
    Config {
        handover: Some(super::Handover {
            wall_origin_us: 5_000_000,
        }),
        ..config(majority, nodes)
    }
}

/// A waiter that finds the key held (its acquisition left a claim): the
/// core waits with that attempt's claims, and its next run carries the same
/// token, with `before` set.
fn claiming(rig: &mut Rig) -> (CmdId, crate::scripts::Token) {
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    assert_eq!(s.len(), 1);
    let (cmd, token, claim) = match &s[0].2 {
        Op::Acquire { token, claim, .. } => (s[0].0, token.clone(), *claim),
        op => panic!("not an acquisition: {op:?}"),
    };
    assert_eq!(
        claim,
        Some(super::Claim {
            arrival_us: 5_000_000,
            before: false
        }),
        "a waiter's acquisition claims, dated by its arrival"
    );
    rig.at(ms(2));
    let fx = rig.ev(reply(cmd, other()));
    assert!(sends(&fx).is_empty() && grants(&fx).is_empty(), "{fx:?}");
    assert_eq!(rig.core.phase_name(), "idle");
    assert_eq!(
        rig.core.live_token(),
        Some(&token),
        "its claims may still take a key"
    );
    (cmd, token)
}

/// A release hands key 0 to the claim that command `cmd` left under
/// `token`, its message carrying `fence`.
fn handed(
    rig: &mut Rig,
    token: &crate::scripts::Token,
    cmd: CmdId,
    fence: Option<u64>,
) -> Vec<Effect> {
    rig.ev(Event::Handed {
        key: 0,
        token: token.clone(),
        cmd,
        fence,
    })
}

/// [`claiming`], then at 300 ms the release hands the key to that claim,
/// its message carrying `fence`: the effects, and the claim's token.
fn handed_at_300(rig: &mut Rig, fence: Option<u64>) -> (Vec<Effect>, crate::scripts::Token) {
    let (cmd, token) = claiming(rig);
    let fx = handed(rig.at(ms(300)), &token, cmd, fence);
    (fx, token)
}

/// With the counter moved by the script (one instance), a release of a
/// locker with hand-over moves it too when it hands the key over, and the
/// message carries the value: the claimant is granted with it at once,
/// without the fencing step. Without a value (the releaser moves no
/// counter) the fencing step runs, as before.
#[test]
fn a_key_handed_over_with_its_fence_grants_without_the_fencing_step() {
    let fenced = || Config {
        fencing: Fencing::InScript,
        ..handover_config()
    };
    let mut rig = Rig::new(fenced());
    let (fx, _) = handed_at_300(&mut rig, Some(9));
    assert_eq!(granted_fence(&fx), Some(9), "{fx:?}");
    let s = sends(&fx);
    assert!(s.is_empty(), "no fencing step (and no check yet): {s:?}");
    // Its own release moves the counter if it hands the key on.
    let holder = rig.core.holding().expect("held").holder;
    assert_eq!(release_fence(&mut rig, holder), Ok(true));

    let mut rig = Rig::new(fenced());
    let (fx, _) = handed_at_300(&mut rig, None);
    assert_eq!(
        granted_fence(&fx),
        None,
        "not granted before its token: {fx:?}"
    );
    assert!(
        sends(&fx)
            .iter()
            .any(|(_, t, op)| matches!((t, op), (Target::Fence(0), Op::FenceRead))),
        "the fencing step: {fx:?}"
    );

    // Without fencing, or without hand-over, a release moves nothing.
    for cfg in [
        handover_config(),
        Config {
            fencing: Fencing::InScript,
            ..config(1, 1)
        },
    ] {
        let mut rig = Rig::new(cfg);
        let s = sends(&rig.ev(Event::Request {
            id: 1,
            kind: RequestKind::Wait,
            terms: None,
        }));
        let state = KeyState::Ours {
            pttl_ms: None,
            fence: Some(1),
        };
        let fx = rig.at(ms(1)).ev(reply(s[0].0, Outcome::Key(state)));
        let holder = grants(&fx)[0].1;
        assert_eq!(release_fence(&mut rig, holder), Ok(false));
    }
}

/// `holder` releases: whether its one release, of key 0, moves the fencing
/// counter; what it sent, if it sent anything else.
fn release_fence(rig: &mut Rig, holder: HolderId) -> Result<bool, String> {
    let s = sends(&rig.ev(Event::Release { holder, ack: None }));
    match &s[..] {
        [(_, Target::Key(0), Op::Release { fence, .. })] => Ok(*fence),
        _ => Err(format!("{s:?}")),
    }
}

#[test]
fn a_key_handed_over_grants_at_once_with_validity_from_the_claim() {
    let mut rig = Rig::new(handover_config());
    let (fx, token) = handed_at_300(&mut rig, None);
    // Counted from the claim's sending (t = 0): 1000 − 12 drift − 10 margin.
    assert_eq!(grants(&fx), vec![(1, grants(&fx)[0].1, ms(978))], "{fx:?}");
    // No acquisition is needed. The hand-over's write took the key's
    // tracking: a check arms it again, under the same token, once the
    // holder has had the time to release at once.
    let s = sends(&fx);
    assert!(s.is_empty(), "no command at the grant: {s:?}");
    let due = ms(300) + REARM_DELAY;
    assert_eq!(rig.core.next_timeout(), Some(due));
    assert!(sends(&rig.tick(due - Duration::from_nanos(1))).is_empty());
    let s = sends(&rig.tick(due));
    assert!(
        matches!(&s[..], [(_, Target::Key(0), Op::Verify { token: t })] if *t == token),
        "{s:?}"
    );
    assert!(sends(&rig.tick(ms(302))).is_empty(), "one check");
}

/// A lock handed from caller to caller, each holding it a moment: the
/// check that would arm the key's tracking again is not sent at all.
#[test]
fn a_handed_key_released_before_its_check_is_never_checked() {
    let mut rig = Rig::new(handover_config());
    let (mut fx, token) = handed_at_300(&mut rig, None);
    let holder = grants(&fx)[0].1;
    let s = sends(&rig.ev(Event::Release { holder, ack: None }));
    assert!(
        matches!(&s[..], [(_, Target::Key(0), Op::Release { token: t, .. })] if *t == token),
        "{s:?}"
    );
    fx.extend(rig.tick(ms(300) + REARM_DELAY));
    fx.extend(rig.tick(ms(400)));
    assert!(
        !sends(&fx)
            .iter()
            .any(|(_, _, op)| matches!(op, Op::Verify { .. })),
        "{fx:?}"
    );
}

/// A key taken from the holder before its check: the check reads it after
/// the write that took it, and the holder is told then.
#[test]
fn a_handed_key_lost_before_its_check_is_heard_of_by_the_check() {
    let mut rig = Rig::new(handover_config());
    let (fx, _) = handed_at_300(&mut rig, None);
    let holder = grants(&fx)[0].1;
    let s = sends(&rig.tick(ms(300) + REARM_DELAY));
    let [(check, Target::Key(0), Op::Verify { .. })] = &s[..] else {
        panic!("{s:?}");
    };
    let fx = rig.ev(reply(*check, other()));
    assert_eq!(
        ended(&fx),
        vec![(holder, LostReason::Overwritten)],
        "{fx:?}"
    );
}

/// A key handed to an attempt of several keys, still undecided: its check
/// goes at once, as the attempt must hear of the key meanwhile.
#[test]
fn a_key_handed_to_an_undecided_attempt_is_checked_at_once() {
    let mut rig = Rig::new(handover_config_of(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    assert_eq!(s.len(), 3, "{s:?}");
    let token = match &s[0].2 {
        Op::Acquire { token, .. } => token.clone(),
        op => panic!("{op:?}"),
    };
    // Its claim on key 0 was handed over while its run is out.
    rig.at(ms(2));
    let fx = rig.ev(Event::Handed {
        key: 0,
        token: token.clone(),
        cmd: s[0].0,
        fence: None,
    });
    assert!(grants(&fx).is_empty(), "one key of the two needed: {fx:?}");
    let checks: Vec<_> = sends(&fx)
        .into_iter()
        .filter(|(_, t, op)| matches!((t, op), (Target::Key(0), Op::Verify { token: v }) if *v == token))
        .collect();
    assert_eq!(checks.len(), 1, "{fx:?}");
}

#[test]
fn the_next_run_of_a_claiming_waiter_keeps_its_token_and_a_late_hand_over_still_counts() {
    let mut rig = Rig::new(handover_config());
    let (first, token) = claiming(&mut rig);
    // The claims are refreshed a third of a validity after they were made:
    // the run goes on with the same token.
    let s = sends(&rig.tick(ms(340)));
    assert_eq!(s.len(), 1, "{s:?}");
    let second = s[0].0;
    assert!(
        matches!(&s[0].2, Op::Acquire { token: t, claim: Some(c), .. } if *t == token && c.before),
        "{s:?}"
    );
    // The hand-over under the first claim arrives while the second run is
    // out: it counts, from the first claim's sending.
    let fx = handed(rig.at(ms(341)), &token, first, None);
    assert_eq!(grants(&fx), vec![(1, grants(&fx)[0].1, ms(978))], "{fx:?}");
    // The second run ran after the hand-over (had it run before, its claim
    // would have been the one handed): it found its own token, and its
    // late reply changes nothing.
    let fx = rig.ev(reply(second, ours()));
    assert!(ended(&fx).is_empty(), "{fx:?}");
    assert_eq!(rig.core.phase_name(), "holding");
}

/// A waiter's retry out on a direct connection, in no known order with the
/// engine's (which carries the hand-over's message), may have run before
/// the hand-over: its late "other" is no news that the key was lost. On the
/// engine's connection it would be (the test above).
#[test]
fn a_late_other_of_a_retry_out_elsewhere_does_not_undo_the_hand_over() {
    let mut rig = Rig::new(handover_config());
    let (first, token) = claiming(&mut rig);
    let retry = sends(&rig.tick(ms(340)))[0].0;
    rig.core.went_unordered(retry);
    let fx = handed(rig.at(ms(341)), &token, first, None);
    let holder = grants(&fx)[0].1;
    let fx = rig.ev(reply(retry, other()));
    assert!(ended(&fx).is_empty(), "{fx:?}");
    assert_eq!(rig.core.holding().map(|h| h.holder), Some(holder));
}

/// Found by the simulator (`sim_regressions`, seed `0xacc6f5aa75d50bb6`):
/// a waiter's retry made on the engine's thread went on a direct connection
/// in no known order with the engine's, the key was handed to the waiter's
/// claim meanwhile, and an extension sent then could land before the retry,
/// which set the key's TTL back to its own. Such a key is not extended
/// while the retry is out; its reply brings the round forward if the key
/// would lapse before the next one. A retry on the engine's connection is
/// in order with the extension, which goes as usual.
#[test]
fn a_key_whose_acquisition_is_out_elsewhere_is_not_extended_until_it_answers() {
    for unordered in [true, false] {
        let mut rig = Rig::new(handover_config());
        let (first, token) = claiming(&mut rig);
        let retry = sends(&rig.tick(ms(340)));
        assert_eq!(retry.len(), 1, "{retry:?}");
        let retry = retry[0].0;
        if unordered {
            rig.core.went_unordered(retry);
        }
        let fx = handed(rig.at(ms(341)), &token, first, None);
        let holder = grants(&fx)[0].1;
        // The extension round on the grid.
        let ext: Vec<_> = sends(&rig.tick(ms(500)))
            .into_iter()
            .filter(|(_, t, op)| matches!((t, op), (Target::Key(0), Op::Extend { .. })))
            .collect();
        if !unordered {
            assert_eq!(ext.len(), 1, "in order with the retry: extended");
            continue;
        }
        assert!(ext.is_empty(), "the retry is out elsewhere: {ext:?}");
        // The retry answers late: the key it set (from 340 ms, 1 s) would
        // lapse before the next round (1,000 ms) could extend it and
        // leave the lock its validity: the round goes now.
        let fx = rig.at(ms(900)).ev(reply(retry, ours()));
        assert!(ended(&fx).is_empty(), "{fx:?}");
        assert!(rig.core.next_timeout() <= Some(ms(900)));
        let ext = sends(&rig.tick(ms(900)));
        assert!(
            ext.iter()
                .any(|(_, t, op)| matches!((t, op), (Target::Key(0), Op::Extend { .. }))),
            "{ext:?}"
        );
        for (cmd, _, _) in &ext {
            rig.at(ms(902)).ev(reply(*cmd, ours()));
        }
        assert_eq!(rig.core.holding().map(|h| h.holder), Some(holder));
    }
}

#[test]
fn a_reply_sent_after_the_handed_claim_is_newer_news_of_the_key() {
    let mut rig = Rig::new(handover_config());
    let (first, token) = claiming(&mut rig);
    let second = sends(&rig.tick(ms(340)))[0].0;
    rig.at(ms(341));
    let fx = rig.ev(Event::Handed {
        key: 0,
        token,
        cmd: first,
        fence: None,
    });
    let holder = grants(&fx)[0].1;
    // The second run found the key another's after the hand-over: the key
    // was lost since (overwritten), and the holder is told.
    let fx = rig.ev(reply(second, other()));
    assert_eq!(
        ended(&fx),
        vec![(holder, LostReason::Overwritten)],
        "{fx:?}"
    );
}

#[test]
fn a_hand_over_that_leaves_too_little_validity_is_given_back() {
    let mut rig = Rig::new(handover_config());
    let (cmd, token) = claiming(&mut rig);
    // 950 ms after the claim: 38 ms of validity left, under a round trip.
    rig.at(ms(950));
    let fx = rig.ev(Event::Handed {
        key: 0,
        token: token.clone(),
        cmd,
        fence: None,
    });
    assert!(grants(&fx).is_empty(), "{fx:?}");
    let s = sends(&fx);
    assert!(
        s.iter()
            .any(|(_, _, op)| matches!(op, Op::Release { token: t, .. } if *t == token)),
        "the key is released: {s:?}"
    );
    assert!(
        !s.iter().any(|(_, _, op)| matches!(op, Op::Acquire { .. })),
        "{s:?}"
    );
}

#[test]
fn a_key_handed_to_nobody_waiting_is_released_under_its_token() {
    let mut rig = Rig::new(handover_config());
    let (cmd, token) = claiming(&mut rig);
    rig.ev(Event::Cancel { id: 1 });
    let fx = rig.ev(Event::Handed {
        key: 0,
        token: token.clone(),
        cmd,
        fence: None,
    });
    let s = sends(&fx);
    assert!(
        matches!(&s[..], [(_, Target::Key(0), Op::Release { token: t, .. })] if *t == token),
        "{s:?}"
    );
    assert_eq!(
        rig.core.live_token(),
        None,
        "the claims' token is used no more"
    );
    // An unknown token (a third party's message) is only ever deleted under
    // itself: nothing of ours is touched.
    let stranger = crate::scripts::Token::new(false);
    let s = sends(&rig.ev(Event::Handed {
        key: 0,
        token: stranger.clone(),
        cmd,
        fence: None,
    }));
    assert!(
        matches!(&s[..], [(_, Target::Key(0), Op::Release { token: t, .. })] if *t == stranger),
        "{s:?}"
    );
    // A key index out of range is ignored.
    let fx = rig.ev(Event::Handed {
        key: 7,
        token,
        cmd,
        fence: None,
    });
    assert!(fx.is_empty(), "{fx:?}");
}

#[test]
fn a_waiter_that_gives_up_takes_its_claims_back() {
    let mut rig = Rig::new(handover_config());
    let (_, token) = claiming(&mut rig);
    rig.at(ms(50));
    let s = sends(&rig.ev(Event::Cancel { id: 1 }));
    assert!(
        matches!(&s[..], [(_, Target::Key(0), Op::Unclaim { token: t })] if *t == token),
        "the last waiter gone, its claim is taken back: {s:?}"
    );
    assert_eq!(rig.core.live_token(), None);
    // A waiter that leaves while its attempt is out: the attempt, failing,
    // keeps no claims for nobody, and takes them back.
    let s = sends(&rig.ev(Event::Request {
        id: 2,
        kind: RequestKind::Wait,
        terms: None,
    }));
    let (cmd, token) = match &s[..] {
        [(cmd, _, Op::Acquire { token, claim, .. })] => {
            assert!(claim.is_some(), "{s:?}");
            (*cmd, token.clone())
        }
        _ => panic!("one acquisition: {s:?}"),
    };
    assert!(sends(&rig.ev(Event::Cancel { id: 2 })).is_empty());
    let s = sends(&rig.ev(reply(cmd, other())));
    assert!(
        matches!(&s[..], [(_, Target::Key(0), Op::Unclaim { token: t })] if *t == token),
        "{s:?}"
    );
    assert_eq!(rig.core.live_token(), None);
}

#[test]
fn an_attempt_that_took_a_key_keeps_no_claims() {
    let mut rig = Rig::new(handover_config_of(2, 3));
    let s = sends(&rig.ev(Event::Request {
        id: 1,
        kind: RequestKind::Wait,
        terms: None,
    }));
    let token = match &s[0].2 {
        Op::Acquire { token, .. } => token.clone(),
        op => panic!("{op:?}"),
    };
    rig.at(ms(2));
    rig.ev(reply(s[0].0, ours()));
    rig.ev(reply(s[1].0, other()));
    let fx = rig.ev(reply(s[2].0, other()));
    // Its key is released under its token: a later run must not count a
    // key that delete may remove, so the next run takes a new token.
    assert!(
        sends(&fx)
            .iter()
            .any(|(_, _, op)| matches!(op, Op::Release { token: t, .. } if *t == token)),
        "{fx:?}"
    );
    assert_eq!(rig.core.live_token(), None);
    rig.at(ms(10));
    let s = sends(&rig.ev(Event::Invalidated { key: 1 }));
    assert!(
        matches!(&s[0].2, Op::Acquire { token: t, claim: Some(c), .. } if *t != token && !c.before),
        "{s:?}"
    );
}

#[test]
fn a_claimed_key_that_changes_is_run_for_within_a_time_limit() {
    let mut rig = Rig::new(handover_config());
    let (_, token) = claiming(&mut rig);
    // It changed: an extension, or a hand-over (to us, whose message says
    // so, or to an older claim) need nothing; a key freed otherwise (a
    // release without hand-over, an expiry) is found by a run within one
    // time limit (100 ms here), not at the claims' refresh (333 ms).
    rig.at(ms(50));
    let fx = rig.ev(Event::Invalidated { key: 0 });
    assert!(fx.is_empty(), "{fx:?}");
    assert!(sends(&rig.tick(ms(149))).is_empty());
    let s = sends(&rig.tick(ms(150)));
    assert!(
        matches!(&s[..], [(_, Target::Key(0), Op::Acquire { token: t, claim: Some(c), .. })] if *t == token && c.before),
        "{s:?}"
    );
}

#[test]
fn a_claiming_run_that_hears_of_a_change_while_out_waits_on_its_claims() {
    // An invalidation of the key while the waiter's run is out, the reply
    // then "held by another": with its claim standing, the change was an
    // extension or a hand-over (to us, whose message says so, or to an
    // older claim) and needs nothing; a key freed otherwise is run for
    // within one time limit (100 ms here), not at once.
    let mut rig = Rig::new(handover_config());
    let s = request(&mut rig, 1);
    let (cmd, token) = match &s[..] {
        [(cmd, _, Op::Acquire { token, claim, .. })] if claim.is_some() => (*cmd, token.clone()),
        s => panic!("not a claiming acquisition: {s:?}"),
    };
    rig.at(ms(1));
    assert!(sends(&rig.ev(Event::Invalidated { key: 0 })).is_empty());
    let fx = rig.at(ms(2)).ev(reply(cmd, other()));
    assert!(sends(&fx).is_empty(), "no run at once: {fx:?}");
    assert_eq!(rig.core.phase_name(), "idle");
    assert!(sends(&rig.tick(ms(101))).is_empty());
    let s = sends(&rig.tick(ms(102)));
    assert!(
        matches!(&s[..], [(_, Target::Key(0), Op::Acquire { token: t, claim: Some(c), .. })] if *t == token && c.before),
        "{s:?}"
    );
    // Without hand-over the same run goes again at once: nothing else
    // would tell it of a release.
    let mut rig = Rig::new(config(1, 1));
    let s = request(&mut rig, 1);
    rig.ev(Event::Invalidated { key: 0 });
    let again = sends(&rig.ev(reply(s[0].0, other())));
    assert!(one_acquisition(&again), "{again:?}");
}

#[test]
fn a_claiming_run_behind_our_own_release_waits_on_its_claims() {
    // A loop of `lock()` and a dropped guard, with hand-over: the next
    // acquisition goes out before the delete's reply, which comes first
    // (1: deleted, or handed to a claim). Had the acquisition run before
    // the release, its claim was there to be handed the key; after, it
    // found the key free (and took it) or handed to another, and claimed
    // it. Either way nothing is run at once. Before, an acquisition that
    // found the key held ran again at once.
    let mut rig = Rig::new(handover_config());
    let (holder, _) = held_one(&mut rig);
    let del = dropped(&mut rig, holder);
    let acq = request(&mut rig, 2);
    let (cmd, token) = match &acq[..] {
        [(cmd, _, Op::Acquire { token, claim, .. })] if claim.is_some() => (*cmd, token.clone()),
        s => panic!("not a claiming acquisition: {s:?}"),
    };
    assert!(sends(&rig.ev(reply(del[0].0, Outcome::Released(true)))).is_empty());
    let fx = rig.at(ms(1)).ev(reply(cmd, other()));
    assert!(sends(&fx).is_empty(), "no run at once: {fx:?}");
    // The key handed to its claim: granted from the claim's sending.
    let fx = rig.at(ms(3)).ev(Event::Handed {
        key: 0,
        token,
        cmd,
        fence: None,
    });
    assert_eq!(grants(&fx).len(), 1, "{fx:?}");
    // Had the acquisition found the key free, it took it.
    let mut rig = Rig::new(handover_config());
    let (holder, _) = held_one(&mut rig);
    let del = dropped(&mut rig, holder);
    let acq = request(&mut rig, 2);
    rig.ev(reply(del[0].0, Outcome::Released(true)));
    assert_eq!(grants(&rig.ev(reply(acq[0].0, ours()))).len(), 1);
    // Without hand-over, a key found held after our own delete is run for
    // at once (with NOLOOP no invalidation of our delete comes).
    let mut rig = Rig::new(config(1, 1));
    let (holder, _) = held_one(&mut rig);
    let del = dropped(&mut rig, holder);
    let acq = request(&mut rig, 2);
    rig.ev(reply(del[0].0, Outcome::Released(true)));
    let again = sends(&rig.ev(reply(acq[0].0, other())));
    assert!(one_acquisition(&again), "{again:?}");
}
