//! What a holder sees of its grant: one writer (the engine's record of the
//! holder), any number of readers (the lease, its watchers, the tasks behind
//! their tokens).
//!
//! Why not tokio's `watch` channel, which does the same: every held lock has
//! one, and a `watch` channel keeps eight `Notify`s for its receivers, 352
//! bytes on the heap, on top of the 112 of the grant's `CancellationToken`.
//! This cell is one allocation of 88 bytes, and the cancellation token it
//! hands out is made only for a holder that asks for one. The same rule
//! holds as before: the token is cancelled before anyone can see the end.
//!
//! A reader may also hand the grant over and leave a hook, told the end
//! once (see [`StatusRx::attach`]): the writer tells it as it ends the
//! grant, before the engine answers anyone else, so a forwarder that hands
//! grants to an actor delivers a grant's end before the next grant of the
//! same lock.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::core::Time;
use crate::error::LostReason;

/// What a grant looks like to its holder, published by its `LockActor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrantStatus {
    /// Held; safe until `valid_until` (on the engine's clock) unless extended.
    Held { valid_until: Time },
    /// Ended, for this reason.
    Ended(LostReason),
}

/// Told how a grant ended, once.
pub(crate) type Hook = Box<dyn FnOnce(LostReason) + Send>;

struct Shown {
    status: GrantStatus,
    /// Made on a reader's first request, cancelled at the end.
    token: Option<CancellationToken>,
    /// Left by a reader to be told the end. Boxed once more so the cell
    /// stays a pointer smaller (88 bytes, in the allocator's 96-byte class
    /// as before) for the many grants that have none.
    hook: Option<Box<Hook>>,
}

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shown")
            .field("status", &self.status)
            .field("token", &self.token)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

/// What [`StatusRx::attach`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attach {
    /// Handed over; the hook will be told the end.
    Attached,
    /// The hand-over returned false; the hook was dropped.
    Refused,
    /// The grant had ended: nothing was run.
    Ended(LostReason),
}

/// Tells `hook` the end. A hook that panics (it may build a user's message)
/// is caught here: the writer is the engine, which must go on.
fn tell(hook: Hook, reason: LostReason) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(reason))).is_err() {
        tracing::error!(
            reason = reason.as_str(),
            "a hook told of a grant's end panicked"
        );
    }
}

#[derive(Debug)]
struct Cell {
    shown: Mutex<Shown>,
    changed: Notify,
}

impl Cell {
    /// The state, locked. Nothing under this lock can panic halfway
    /// through, so a poisoned lock still holds a whole state.
    fn shown(&self) -> MutexGuard<'_, Shown> {
        self.shown.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer's side, kept by the engine. Dropped while the grant is still
/// shown held, it ends it as [`LostReason::EngineStopped`]: nobody extends
/// the keys any more.
#[derive(Debug)]
pub(crate) struct StatusTx(Arc<Cell>);

/// A reader's side, kept by the lease and its watchers.
#[derive(Debug, Clone)]
pub(crate) struct StatusRx(Arc<Cell>);

/// A new cell showing the grant held until `valid_until`.
pub(crate) fn status(valid_until: Time) -> (StatusTx, StatusRx) {
    let cell = Arc::new(Cell {
        shown: Mutex::new(Shown {
            status: GrantStatus::Held { valid_until },
            token: None,
            hook: None,
        }),
        changed: Notify::new(),
    });
    (StatusTx(cell.clone()), StatusRx(cell))
}

impl StatusTx {
    /// Shows the grant held until `valid_until` (an extension); nothing if
    /// it has ended.
    pub(crate) fn extend(&self, valid_until: Time) {
        {
            let mut shown = self.0.shown();
            if matches!(shown.status, GrantStatus::Ended(_)) {
                return;
            }
            shown.status = GrantStatus::Held { valid_until };
        }
        self.0.changed.notify_waiters();
    }

    /// Ends the grant for `reason`: its token first, so that whoever sees
    /// the end also finds the token cancelled; then the waiting readers, then
    /// the hook, here, before this returns. False if it had ended already
    /// (the first reason stays).
    pub(crate) fn end(&self, reason: LostReason) -> bool {
        let hook = {
            let mut shown = self.0.shown();
            if matches!(shown.status, GrantStatus::Ended(_)) {
                return false;
            }
            if let Some(token) = &shown.token {
                token.cancel();
            }
            shown.status = GrantStatus::Ended(reason);
            shown.hook.take()
        };
        self.0.changed.notify_waiters();
        if let Some(hook) = hook {
            tell(*hook, reason);
        }
        true
    }
}

impl Drop for StatusTx {
    fn drop(&mut self) {
        self.end(LostReason::EngineStopped);
    }
}

impl StatusRx {
    /// What the grant looks like now.
    pub(crate) fn get(&self) -> GrantStatus {
        self.0.shown().status
    }

    /// The grant's token: cancelled when it ends (already cancelled if it
    /// has). Made on the first call, then shared.
    pub(crate) fn token(&self) -> CancellationToken {
        let mut shown = self.0.shown();
        let ended = matches!(shown.status, GrantStatus::Ended(_));
        let token = shown.token.get_or_insert_with(|| {
            let token = CancellationToken::new();
            if ended {
                token.cancel();
            }
            token
        });
        token.clone()
    }

    /// While the grant is held, runs `first` (a hand-over) and, unless it
    /// returns false, leaves `hook` to be told the end: both under the
    /// cell's lock, so that no end falls between them, and the writer tells
    /// `hook` as it ends the grant. A grant that has ended already runs
    /// neither. Replaces an earlier hook, which is dropped untold.
    pub(crate) fn attach(&self, first: impl FnOnce() -> bool, hook: Hook) -> Attach {
        let mut shown = self.0.shown();
        if let GrantStatus::Ended(reason) = shown.status {
            // Dropped only once unlocked: `first` may own the grant's lease,
            // whose drop goes to the engine, which may be ending a grant.
            drop(shown);
            drop((first, hook));
            return Attach::Ended(reason);
        }
        if !first() {
            return Attach::Refused;
        }
        shown.hook = Some(Box::new(hook));
        Attach::Attached
    }

    /// Tells the hook `reason` if it is still there (the end was seen here
    /// first, on the reader's own clock), else nothing: the writer told it.
    /// Told under the cell's lock, so a writer ending the grant meanwhile
    /// waits for it: the engine answers nobody else before the hook has
    /// been told.
    pub(crate) fn tell_hook(&self, reason: LostReason) {
        let mut shown = self.0.shown();
        if let Some(hook) = shown.hook.take() {
            tell(*hook, reason);
        }
    }

    /// Drops the hook untold, if it is still there.
    pub(crate) fn detach(&self) {
        let hook = self.0.shown().hook.take();
        drop(hook);
    }

    /// Reads the status with `read`: `Some` of what it returns when it
    /// decides, else (`Err(limit)`) `None` once the status changes or
    /// `limit` passes, whichever is first; then read again. A change that
    /// lands between the read and the wait is not missed: the wait is
    /// registered before the read.
    pub(crate) async fn step<T>(
        &self,
        read: impl FnOnce(GrantStatus) -> Result<T, std::time::Duration>,
    ) -> Option<T> {
        let notified = self.0.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match read(self.get()) {
            Ok(done) => Some(done),
            Err(limit) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(limit) => {}
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn extensions_show_until_the_end_and_the_first_reason_stays() {
        let (tx, rx) = status(at(10));
        assert_eq!(
            rx.get(),
            GrantStatus::Held {
                valid_until: at(10)
            }
        );
        tx.extend(at(20));
        assert_eq!(
            rx.get(),
            GrantStatus::Held {
                valid_until: at(20)
            }
        );
        assert!(matches!(rx.get(), GrantStatus::Held { .. }));
        assert!(tx.end(LostReason::Released));
        assert!(!tx.end(LostReason::Expired));
        tx.extend(at(30));
        assert_eq!(rx.get(), GrantStatus::Ended(LostReason::Released));
        assert!(matches!(rx.get(), GrantStatus::Ended(_)));
    }

    #[test]
    fn the_token_is_cancelled_before_the_end_shows_and_made_cancelled_after() {
        let (tx, rx) = status(at(10));
        let early = rx.token();
        assert!(!early.is_cancelled());
        assert!(rx.token().is_cancelled() == early.is_cancelled());
        tx.end(LostReason::Expired);
        assert!(early.is_cancelled());
        // Asked for only after the end: cancelled from the start.
        let (tx2, rx2) = status(at(10));
        tx2.end(LostReason::Released);
        assert!(rx2.token().is_cancelled());
    }

    #[test]
    fn dropping_the_writer_of_a_held_grant_ends_it_as_a_stopped_engine() {
        let (tx, rx) = status(at(10));
        let token = rx.token();
        drop(tx);
        assert_eq!(rx.get(), GrantStatus::Ended(LostReason::EngineStopped));
        assert!(token.is_cancelled());
        // An ended grant keeps its reason when the writer goes.
        let (tx, rx) = status(at(10));
        tx.end(LostReason::Released);
        drop(tx);
        assert_eq!(rx.get(), GrantStatus::Ended(LostReason::Released));
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_a_change_made_from_another_thread() {
        let (tx, rx) = status(at(10));
        let waiter = tokio::spawn(async move {
            loop {
                let step = rx
                    .step(|s| match s {
                        GrantStatus::Ended(r) => Ok(r),
                        // Long enough that only the change can end the wait.
                        GrantStatus::Held { .. } => Err(Duration::from_secs(600)),
                    })
                    .await;
                if let Some(r) = step {
                    return r;
                }
            }
        });
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.end(LostReason::Deleted);
        })
        .join()
        .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(r, LostReason::Deleted);
    }

    #[test]
    fn the_cell_stays_in_its_allocation_class() {
        // With the `Arc`'s two counts: 80 bytes before the hook, 88 with
        // it, both a 96-byte chunk of the system allocator (request + 8,
        // rounded up to 16). A fat hook pointer would make it 104 (112).
        let size = 16 + std::mem::size_of::<Cell>();
        assert!(size <= 88, "{size}");
    }

    type Log = Arc<Mutex<Vec<String>>>;

    /// A hand-over that writes `what` to `log`.
    fn first(log: &Log, what: &str) -> impl FnOnce() -> bool {
        let (log, what) = (log.clone(), what.to_owned());
        move || {
            log.lock().unwrap().push(what);
            true
        }
    }

    fn hook(log: &Log) -> Hook {
        let l = log.clone();
        Box::new(move |r: LostReason| l.lock().unwrap().push(format!("end {r:?}")))
    }

    #[test]
    fn the_writer_tells_the_hook_before_end_returns_and_only_once() {
        let (tx, rx) = status(at(10));
        let log = Log::default();
        assert_eq!(
            rx.attach(first(&log, "acquired"), hook(&log)),
            Attach::Attached
        );
        tx.extend(at(20));
        assert_eq!(*log.lock().unwrap(), ["acquired"]);
        tx.end(LostReason::Deleted);
        assert_eq!(*log.lock().unwrap(), ["acquired", "end Deleted"]);
        // The reader's own clock, later: the hook was told already.
        rx.tell_hook(LostReason::Expired);
        drop(tx);
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[test]
    fn an_ended_grant_is_not_handed_over_and_one_seen_first_by_the_reader_is_told_once() {
        let (tx, rx) = status(at(10));
        tx.end(LostReason::Expired);
        let log = Log::default();
        assert_eq!(
            rx.attach(first(&log, "acquired"), hook(&log)),
            Attach::Ended(LostReason::Expired)
        );
        assert!(log.lock().unwrap().is_empty());

        let (tx, rx) = status(at(10));
        rx.attach(first(&log, "acquired"), hook(&log));
        rx.tell_hook(LostReason::MaxHold);
        tx.end(LostReason::Deleted);
        assert_eq!(*log.lock().unwrap(), ["acquired", "end MaxHold"]);
    }

    #[test]
    fn a_refused_hand_over_or_a_withdrawn_hook_is_never_told() {
        let (tx, rx) = status(at(10));
        let log = Log::default();
        assert_eq!(rx.attach(|| false, hook(&log)), Attach::Refused);
        tx.end(LostReason::Deleted);
        let (tx2, rx2) = status(at(10));
        rx2.attach(|| true, hook(&log));
        rx2.detach();
        tx2.end(LostReason::Deleted);
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn a_panicking_hook_does_not_stop_the_writer() {
        let (tx, rx) = status(at(10));
        rx.attach(|| true, Box::new(|_| panic!("a user's From impl")));
        assert!(tx.end(LostReason::Deleted));
        assert_eq!(rx.get(), GrantStatus::Ended(LostReason::Deleted));
    }
}
