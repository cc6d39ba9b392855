//! What a holder sees of its grant: one writer (the engine's record of the
//! holder), any number of readers (the lease, its watchers, the tasks behind
//! their tokens).
//!
//! Why not tokio's `watch` channel, which does the same: every held lock has
//! one, and a `watch` channel keeps eight `Notify`s for its receivers, 352
//! bytes on the heap, on top of the 112 of the grant's `CancellationToken`.
//! This cell is one allocation of 80 bytes, and the cancellation token it
//! hands out is made only for a holder that asks for one. The same rule
//! holds as before: the token is cancelled before anyone can see the end.

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

#[derive(Debug)]
struct Shown {
    status: GrantStatus,
    /// Made on a reader's first request, cancelled at the end.
    token: Option<CancellationToken>,
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
    /// the end also finds the token cancelled. False if it had ended already
    /// (the first reason stays).
    pub(crate) fn end(&self, reason: LostReason) -> bool {
        {
            let mut shown = self.0.shown();
            if matches!(shown.status, GrantStatus::Ended(_)) {
                return false;
            }
            if let Some(token) = &shown.token {
                token.cancel();
            }
            shown.status = GrantStatus::Ended(reason);
        }
        self.0.changed.notify_waiters();
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
}
