//! The local queue of one lock name, and the hand-over policy.
//!
//! Only the queue's head contends on the servers, so callers of one process
//! cause no thundering herd. A release can hand the lock straight to the next
//! local caller (same keys, same token, no round trip: lock cohorting), within
//! limits that keep other processes from being shut out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::ops::Place;
use super::terms::Terms;
use super::time::Time;
use crate::few::Room;

/// A caller's request id (the shell keeps its reply channel).
pub(crate) type ReqId = u64;

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

/// One queued caller.
#[derive(Debug, Clone)]
struct Queued {
    id: ReqId,
    kind: RequestKind,
    /// Shared: the locker's own for nearly every caller (see
    /// `LockCore::keep`).
    terms: Arc<Terms>,
    /// Its place in the fair queues (fair queueing only).
    place: Option<Place>,
    /// When its place was last sent to the servers.
    placed: Option<Time>,
}

/// Callers waiting, oldest first; a `Force` that had to wait for an attempt
/// in flight goes to the front.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// One word while it has no room (a held lock nobody waits for).
    queue: Room<VecDeque<Queued>>,
}

impl Waiters {
    pub(crate) fn push(&mut self, id: ReqId, kind: RequestKind, terms: Arc<Terms>) {
        self.push_placed(id, kind, terms, None);
    }

    /// Queues a caller with its place in the fair queues.
    pub(crate) fn push_placed(
        &mut self,
        id: ReqId,
        kind: RequestKind,
        terms: Arc<Terms>,
        place: Option<Place>,
    ) {
        let q = Queued {
            id,
            kind,
            terms,
            place,
            placed: None,
        };
        // Room for one to start with: most names have one caller at a time,
        // and a lock keeps whatever room its queue ever had until it
        // settles (`trim`).
        let queue = self.queue.make_one();
        if kind == RequestKind::Force {
            // Behind forces already waiting, ahead of every waiter.
            let at = queue
                .iter()
                .position(|q| q.kind != RequestKind::Force)
                .unwrap_or(queue.len());
            queue.insert(at, q);
        } else {
            queue.push_back(q);
        }
    }

    /// Removes `id`; false if it was not queued.
    pub(crate) fn cancel(&mut self, id: ReqId) -> bool {
        let Some(queue) = self.queue.get_mut() else {
            return false;
        };
        let before = queue.len();
        queue.retain(|q| q.id != id);
        queue.len() != before
    }

    /// The force at the head, taken off the queue, with its terms.
    pub(crate) fn pop_force(&mut self) -> Option<(ReqId, Arc<Terms>)> {
        let queue = self.queue.get_mut()?;
        match queue.front() {
            Some(q) if q.kind == RequestKind::Force => queue.pop_front().map(|q| (q.id, q.terms)),
            _ => None,
        }
    }

    /// The oldest waiter, taken off the queue, with its terms.
    pub(crate) fn pop_waiter(&mut self) -> Option<(ReqId, Arc<Terms>)> {
        let queue = self.queue.get_mut()?;
        let at = queue.iter().position(|q| q.kind == RequestKind::Wait)?;
        queue.remove(at).map(|q| (q.id, q.terms))
    }

    /// The terms of the oldest waiter: what an attempt for the queue writes.
    pub(crate) fn head_terms(&self) -> Option<Terms> {
        self.queue
            .iter()
            .find(|q| q.kind == RequestKind::Wait)
            .map(|q| *q.terms)
    }

    /// The fair-queue place of the oldest waiter.
    pub(crate) fn head_place(&self) -> Option<Place> {
        self.queue
            .iter()
            .find(|q| q.kind == RequestKind::Wait)
            .and_then(|q| q.place)
    }

    /// Whether the oldest waiter's place was ever sent to the servers.
    pub(crate) fn head_placed(&self) -> bool {
        self.queue
            .iter()
            .find(|q| q.kind == RequestKind::Wait)
            .is_some_and(|q| q.placed.is_some())
    }

    /// The places of the oldest `limit` waiters that have one.
    pub(crate) fn places(&self, limit: usize) -> Vec<Place> {
        self.queue
            .iter()
            .filter_map(|q| q.place)
            .take(limit)
            .collect()
    }

    /// Among the oldest `limit` waiters with a place that arrived no later
    /// than `ripe_us`, the places not sent within `every` of `now` (or
    /// never): marked sent at `now`.
    pub(crate) fn places_due(
        &mut self,
        now: Time,
        every: Duration,
        ripe_us: u64,
        limit: usize,
    ) -> Vec<Place> {
        let mut due = Vec::new();
        let ripe = self
            .queue
            .iter_mut()
            .filter(|q| q.place.is_some_and(|p| p.since_us <= ripe_us));
        for q in ripe.take(limit) {
            if q.placed.is_none_or(|at| now >= at + every) {
                q.placed = Some(now);
                due.extend(q.place);
            }
        }
        due
    }

    /// The place of the waiter whose member is `member`.
    pub(crate) fn place_by_member(&self, member: u64) -> Option<Place> {
        self.queue
            .iter()
            .filter_map(|q| q.place)
            .find(|p| p.member == member)
    }

    /// The place of `id`, if it was ever sent to the servers.
    pub(crate) fn sent_place_of(&self, id: ReqId) -> Option<Place> {
        self.queue
            .iter()
            .find(|q| q.id == id && q.placed.is_some())
            .and_then(|q| q.place)
    }

    /// Whether any waiter's place was sent to the servers.
    pub(crate) fn any_sent(&self) -> bool {
        self.queue.iter().any(|q| q.placed.is_some())
    }

    /// The places that were sent to the servers.
    pub(crate) fn sent_places(&self) -> Vec<Place> {
        self.queue
            .iter()
            .filter(|q| q.placed.is_some())
            .filter_map(|q| q.place)
            .collect()
    }

    /// The arrival (µs) of the oldest waiter whose place was never sent,
    /// among the oldest `limit` with a place.
    pub(crate) fn first_unsent_since(&self, limit: usize) -> Option<u64> {
        self.queue
            .iter()
            .filter(|q| q.place.is_some())
            .take(limit)
            .find(|q| q.placed.is_none())
            .and_then(|q| q.place)
            .map(|p| p.since_us)
    }

    pub(crate) fn has_waiter(&self) -> bool {
        self.queue.iter().any(|q| q.kind == RequestKind::Wait)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the queue has room.
    #[cfg(test)]
    pub(crate) fn has_room(&self) -> bool {
        self.queue.has_room()
    }

    /// Gives back the queue's room if nobody is in it.
    pub(crate) fn trim(&mut self) {
        self.queue.trim();
    }

    /// Empties the queue (closing).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = ReqId> {
        self.queue.take().into_iter().map(|q| q.id)
    }
}

/// Local hand-overs go on only this long after the keys were acquired: they
/// save two round trips per grant, which matters for short critical sections;
/// with long ones, handing over would only keep other processes out longer.
pub(crate) const HANDOVER_WINDOW: Duration = Duration::from_millis(10);

/// Whether a released grant may go straight to the next local waiter: the
/// hand-over budget is not spent, the keys are fresh, and the grant stays
/// safe for at least one more command round trip.
pub(crate) fn may_hand_over(
    handovers: u32,
    limit: u32,
    acquired_at: Time,
    ends_at: Time,
    now: Time,
    round_trip: Duration,
) -> bool {
    within_budget(handovers, limit, acquired_at, now) && ends_at > now + round_trip
}

/// The budget of a run of grants this process takes one after the other
/// (local hand-overs, and acquisitions right behind our own deletes): at
/// most `limit` grants after the first, taken within `HANDOVER_WINDOW` of
/// it at `since`. Past it, other processes get their turn.
pub(crate) fn within_budget(handovers: u32, limit: u32, since: Time, now: Time) -> bool {
    handovers < limit && now.since(since) < HANDOVER_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(ttl_ms: u64) -> Arc<Terms> {
        let ttl = Duration::from_millis(ttl_ms);
        Arc::new(Terms::new(super::super::quorum::Life::of(ttl), ttl / 2))
    }

    #[test]
    fn forces_go_first_in_their_own_order() {
        let mut w = Waiters::default();
        w.push(1, RequestKind::Wait, terms(1000));
        w.push(2, RequestKind::Force, terms(2000));
        w.push(3, RequestKind::Wait, terms(3000));
        w.push(4, RequestKind::Force, terms(4000));
        assert!(w.has_waiter());
        assert_eq!(w.head_terms(), Some(*terms(1000)));
        assert_eq!(w.pop_waiter(), Some((1, terms(1000))));
        assert_eq!(w.head_terms(), Some(*terms(3000)), "forces are not waiters");
        assert_eq!(w.pop_force(), Some((2, terms(2000))));
        assert_eq!(w.pop_force(), Some((4, terms(4000))));
        assert_eq!(w.pop_force(), None);
        assert!(w.cancel(3));
        assert!(!w.cancel(3));
        assert!(w.is_empty());
        assert_eq!(w.pop_waiter(), None);
        assert_eq!(w.head_terms(), None);
    }

    #[test]
    fn hand_over_policy() {
        let ms = |n: u64| Time::from_nanos(n * 1_000_000);
        let rtt = Duration::from_millis(5);
        // (handovers, limit, acquired, ends, now, want)
        let cases = [
            (0, 32, 0, 1000, 1, true),
            (32, 32, 0, 1000, 1, false),
            (0, 0, 0, 1000, 1, false),
            (0, 32, 0, 1000, 10, false),
            (0, 32, 0, 1000, 9, true),
            (0, 32, 0, 6, 1, false),
            (0, 32, 0, 7, 1, true),
        ];
        for (h, limit, acq, ends, now, want) in cases {
            assert_eq!(
                may_hand_over(h, limit, ms(acq), ms(ends), ms(now), rtt),
                want,
                "{h} {limit} {acq} {ends} {now}"
            );
        }
    }
}
