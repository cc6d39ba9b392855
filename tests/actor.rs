//! Message-based locking (`Locker::lock_for`) against a real server: an actor
//! gets `Acquired` in its mailbox, then `Lost` when the key is deleted; a
//! second actor waiting for the same name gets `Failed(Closed)` when the
//! locker closes, and nothing is dropped unsent. A grant's `Lost` always
//! comes before the next grant's `Acquired`, and a grant that ended before
//! it could be sent is not sent. `Semaphore::acquire_for` likewise, with
//! permits; `Election::campaign_for` with `Elected` and `Deposed`.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use support::*;
use tokio::sync::mpsc;
use valkeylock::{
    ElectionEvent, Error, Leadership, LockEvent, LockGuard, LostReason, PermitEvent, PermitGuard,
};

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

/// A probe for permits: it keeps the permits it is given.
struct PermitMsg(PermitEvent);

impl From<PermitEvent> for PermitMsg {
    fn from(e: PermitEvent) -> Self {
        PermitMsg(e)
    }
}

struct PermitProbe;

impl Actor for PermitProbe {
    type Msg = PermitMsg;
    type State = (mpsc::UnboundedSender<(Seen, Option<u32>)>, Vec<PermitGuard>);
    type Arguments = mpsc::UnboundedSender<(Seen, Option<u32>)>;

    async fn pre_start(
        &self,
        _: ActorRef<PermitMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok((tx, Vec::new()))
    }

    async fn handle(
        &self,
        _: ActorRef<PermitMsg>,
        PermitMsg(event): PermitMsg,
        (tx, permits): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let seen = match event {
            PermitEvent::Acquired(p) => {
                let slot = p.slot();
                permits.push(p);
                (Seen::Acquired, Some(slot))
            }
            PermitEvent::Lost { reason, slot, .. } => (Seen::Lost(reason), Some(slot)),
            PermitEvent::Failed { error, .. } => (Seen::Failed(error.to_string()), None),
            _ => return Ok(()),
        };
        let _ = tx.send(seen);
        Ok(())
    }
}

/// An actor that asks for the same lock again while it holds it hears the
/// held grant's end before the next grant, every time: the engine casts the
/// end as it ends the grant, before it answers the waiting request, so the
/// two forwarders cannot overtake each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_hears_a_grants_end_before_the_next_grant_of_the_same_lock() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    let name = unique("actor-order");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (a, handle) = Actor::spawn(None, Probe, tx).await.unwrap();
    locker.lock_for(&name, a.clone());
    assert_eq!(next(&mut rx).await, Seen::Acquired);
    for round in 0..40 {
        locker.lock_for(&name, a.clone());
        // The second request waits behind the first grant.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(rx.try_recv().is_err(), "round {round}: granted twice");
        // Deleted through this same locker: its engine tells the holder
        // and grants the waiting request within microseconds of each other.
        locker.force_release(&name).await.unwrap();
        assert_eq!(
            next(&mut rx).await,
            Seen::Lost(LostReason::Deleted),
            "round {round}"
        );
        assert_eq!(next(&mut rx).await, Seen::Acquired, "round {round}");
    }
    a.stop(None);
    let _ = handle.await;
    locker.close().await;
}

/// A grant that ends before its `Acquired` could be sent (the caller's
/// runtime was blocked meanwhile, and someone deleted the keys) is not sent
/// at all: the actor never had it, so it gets no `Lost` for it, and the
/// wait goes on until the lock is granted again.
#[test]
fn a_grant_that_ends_before_it_reaches_the_actor_is_not_sent() {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = ValkeyServer::start();
    // Another locker, on a runtime of its own, holds the name first: the
    // grant can then come only once this runtime is blocked (a free name
    // was granted within the few yields below when the machine was busy,
    // and the `Acquired` went out before the keys were deleted).
    let other_rt = tokio::runtime::Runtime::new().unwrap();
    let name = unique("actor-late");
    let (other, held) = other_rt.block_on(async {
        let other = server.locker().await;
        let held = other.lock(&name).await.unwrap();
        (other, held)
    });
    runtime.block_on(async {
        let locker = server.locker().await;
        let key = format!("valkeylock:0:{name}");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (a, handle) = Actor::spawn(None, Probe, tx).await.unwrap();
        locker.lock_for(&name, a.clone());
        // Let the forwarder send its request, then keep this runtime busy
        // (the engine runs on its own) until the grant has come and gone.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let release = other_rt.handle().clone();
        std::thread::spawn(move || release.block_on(held.release()))
            .join()
            .unwrap()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.blocking_command(&format!("EXISTS {key}")) != ":1" {
            assert!(std::time::Instant::now() < deadline, "never granted");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.blocking_command(&format!("DEL {key}")), ":1");
        // The engine takes the grant's end (and re-asks nobody: the only
        // request was granted); give it time while this runtime stays busy.
        std::thread::sleep(Duration::from_millis(300));
        // Runs again: the forwarder finds its grant ended and asks again.
        assert_eq!(next(&mut rx).await, Seen::Acquired);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "a Lost for a grant never sent");
        assert_eq!(server.blocking_command(&format!("EXISTS {key}")), ":1");
        a.stop(None);
        let _ = handle.await;
        locker.close().await;
    });
    other_rt.block_on(other.close());
}

/// `Semaphore::acquire_for`: an actor gets two permits of two in its
/// mailbox, a third request waits, and a deleted slot is told as `Lost`
/// with its slot, after which the waiting request is granted that slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_gets_permits_in_its_mailbox() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    let name = unique("actor-sem");
    let pool = locker.semaphore(&name, 2).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (probe, handle) = Actor::spawn(None, PermitProbe, tx).await.unwrap();
    pool.acquire_for(probe.clone());
    pool.acquire_for(probe.clone());
    let (a, b) = (recv(&mut rx).await, recv(&mut rx).await);
    assert_eq!((&a.0, &b.0), (&Seen::Acquired, &Seen::Acquired));
    assert_ne!(a.1, b.1);
    pool.acquire_for(probe.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "a third permit of two");
    let slot = a.1.unwrap();
    locker
        .force_release(&format!("{name}:permit:{slot}"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx).await,
        (Seen::Lost(LostReason::Deleted), Some(slot))
    );
    assert_eq!(recv(&mut rx).await, (Seen::Acquired, Some(slot)));
    probe.stop(None);
    let _ = handle.await;
    locker.close().await;
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<(Seen, Option<u32>)>) -> (Seen, Option<u32>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("probe gone")
}

/// A probe for elections: it keeps the leadership it is given and reports
/// `(what, term)`.
struct ElectionMsg(ElectionEvent);

impl From<ElectionEvent> for ElectionMsg {
    fn from(e: ElectionEvent) -> Self {
        ElectionMsg(e)
    }
}

struct ElectionProbe;

impl Actor for ElectionProbe {
    type Msg = ElectionMsg;
    type State = (mpsc::UnboundedSender<(Seen, u64)>, Option<Leadership>);
    type Arguments = mpsc::UnboundedSender<(Seen, u64)>;

    async fn pre_start(
        &self,
        _: ActorRef<ElectionMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok((tx, None))
    }

    async fn handle(
        &self,
        _: ActorRef<ElectionMsg>,
        ElectionMsg(event): ElectionMsg,
        (tx, held): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let seen = match event {
            ElectionEvent::Elected(leadership) => {
                let term = leadership.term();
                *held = Some(leadership);
                (Seen::Acquired, term)
            }
            ElectionEvent::Deposed { reason, term, .. } => (Seen::Lost(reason), term),
            ElectionEvent::Failed { error, .. } => (Seen::Failed(error.to_string()), 0),
            _ => return Ok(()),
        };
        let _ = tx.send(seen);
        Ok(())
    }
}

/// Two candidate actors: the first gets `Elected`, then `Deposed` (with its
/// term) when its keys are deleted; the second is elected next, with a
/// higher term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_is_elected_and_deposed_in_its_mailbox() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = server.locker().await;
    let name = unique("actor-elect");
    let election = locker.election(&name).unwrap();

    let (tx, mut first) = mpsc::unbounded_channel();
    let (a, ha) = Actor::spawn(None, ElectionProbe, tx).await.unwrap();
    election.campaign_for("a", a.clone());
    let (seen, term_a) = recv_election(&mut first).await;
    assert_eq!(seen, Seen::Acquired);
    assert!(term_a > 0);

    let (tx, mut second) = mpsc::unbounded_channel();
    let (b, hb) = Actor::spawn(None, ElectionProbe, tx).await.unwrap();
    election.campaign_for("b", b.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;

    let deleted: i64 =
        fred::prelude::KeysInterface::del(&admin, format!("valkeylock:0:{name}:election"))
            .await
            .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(
        recv_election(&mut first).await,
        (Seen::Lost(LostReason::Deleted), term_a)
    );
    let (seen, term_b) = recv_election(&mut second).await;
    assert_eq!(seen, Seen::Acquired);
    assert!(term_b > term_a, "{term_b} > {term_a}");
    assert_eq!(
        election.leader().await.unwrap().map(|l| (l.value, l.term)),
        Some(("b".to_owned(), term_b))
    );

    locker.close().await;
    for (actor, handle) in [(a, ha), (b, hb)] {
        actor.stop(None);
        let _ = handle.await;
    }
}

async fn recv_election(rx: &mut mpsc::UnboundedReceiver<(Seen, u64)>) -> (Seen, u64) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("probe gone")
}
