//! Message-based locking (`Locker::lock_for`) against a real server: an actor
//! gets `Acquired` in its mailbox, then `Lost` when the key is deleted; a
//! second actor waiting for the same name gets `Failed(Closed)` when the
//! locker closes, and nothing is dropped unsent.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use support::*;
use tokio::sync::mpsc;
use valkeylock::{Error, LockEvent, LockGuard, LostReason};

/// What the probe saw, in order; it keeps the guard it was given.
#[derive(Debug, PartialEq)]
enum Seen {
    Acquired,
    Lost(LostReason),
    Failed(String),
}

struct Msg(LockEvent);

impl From<LockEvent> for Msg {
    fn from(e: LockEvent) -> Self {
        Msg(e)
    }
}

struct Probe;

impl Actor for Probe {
    type Msg = Msg;
    type State = (mpsc::UnboundedSender<Seen>, Option<LockGuard>);
    type Arguments = mpsc::UnboundedSender<Seen>;

    async fn pre_start(
        &self,
        _: ActorRef<Msg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok((tx, None))
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        Msg(event): Msg,
        (tx, guard): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let seen = match event {
            LockEvent::Acquired(g) => {
                *guard = Some(g);
                Seen::Acquired
            }
            LockEvent::Lost { reason, .. } => Seen::Lost(reason),
            LockEvent::Failed { error, .. } => Seen::Failed(match error {
                Error::Closed => "closed".into(),
                other => other.to_string(),
            }),
            _ => return Ok(()),
        };
        let _ = tx.send(seen);
        Ok(())
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("probe gone")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_gets_acquired_lost_and_failed_in_its_mailbox() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = server.locker().await;
    let name = unique("actor");

    let (tx, mut first) = mpsc::unbounded_channel();
    let (a, ha) = Actor::spawn(None, Probe, tx).await.unwrap();
    locker.lock_for(&name, a.clone());
    assert_eq!(next(&mut first).await, Seen::Acquired);

    let (tx, mut second) = mpsc::unbounded_channel();
    let (b, hb) = Actor::spawn(None, Probe, tx).await.unwrap();
    locker.lock_for(&name, b.clone());

    // Someone deletes the key: the holder's actor hears of it; the waiting
    // actor then gets the lock.
    let deleted: i64 = fred::prelude::KeysInterface::del(&admin, format!("valkeylock:0:{name}"))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(next(&mut first).await, Seen::Lost(LostReason::Deleted));
    assert_eq!(next(&mut second).await, Seen::Acquired);

    // A third actor waits; closing the locker ends the second's grant and
    // fails the third's wait, and both messages arrive.
    let (tx, mut third) = mpsc::unbounded_channel();
    let (c, hc) = Actor::spawn(None, Probe, tx).await.unwrap();
    locker.lock_for(&name, c.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    locker.close().await;
    assert_eq!(next(&mut second).await, Seen::Lost(LostReason::Closed));
    assert_eq!(next(&mut third).await, Seen::Failed("closed".into()));

    for (actor, handle) in [(a, ha), (b, hb), (c, hc)] {
        actor.stop(None);
        let _ = handle.await;
    }
}
