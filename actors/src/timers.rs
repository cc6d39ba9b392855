//! The lock actors' timers: one task per locker instead of one per timer.
//!
//! Why not ractor's `send_after`: it spawns a tokio task per timer and
//! cancelling one aborts that task, which wakes it once more. A lock + unlock
//! arms three of them (the attempt's bound, the extension tick, the validity
//! deadline) and cancels them all, and on the multi-thread runtime every spawn
//! can wake the other worker thread. Here arming is a push onto a heap under a
//! mutex, cancelling is a removal from a map, and the one task is woken only
//! when a timer is armed earlier than the one it sleeps for. Cancelled entries
//! stay in the heap until they reach its top (or a compaction), so a cancel
//! costs no wake-up at all.
//!
//! Delivery is a cast, like `send_after`'s: a timer message may still arrive
//! after a cancel that raced with it; the lock core treats a timeout that
//! finds nothing due as a no-op.
//!
//! The message is always `LockMsg::Timeout`, so a timer keeps only the actor
//! to tell: with 10,000 held locks the table of live timers grows to 32,768
//! buckets, which cost 4.2 MB (423 bytes per lock) while each entry carried a
//! whole `LockMsg` (128 bytes with its id) and cost 557 KB with the actor
//! alone (16 bytes).
//!
//! Deadlines are on the engine's clock (`clock`, which counts suspended
//! time), and the task sleeps on that clock with `clock::Sleeper`, to the
//! microsecond rather than to tokio's millisecond tick.

use ractor::ActorRef;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::clock;
use crate::core::Time;
use crate::msg::LockMsg;

/// Below this many heap entries, dead ones are left for the task to pop.
/// Above, the heap is compacted once it holds twice as many entries as
/// there are live timers, and its room brought down to twice the live
/// ones. A held lock re-arms its timer at each extension, which leaves a
/// dead entry each time: compacted at four times the live ones, as
/// before, the heap of 10,000 held locks kept 22 bytes more per lock after
/// two extension periods (the scale bench; BENCHMARKS.md, section 6).
const COMPACT_MIN: usize = 4096;

/// The handle the locker's actors arm timers with. Dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Timers {
    inner: Arc<Inner>,
}

/// A pending timer: dropping it cancels it.
#[derive(Debug)]
pub(crate) struct Timer {
    id: u64,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    wheel: Mutex<Wheel>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Wheel {
    /// Deadlines of live and cancelled timers, earliest first.
    heap: BinaryHeap<Reverse<(Time, u64)>>,
    /// The live timers by id: the actor each one tells.
    live: HashMap<u64, ActorRef<LockMsg>>,
    next_id: u64,
    /// What the task sleeps until; `None` while it waits for a first timer
    /// (or has not looked yet), so an arm must wake it.
    sleeping_until: Option<Time>,
    closed: bool,
}

impl Timers {
    /// Starts the timer task on the current runtime.
    pub(crate) fn start() -> Timers {
        let inner = Arc::new(Inner {
            wheel: Mutex::new(Wheel::default()),
            wake: Notify::new(),
        });
        tokio::spawn(run(inner.clone()));
        Timers { inner }
    }

    /// Casts `LockMsg::Timeout` to `to` at `at` (engine clock), unless the
    /// returned [`Timer`] is dropped first.
    pub(crate) fn at(&self, at: Time, to: &ActorRef<LockMsg>) -> Timer {
        let id = self.arm(at, to);
        Timer {
            id,
            inner: self.inner.clone(),
        }
    }

    fn arm(&self, at: Time, to: &ActorRef<LockMsg>) -> u64 {
        let mut w = lock(&self.inner.wheel);
        let id = w.next_id;
        w.next_id += 1;
        w.heap.push(Reverse((at, id)));
        w.live.insert(id, to.clone());
        if w.heap.len() > COMPACT_MIN && w.heap.len() > 2 * w.live.len() {
            let Wheel { heap, live, .. } = &mut *w;
            heap.retain(|Reverse((_, id))| live.contains_key(id));
            heap.shrink_to(2 * heap.len());
        }
        let wake = w.sleeping_until.is_none_or(|s| at < s);
        if wake {
            w.sleeping_until = Some(at);
        }
        drop(w);
        if wake {
            // Stores a permit if the task is between looking and waiting.
            self.inner.wake.notify_one();
        }
        id
    }

    /// Timers armed and not yet fired or cancelled.
    #[cfg(test)]
    fn live(&self) -> usize {
        lock(&self.inner.wheel).live.len()
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        let mut w = lock(&self.inner.wheel);
        w.closed = true;
        w.live.clear();
        w.heap.clear();
        drop(w);
        self.inner.wake.notify_one();
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        lock(&self.inner.wheel).live.remove(&self.id);
    }
}

async fn run(inner: Arc<Inner>) {
    let sleeper = clock::Sleeper::new();
    let mut due = Vec::new();
    loop {
        let next = {
            let mut w = lock(&inner.wheel);
            if w.closed {
                return;
            }
            let now = clock::now();
            while let Some(&Reverse((at, id))) = w.heap.peek() {
                if !w.live.contains_key(&id) {
                    w.heap.pop();
                    continue;
                }
                if at > now {
                    break;
                }
                w.heap.pop();
                if let Some(e) = w.live.remove(&id) {
                    due.push(e);
                }
            }
            let next = w.heap.peek().map(|Reverse((at, _))| *at);
            w.sleeping_until = next;
            next
        };
        for to in due.drain(..) {
            let _ = to.cast(LockMsg::Timeout);
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = sleeper.until(at) => {}
                    _ = inner.wake.notified() => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

// A poisoned mutex only means a thread panicked while holding it; the heap and
// map stay structurally valid.
fn lock(m: &Mutex<Wheel>) -> MutexGuard<'_, Wheel> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// Forwards its mark when its timer fires: one probe per timer, since
    /// every timer sends the same message.
    struct Probe;

    impl Actor for Probe {
        type Msg = LockMsg;
        type State = (u64, mpsc::UnboundedSender<u64>);
        type Arguments = (u64, mpsc::UnboundedSender<u64>);

        async fn pre_start(
            &self,
            _: ActorRef<LockMsg>,
            args: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(args)
        }

        async fn handle(
            &self,
            _: ActorRef<LockMsg>,
            msg: LockMsg,
            (mark, tx): &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let LockMsg::Timeout = msg {
                let _ = tx.send(*mark);
            }
            Ok(())
        }
    }

    async fn probe(mark: u64, tx: &mpsc::UnboundedSender<u64>) -> ActorRef<LockMsg> {
        let (probe, _) = Actor::spawn(None, Probe, (mark, tx.clone())).await.unwrap();
        probe
    }

    fn in_ms(n: u64) -> Time {
        clock::now() + Duration::from_millis(n)
    }

    #[tokio::test]
    async fn fires_in_deadline_order_and_skips_cancelled() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut probes = Vec::new();
        for mark in 0..4 {
            probes.push(probe(mark, &tx).await);
        }
        let timers = Timers::start();
        let _c = timers.at(in_ms(60), &probes[3]);
        let cancelled = timers.at(in_ms(20), &probes[1]);
        let _b = timers.at(in_ms(40), &probes[2]);
        // Armed later but due earlier than everything: must wake the task.
        let _a = timers.at(in_ms(10), &probes[0]);
        drop(cancelled);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(rx.recv().await.unwrap());
        }
        assert_eq!(got, vec![0, 2, 3]);
        assert_eq!(timers.live(), 0);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(rx.try_recv().is_err(), "a cancelled timer fired");
        for p in probes {
            p.stop(None);
        }
    }

    #[tokio::test]
    async fn a_far_deadline_is_checked_against_the_engine_clock() {
        // Longer than one sleep: the task wakes, finds it not due, sleeps on.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let probe = probe(9, &tx).await;
        let timers = Timers::start();
        let due = in_ms(clock::MAX_SLEEP.as_millis() as u64 + 100);
        let _t = timers.at(due, &probe);
        assert_eq!(rx.recv().await, Some(9));
        assert!(clock::now() >= due);
        probe.stop(None);
    }

    /// Timers re-armed again and again, as held locks re-arm theirs at
    /// each extension: the heap keeps at most about twice the live timers,
    /// and no more room than that once an arm has returned.
    #[tokio::test]
    async fn rearmed_timers_keep_the_heap_within_twice_the_live_ones() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let p = probe(0, &tx).await;
        let timers = Timers::start();
        let n = COMPACT_MIN * 2;
        let mut live: Vec<Timer> = (0..n).map(|_| timers.at(in_ms(60_000), &p)).collect();
        for round in 0..6 {
            for t in live.iter_mut() {
                *t = timers.at(in_ms(60_000 + round), &p);
            }
            let w = lock(&timers.inner.wheel);
            assert_eq!(w.live.len(), n);
            assert!(
                w.heap.len() <= 2 * n + 2,
                "round {round}: {} entries",
                w.heap.len()
            );
            assert!(
                w.heap.capacity() <= 2 * n + 2,
                "round {round}: room for {}",
                w.heap.capacity()
            );
        }
        drop(live);
        drop(timers);
        p.stop(None);
    }

    #[tokio::test]
    async fn many_cancelled_timers_are_compacted() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let dropped = probe(0, &tx).await;
        let kept = probe(u64::MAX, &tx).await;
        let timers = Timers::start();
        for _ in 0..(COMPACT_MIN * 3) {
            drop(timers.at(in_ms(60_000), &dropped));
        }
        let keep = timers.at(in_ms(1), &kept);
        assert!(lock(&timers.inner.wheel).heap.len() <= COMPACT_MIN * 2);
        assert_eq!(rx.recv().await, Some(u64::MAX));
        drop(keep);
        drop(timers);
        dropped.stop(None);
        kept.stop(None);
    }
}
