//! Hand-over across processes (`LockerOptions::handover`) against a real
//! server: a waiter of another locker that finds the lock held leaves a
//! claim, and the release hands it the lock on the server and tells it,
//! so that it is granted on that message, not at its next attempt; waiters
//! are served by arrival; a claim whose waiter gave up is passed on; one
//! whose locker is gone is passed over; and the lockers still exclude each
//! other.
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use valkeylock::{Error, LockState, Locker, LockerOptions, WaitKind};

/// A locker with hand-over and without client-side caching, whose waiters
/// poll only every 2 s: a waiter granted much sooner than that after a
/// release was handed the lock, as nothing else would have woken it.
async fn polling_locker(server: &ValkeyServer) -> Locker {
    Locker::connect(
        LockerOptions::new([server.url()])
            .with_key_majority(1)
            .with_key_validity(Duration::from_secs(10))
            .with_try_next_after(Duration::from_secs(2))
            .with_disable_cache(true)
            .with_handover(true),
    )
    .await
    .expect("connect a locker with hand-over")
}

/// Starts `locker` waiting for `name`; the instant it is granted goes to
/// `granted`, in order.
fn wait_for(
    locker: &Locker,
    name: &str,
    who: &'static str,
    granted: &Granted,
) -> tokio::task::JoinHandle<valkeylock::LockGuard> {
    let (locker, name, granted) = (locker.clone(), name.to_owned(), granted.clone());
    tokio::spawn(async move {
        let guard = locker.lock(&name).await.expect("lock");
        granted.lock().expect("mutex").push((who, Instant::now()));
        guard
    })
}

/// The claims on key 0 of `name`.
async fn claims(admin: &fred::clients::Client, name: &str) -> i64 {
    match support::cluster::command(admin, &["HLEN", &format!("{{valkeylock:0:{name}}}:c")]).await {
        Ok(fred::types::Value::Integer(n)) => n,
        _ => -1,
    }
}

/// The claim on key 0 of `name` of the waiter that arrived first: its
/// field (the claimant's channel) and value.
async fn oldest_claim(admin: &fred::clients::Client, name: &str) -> (String, String) {
    let all = support::cluster::command(admin, &["HGETALL", &format!("{{valkeylock:0:{name}}}:c")])
        .await
        .expect("HGETALL");
    let strings: Vec<String> = match all {
        fred::types::Value::Map(m) => m
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [k.as_str().map(|s| s.to_string()), v.as_string()])
            .map(|s| s.unwrap_or_default())
            .collect(),
        fred::types::Value::Array(a) => a
            .iter()
            .map(|v| v.as_string().unwrap_or_default())
            .collect(),
        other => panic!("HGETALL replied {other:?}"),
    };
    strings
        .chunks(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .min_by_key(|(_, v)| v.split(' ').next().and_then(|a| a.parse::<u64>().ok()))
        .expect("a claim")
}

/// Waiter `b` of `q` gives up, and its locker takes its claim back.
async fn b_gives_up(mut q: Queue) -> Queue {
    q.b_waits.abort();
    let _ = (&mut q.b_waits).await;
    assert!(
        claims_come_to(&q.admin, &q.name, 1).await,
        "b's locker takes its claim back"
    );
    q
}

/// [`b_gives_up`], then b's claim is written again by hand, as if the
/// taking back had not reached the server (a lost command, or a release
/// that came first).
async fn b_gives_up_leaving_its_claim(q: Queue) -> Queue {
    let b_claim = oldest_claim(&q.admin, &q.name).await;
    let q = b_gives_up(q).await;
    let hash = format!("{{valkeylock:0:{}}}:c", q.name);
    support::cluster::command(&q.admin, &["HSET", &hash, &b_claim.0, &b_claim.1])
        .await
        .expect("HSET");
    q
}

/// Whether the claims on key 0 of `name` come to `n` within 5 s.
async fn claims_come_to(admin: &fred::clients::Client, name: &str, n: i64) -> bool {
    eventually(Duration::from_secs(5), || async {
        claims(admin, name).await == n
    })
    .await
}

type Granted = Arc<Mutex<Vec<(&'static str, Instant)>>>;

/// Locker `a` holds a name; lockers `b` and `c` (all with hand-over,
/// polling) wait for it, in that order, each one's claim on the server
/// before the next comes.
struct Queue {
    /// Kept for the test's length: dropping it stops the server.
    _server: ValkeyServer,
    admin: fred::clients::Client,
    name: String,
    lockers: [Locker; 3],
    held: valkeylock::LockGuard,
    granted: Granted,
    b_waits: tokio::task::JoinHandle<valkeylock::LockGuard>,
    c_waits: tokio::task::JoinHandle<valkeylock::LockGuard>,
}

impl Queue {
    async fn start(name: &str) -> Queue {
        init_tracing();
        let server = ValkeyServer::start();
        let admin = server.admin().await;
        let name = unique(name);
        let lockers = [
            polling_locker(&server).await,
            polling_locker(&server).await,
            polling_locker(&server).await,
        ];
        let held = lockers[0].lock(&name).await.expect("a takes the lock");
        let granted = Granted::default();
        let b_waits = wait_for(&lockers[1], &name, "b", &granted);
        assert!(claims_come_to(&admin, &name, 1).await, "b's claim is there");
        let c_waits = wait_for(&lockers[2], &name, "c", &granted);
        assert!(claims_come_to(&admin, &name, 2).await, "c's claim is there");
        Queue {
            _server: server,
            admin,
            name,
            lockers,
            held,
            granted,
            b_waits,
            c_waits,
        }
    }
}

impl Queue {
    /// Waiter `b` gave up: `a` releases, and `c` must be granted by the
    /// hand-over (within 1 s: its poll is 2 s away), with no claim left;
    /// then `c` releases and every locker closes. `what` says what the
    /// release was, for the failure.
    async fn a_releases_to_c(self, what: &str) {
        let released = Instant::now();
        self.held.release().await.expect("a releases");
        let c_guard = granted_soon(self.c_waits, &self.granted, 0, released, what).await;
        assert_eq!(self.granted.lock().expect("mutex").len(), 1, "b gave up");
        assert_eq!(claims(&self.admin, &self.name).await, 0, "no claim is left");
        c_guard.release().await.expect("c releases");
        for l in self.lockers {
            l.close().await;
        }
    }
}

/// The guard of `waits` (granted within 5 s), checking that its grant, the
/// `nth` recorded in `granted`, came within 1 s of `released`: by the
/// hand-over, as the waiter's poll is 2 s away. `what` says what the
/// release was, for the failure.
async fn granted_soon(
    waits: tokio::task::JoinHandle<valkeylock::LockGuard>,
    granted: &Granted,
    nth: usize,
    released: Instant,
    what: &str,
) -> valkeylock::LockGuard {
    let guard = tokio::time::timeout(Duration::from_secs(5), waits)
        .await
        .expect("the waiter is granted")
        .expect("the waiter's task");
    let at = granted.lock().expect("mutex")[nth].1;
    assert!(
        at - released < Duration::from_secs(1),
        "granted {:?} after {what}: not by the hand-over (its poll is 2 s away)",
        at - released
    );
    guard
}

/// Two waiters of other lockers, the first arriving first: each release
/// hands the lock to the one that has waited longest, which is granted
/// well before its next poll (2 s away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_the_lock_to_the_longest_waiter_of_another_locker() {
    let q = Queue::start("handover-order").await;
    let (admin, name, granted) = (&q.admin, &q.name, &q.granted);
    let released = Instant::now();
    q.held.release().await.expect("a releases");
    let b_guard = granted_soon(q.b_waits, granted, 0, released, "a's release").await;
    assert!(b_guard.is_held());
    assert_eq!(claims(admin, name).await, 1, "only c's claim is left");
    let released = Instant::now();
    b_guard.release().await.expect("b releases");
    let c_guard = granted_soon(q.c_waits, granted, 1, released, "b's release").await;
    let order: Vec<&str> = granted
        .lock()
        .expect("mutex")
        .iter()
        .map(|(w, _)| *w)
        .collect();
    assert_eq!(order, ["b", "c"]);
    assert!(c_guard.is_held());
    c_guard.release().await.expect("c releases");
    assert!(
        eventually(Duration::from_secs(5), || async {
            existing_keys(admin, "valkeylock", name, 1).await == 0
        })
        .await,
        "nobody waits: the last release deletes the key"
    );
    for l in q.lockers {
        l.close().await;
    }
}

/// A waiter that gives up takes its claim back: the release hands the lock
/// to the next claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_takes_its_claim_back() {
    let q = b_gives_up(Queue::start("handover-unclaim").await).await;
    q.a_releases_to_c("a's release").await;
}

/// `inspect` lists the claimants, longest waiting first, each under the
/// token prefix it is shown as owner by once the lock is handed to it; a
/// waiter that gave up is no longer listed, nor one that was handed the
/// lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_lists_the_claimants_longest_waiting_first() {
    let q = Queue::start("handover-inspect").await;
    let looker = &q.lockers[0];
    let info = looker.inspect(&q.name).await.expect("inspect");
    let kinds: Vec<_> = info.waiting.iter().map(|w| (w.how, w.keys)).collect();
    assert_eq!(
        kinds,
        [(WaitKind::HandoverClaim, 1), (WaitKind::HandoverClaim, 1)],
        "{info:?}"
    );
    let (b, c) = (&info.waiting[0], &info.waiting[1]);
    assert!(b.waited > c.waited, "b came first: {info:?}");
    assert!(b.who != c.who, "{info:?}");
    for w in &info.waiting {
        assert!(w.waited < Duration::from_secs(10), "{info:?}");
        assert!(
            w.lapses_in > Duration::ZERO && w.lapses_in <= Duration::from_secs(10),
            "a claim lapses within its validity: {info:?}"
        );
    }
    assert_eq!(info.waiting_unreadable, None);
    let c_who = c.who.clone();
    let q = b_gives_up(q).await;
    let info = q.lockers[0].inspect(&q.name).await.expect("inspect");
    let listed: Vec<_> = info.waiting.iter().map(|w| w.who.as_str()).collect();
    assert_eq!(listed, [c_who.as_str()], "only c waits: {info:?}");

    let Queue {
        held,
        c_waits,
        lockers,
        name,
        ..
    } = q;
    held.release().await.expect("a releases");
    let c_guard = tokio::time::timeout(Duration::from_secs(5), c_waits)
        .await
        .expect("c is granted")
        .expect("c's task");
    let info = lockers[0].inspect(&name).await.expect("inspect");
    assert!(
        matches!(&info.state, LockState::Held { owner, .. } if *owner == c_who),
        "c holds the lock under the token it was listed by: {info:?}"
    );
    assert!(info.waiting.is_empty(), "{info:?}");
    c_guard.release().await.expect("c releases");
    for l in lockers {
        l.close().await;
    }
}

/// A claim left behind by a waiter that gave up (its taking back lost):
/// the lock handed to it is passed on by its locker to the next claim, at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_handed_to_a_waiter_that_gave_up_goes_to_the_next() {
    let q = b_gives_up_leaving_its_claim(Queue::start("handover-gave-up").await).await;
    q.a_releases_to_c("a's release, to b, who gave up: b's locker did not pass the lock on")
        .await;
}

/// The same, when the lock handed to the waiter that gave up comes after
/// its locker retired the name's actor (2 s after the name fell quiet): a
/// fresh one takes the message and passes the lock on. Before, the message
/// found no actor and was dropped, and the lock stayed with the claim of
/// nobody until it lapsed (up to a validity, 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_handed_to_a_name_its_locker_retired_goes_to_the_next() {
    let q = b_gives_up_leaving_its_claim(Queue::start("handover-retired").await).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    q.a_releases_to_c(
        "a's release, to b, who gave up 3.5 s before: b's locker dropped the message",
    )
    .await;
}

/// A claim whose locker is gone (its process died, or it closed: the
/// server dropped its subscription) is passed over: the release hands the
/// lock to the next claim at once, instead of to a claimant nobody hears
/// for, which held it until that claim lapsed (up to a validity, 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_a_locker_that_is_gone_is_passed_over() {
    let q = b_gives_up_leaving_its_claim(Queue::start("handover-gone").await).await;
    q.lockers[1].close().await;
    assert_eq!(
        claims(&q.admin, &q.name).await,
        2,
        "b's claim outlives its locker"
    );
    q.a_releases_to_c("a's release, with b's locker gone: the lock went to b's claim")
        .await;
}

#[derive(Default)]
struct Shared {
    value: Mutex<u64>,
    holders: AtomicUsize,
    overlaps: AtomicUsize,
    /// With fencing: the tokens of the critical sections, in their order.
    fences: Mutex<Vec<u64>>,
}

/// Eight lockers with hand-over (client-side caching on, as by default)
/// take turns on one name, each a non-atomic read-modify-write inside its
/// critical section: no update is lost, no two holders overlap; with
/// `fencing`, every section's fencing token is above the one before, the
/// key handed over or not. Returns how many keys were handed over.
async fn contend(servers: &[ValkeyServer], majority: usize, fencing: bool) -> u64 {
    init_tracing();
    const LOCKERS: usize = 8;
    const ROUNDS: usize = 200;
    let urls: Vec<String> = servers.iter().map(ValkeyServer::url).collect();
    let options = LockerOptions::new(urls)
        .with_key_majority(majority)
        .with_fencing(fencing)
        .with_handover(true);
    let name = unique("handover-exclusion");
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(Locker::connect(options.clone()).await.expect("connect"));
    }
    let shared = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    for locker in &lockers {
        let (locker, name, shared) = (locker.clone(), name.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS / LOCKERS {
                let guard = locker.lock(&name).await.expect("lock");
                if shared.holders.fetch_add(1, Ordering::SeqCst) > 0 {
                    shared.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                if fencing {
                    shared
                        .fences
                        .lock()
                        .expect("mutex")
                        .push(guard.fencing_token());
                }
                let read = *shared.value.lock().expect("mutex");
                tokio::task::yield_now().await;
                *shared.value.lock().expect("mutex") = read + 1;
                assert!(guard.is_held(), "a guard lost its lock inside its section");
                shared.holders.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the contenders finish within 60 s")
            .expect("a contender failed");
    }
    assert_eq!(
        shared.overlaps.load(Ordering::SeqCst),
        0,
        "two holders at once"
    );
    assert_eq!(
        *shared.value.lock().expect("mutex"),
        ROUNDS as u64,
        "updates lost"
    );
    let fences = shared.fences.lock().expect("mutex").clone();
    if let Some(w) = fences.windows(2).find(|w| w[0] >= w[1]) {
        panic!("fencing token {} after {}: {fences:?}", w[1], w[0]);
    }
    for l in &lockers {
        l.close().await;
    }
    // Each hand-over publishes its message (the servers are the test's own).
    let mut handed = 0;
    for server in servers {
        let admin = server.admin().await;
        handed += command_calls(&admin)
            .await
            .get("publish")
            .copied()
            .unwrap_or(0);
    }
    handed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockers_with_handover_exclude_each_other_on_one_server() {
    let server = ValkeyServer::start();
    contend(std::slice::from_ref(&server), 1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockers_with_handover_exclude_each_other_on_three_servers() {
    let servers = [
        ValkeyServer::start(),
        ValkeyServer::start(),
        ValkeyServer::start(),
    ];
    contend(&servers, 2, false).await;
}

/// With fencing: a key handed over gets its token as any acquisition does
/// (in the acquire script on one server, by the fencing step on three),
/// and the sections' tokens only go up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_go_up_across_hand_overs_on_one_server() {
    let server = ValkeyServer::start();
    let handed = contend(std::slice::from_ref(&server), 1, true).await;
    assert!(handed > 0, "no key was handed over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_go_up_across_hand_overs_on_three_servers() {
    let servers = [
        ValkeyServer::start(),
        ValkeyServer::start(),
        ValkeyServer::start(),
    ];
    let handed = contend(&servers, 2, true).await;
    assert!(handed > 0, "no key was handed over");
}

/// A key handed over whose message is lost (here: written by hand as the
/// release script writes it, with no message): the claimant's next run
/// finds the key its own and must still take a fencing token above the
/// last holder's. The acquire script once took "our token is there" for a
/// retry of our own and left the counter, so the claimant got the last
/// holder's token (the simulator found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_handed_without_its_message_still_moves_the_fencing_counter() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let name = unique("handover-fence-lost");
    let options = LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_key_validity(Duration::from_secs(10))
        .with_try_next_after(Duration::from_secs(1))
        .with_disable_cache(true)
        .with_fencing(true)
        .with_handover(true);
    let a = Locker::connect(options.clone()).await.expect("connect");
    let b = Locker::connect(options).await.expect("connect");
    let held = a.lock(&name).await.expect("a takes the lock");
    let b_waits = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move { b.lock(&name).await.expect("b locks") })
    };
    assert!(claims_come_to(&admin, &name, 1).await, "b's claim is there");
    let (field, claim) = oldest_claim(&admin, &name).await;
    let token = claim
        .split(' ')
        .nth(1)
        .expect("the claim's token")
        .to_owned();
    let key = format!("valkeylock:0:{name}");
    let hash = format!("{{{key}}}:c");
    support::cluster::command(&admin, &["SET", &key, &token, "PX", "10000"])
        .await
        .expect("SET");
    support::cluster::command(&admin, &["HDEL", &hash, &field])
        .await
        .expect("HDEL");
    let b_guard = tokio::time::timeout(Duration::from_secs(5), b_waits)
        .await
        .expect("b finds the key its own at its next run")
        .expect("b's task");
    assert!(
        b_guard.fencing_token() > held.fencing_token(),
        "b's fencing token {} is not above a's {}",
        b_guard.fencing_token(),
        held.fencing_token()
    );
    b_guard.release().await.expect("b releases");
    drop(held);
    a.close().await;
    b.close().await;
}

/// Hand-over is refused on a cluster (the claims' hash and the message are
/// not routed by slot), with the field named; with fencing it is accepted.
#[tokio::test]
async fn handover_is_refused_on_a_cluster_only() {
    let cluster = LockerOptions::new(["valkey-cluster://127.0.0.1:1"]).with_handover(true);
    match cluster.validate() {
        Err(Error::InvalidOptions { field, .. }) => assert_eq!(field, "handover"),
        other => panic!("expected InvalidOptions for handover, got {other:?}"),
    }
    let fenced = LockerOptions::new(["redis://127.0.0.1:1"])
        .with_handover(true)
        .with_fencing(true);
    assert!(fenced.validate().is_ok());
}

/// Four lockers with hand-over take turns on one name, releasing at once:
/// each waiting episode writes its claim once. A waiter's run that hears
/// of a change while it is out (a hand-over to another claim, an
/// extension, the same locker's release answering first) waits on its
/// standing claim; before, it ran again at once and wrote its claim anew,
/// about once more per lock + release (BENCHMARKS.md, "valkeylock with
/// hand-over").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_writes_its_claim_once_per_wait() {
    init_tracing();
    const LOCKERS: usize = 4;
    const ROUNDS: usize = 500;
    let server = ValkeyServer::start();
    let options = LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_handover(true);
    let name = unique("handover-claims");
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(Locker::connect(options.clone()).await.expect("connect"));
    }
    let admin = server.admin().await;
    let before = command_calls(&admin).await;
    let mut tasks = Vec::new();
    for locker in &lockers {
        let (locker, name) = (locker.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = locker.lock(&name).await.expect("lock");
                guard.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the lockers finish within 60 s")
            .expect("a locker failed");
    }
    let after = command_calls(&admin).await;
    for l in &lockers {
        l.close().await;
    }
    let delta = |c: &str| calls_since(&before, &after, c);
    let ops = (LOCKERS * ROUNDS) as f64;
    let (claims, handed) = (delta("hset") as f64, delta("publish") as f64);
    assert!(
        handed > ops / 2.0,
        "the lockers took turns by hand-over: {handed} of {ops}"
    );
    // Every lock + release but an uncontended one waits once, with one
    // claim; a refresh (a third of a validity) or a run after one time
    // limit (200 ms) adds one, rarely here.
    assert!(
        claims <= 1.2 * ops,
        "{claims} claims written for {ops} locks + releases ({:.2} each)",
        claims / ops
    );
}

/// A key handed over loses the tracking the claimant's read had armed on
/// it (the release's write took it): the claimant reads it again, 1 ms
/// after its grant (`core::lock::REARM_DELAY`), so that it still hears of
/// the key's loss at once, not at its next extension, seconds away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_handed_over_hears_of_its_loss_at_once() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let options = LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_key_validity(Duration::from_secs(30))
        .with_handover(true);
    let a = Locker::connect(options.clone()).await.expect("connect a");
    let b = Locker::connect(options).await.expect("connect b");
    let name = unique("handover-lost");
    let held = a.lock(&name).await.expect("a locks");
    let waits = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move { b.lock(&name).await.expect("b locks") })
    };
    assert!(claims_come_to(&admin, &name, 1).await, "b claims the key");
    let before = command_calls(&admin).await;
    held.release().await.expect("a releases");
    let guard = tokio::time::timeout(Duration::from_secs(5), waits)
        .await
        .expect("b is granted")
        .expect("b's task");
    let handed = calls_since(&before, &command_calls(&admin).await, "publish");
    assert_eq!(handed, 1, "the release handed the key to b");
    // Well past the check, well before the first extension (10 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(guard.is_held());
    // At once, not at its next extension.
    hears_of_delete(&admin, &guard, &name, Duration::from_secs(3)).await;
    a.close().await;
    b.close().await;
}
