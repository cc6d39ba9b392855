//! Leader election (`Locker::election`) against real servers: one leader at
//! a time with a term that strictly increases (whatever the locker's
//! `fencing` option), `leader()` naming the holder, resignation waking the
//! next candidate, observers that see every term in order (including the
//! terms that passed while their connection was down), `try_campaign`,
//! wait limits, typed errors for bad input, several independent instances.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use fred::interfaces::KeysInterface;

use support::proxy::Proxy;
use support::*;
use valkeylock::{Error, Leader, LockRequest, Locker, LockerOptions, LostReason, MAX_VALUE_LEN};

const WITHIN: Duration = Duration::from_secs(10);

async fn next_leader(observer: &mut valkeylock::LeaderObserver) -> Leader {
    tokio::time::timeout(WITHIN, observer.next())
        .await
        .expect("a leader within 10 s")
        .expect("the observer runs")
}

/// Two candidates in two lockers: the first leads, the second waits and
/// leads once the first resigns, with a higher term; `leader()` follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_then_the_next_with_a_higher_term() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("elect");
    let (a, b) = (server.locker().await, server.locker().await);
    let (ea, eb) = (a.election(&name).unwrap(), b.election(&name).unwrap());
    assert_eq!(ea.leader().await.unwrap(), None, "nobody leads yet");

    let first = ea.campaign("host-a:1").await.expect("a leads");
    assert!(first.term() > 0, "a term even without the fencing option");
    assert_eq!(first.value(), "host-a:1");
    assert_eq!(
        eb.leader().await.unwrap(),
        Some(Leader::new("host-a:1", first.term()))
    );
    assert!(matches!(
        eb.try_campaign("host-b:2").await,
        Err(Error::NotLocked { ref name, .. }) if *name == *eb.name()
    ));

    let waiting = tokio::spawn({
        let eb = eb.clone();
        async move { eb.campaign("host-b:2").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "b waits while a leads");
    let term_a = first.term();
    first.resign().await.expect("resign");
    let second = tokio::time::timeout(WITHIN, waiting)
        .await
        .expect("b leads within 10 s")
        .unwrap()
        .expect("b leads");
    assert!(second.term() > term_a, "{} > {term_a}", second.term());
    assert_eq!(
        ea.leader().await.unwrap(),
        Some(Leader::new("host-b:2", second.term()))
    );
    second.resign().await.unwrap();
    assert_eq!(
        ea.leader().await.unwrap(),
        None,
        "nobody leads after a resignation"
    );
    a.close().await;
    b.close().await;
}

/// An observer reports the leader at its start, then every term in order,
/// each once, while two lockers pass leadership back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_sees_every_term_in_order() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("elect-observe");
    let (a, b, o) = (
        server.locker().await,
        server.locker().await,
        server.locker().await,
    );
    let (ea, eb) = (a.election(&name).unwrap(), b.election(&name).unwrap());
    let first = ea.campaign("a-0").await.unwrap();
    let mut observer = o.election(&name).unwrap().observe().unwrap();
    assert_eq!(
        next_leader(&mut observer).await,
        Leader::new("a-0", first.term())
    );
    let mut expected = Vec::new();
    first.resign().await.unwrap();
    for round in 1..=12 {
        let (election, value) = if round % 2 == 0 {
            (&ea, format!("a-{round}"))
        } else {
            (&eb, format!("b-{round}"))
        };
        let leadership = election.campaign(&value).await.unwrap();
        expected.push(Leader::new(value, leadership.term()));
        if round % 3 == 0 {
            drop(leadership);
        } else {
            leadership.resign().await.unwrap();
        }
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.push(next_leader(&mut observer).await);
    }
    assert_eq!(seen, expected, "every term, in order, each once");
    let terms: Vec<u64> = seen.iter().map(|l| l.term).collect();
    assert!(terms.windows(2).all(|w| w[0] < w[1]), "{terms:?}");
    for l in [a, b, o] {
        l.close().await;
    }
}

/// An observer whose connection is cut while leadership changes hands five
/// times reports all five, in order, once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_catches_up_after_a_reconnect() {
    init_tracing();
    let server = ValkeyServer::start();
    let proxy = Proxy::start(server.port).await;
    let name = unique("elect-reconnect");
    let candidates = server.locker().await;
    let observing = Locker::connect(
        LockerOptions::new([format!("redis://127.0.0.1:{}", proxy.port)])
            .with_key_majority(1)
            .with_try_next_after(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let election = candidates.election(&name).unwrap();
    let mut observer = observing.election(&name).unwrap().observe().unwrap();
    // The first look (nobody leads) is done once the observer sees a term.
    let first = election.campaign("before").await.unwrap();
    assert_eq!(next_leader(&mut observer).await.value, "before");
    first.resign().await.unwrap();

    proxy.refuse(true);
    proxy.drop_all();
    let mut expected = Vec::new();
    for round in 0..5 {
        let leadership = election.campaign(&format!("away-{round}")).await.unwrap();
        expected.push(Leader::new(format!("away-{round}"), leadership.term()));
        leadership.resign().await.unwrap();
    }
    proxy.heal();
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.push(next_leader(&mut observer).await);
    }
    assert_eq!(seen, expected, "the terms missed while away, in order");
    candidates.close().await;
    observing.close().await;
}

/// A leader whose keys are deleted is told (`lost`), and a waiting
/// candidate leads with a higher term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_is_told_and_the_next_leads() {
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("elect-deposed");
    let (a, b) = (server.locker().await, server.locker().await);
    let first = a.election(&name).unwrap().campaign("a").await.unwrap();
    let next = tokio::spawn({
        let eb = b.election(&name).unwrap();
        async move { eb.campaign("b").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let admin = server.admin().await;
    let key = format!("valkeylock:0:{name}:election");
    let _: i64 = admin.del(key).await.unwrap();
    let reason = tokio::time::timeout(WITHIN, first.lost())
        .await
        .expect("told within 10 s");
    // Deleted, or already taken by the waiting candidate when the leader
    // looked (its own check and b's wake-up race).
    assert!(
        matches!(reason, LostReason::Deleted | LostReason::Overwritten),
        "{reason:?}"
    );
    let second = tokio::time::timeout(WITHIN, next)
        .await
        .expect("b leads within 10 s")
        .unwrap()
        .unwrap();
    assert!(second.term() > first.term());
    a.close().await;
    b.close().await;
}

/// Three independent instances (`key_majority` 2): the term is the
/// two-phase fencing token, and still strictly increases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_increase_over_three_instances() {
    init_tracing();
    let servers: Vec<ValkeyServer> = (0..3).map(|_| ValkeyServer::start()).collect();
    let options = LockerOptions::new(servers.iter().map(|s| s.url())).with_key_majority(2);
    let (a, b) = (
        Locker::connect(options.clone()).await.unwrap(),
        Locker::connect(options).await.unwrap(),
    );
    let name = unique("elect-three");
    let mut observer = b.election(&name).unwrap().observe().unwrap();
    let mut last = 0;
    for round in 0..6 {
        let locker = if round % 2 == 0 { &a } else { &b };
        let leadership = locker
            .election(&name)
            .unwrap()
            .campaign(&format!("r{round}"))
            .await
            .unwrap();
        assert!(leadership.term() > last, "{} > {last}", leadership.term());
        last = leadership.term();
        assert_eq!(
            a.election(&name).unwrap().leader().await.unwrap(),
            Some(Leader::new(format!("r{round}"), last))
        );
        assert_eq!(
            next_leader(&mut observer).await,
            Leader::new(format!("r{round}"), last)
        );
        leadership.resign().await.unwrap();
    }
    a.close().await;
    b.close().await;
}

/// Bad input is a typed error and changes nothing; a wait limit runs out
/// as `Timeout` naming the election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_wait_limits() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    assert!(matches!(
        locker.election(""),
        Err(Error::InvalidName { .. })
    ));
    let too_long = "n".repeat(valkeylock::MAX_NAME_LEN);
    assert!(matches!(
        locker.election(&too_long),
        Err(Error::InvalidName { .. })
    ));
    let name = unique("elect-bad");
    let election = locker.election(&name).unwrap();
    let big = "v".repeat(MAX_VALUE_LEN + 1);
    assert!(matches!(
        election.campaign(&big).await,
        Err(Error::InvalidOptions { field: "value", .. })
    ));
    assert_eq!(election.leader().await.unwrap(), None);
    // Values may hold anything, newlines included.
    let leadership = election.campaign("line 1\nline 2").await.unwrap();
    assert_eq!(
        election.leader().await.unwrap().map(|l| l.value),
        Some("line 1\nline 2".to_owned())
    );
    let other = server.locker().await;
    let request = LockRequest::new().wait(Duration::from_millis(200));
    match other
        .election(&name)
        .unwrap()
        .campaign_with("late", &request)
        .await
    {
        Err(Error::Timeout { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(leadership);
    locker.close().await;
    other.close().await;
}

/// A log that a third party turned into another type: `campaign` fails
/// with `Unavailable` (and resigns), `leader` too; nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_log_is_a_typed_error() {
    init_tracing();
    let server = ValkeyServer::start();
    let locker = server.locker().await;
    let name = unique("elect-broken");
    let admin = server.admin().await;
    let _: () = admin
        .set(
            format!("valkeylock:terms:{name}"),
            "junk",
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let election = locker.election(&name).unwrap();
    assert!(matches!(
        election.campaign("me").await,
        Err(Error::Unavailable { .. })
    ));
    assert!(matches!(
        election.leader().await,
        Err(Error::Unavailable { .. })
    ));
    let free = eventually(WITHIN, || async {
        existing_keys(&admin, "valkeylock", &format!("{name}:election"), 1).await == 0
    })
    .await;
    assert!(free, "the lock won before the refusal is released");
    locker.close().await;
}

/// The observer is also a `Stream`: the leader at its start, then two more
/// terms through `take(2)`; it ends with the locker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_is_a_stream() {
    use futures_util::StreamExt;
    init_tracing();
    let server = ValkeyServer::start();
    let name = unique("elect-stream");
    let (a, o) = (server.locker().await, server.locker().await);
    let election = a.election(&name).unwrap();
    let first = election.campaign("s0").await.unwrap();
    let mut stream = o.election(&name).unwrap().observe().unwrap();
    let seen = tokio::time::timeout(WITHIN, StreamExt::next(&mut stream))
        .await
        .expect("the current leader within 10 s");
    assert_eq!(seen, Some(Leader::new("s0", first.term())));
    first.resign().await.unwrap();
    let collecting = tokio::spawn(stream.take(2).collect::<Vec<Leader>>());
    let mut terms = Vec::new();
    for round in 1..3 {
        let leadership = election.campaign(&format!("s{round}")).await.unwrap();
        terms.push(Leader::new(format!("s{round}"), leadership.term()));
        leadership.resign().await.unwrap();
    }
    let seen = tokio::time::timeout(WITHIN, collecting)
        .await
        .expect("two terms within 10 s")
        .unwrap();
    assert_eq!(seen, terms);
    let mut rest = o.election(&name).unwrap().observe().unwrap();
    o.close().await;
    let end = tokio::time::timeout(WITHIN, StreamExt::next(&mut rest))
        .await
        .expect("ends");
    assert!(
        end.is_none(),
        "the stream ends when the locker closes: {end:?}"
    );
    a.close().await;
}
