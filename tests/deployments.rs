//! Scale-out deployments, tested for real (issue #5): a Valkey Cluster (three
//! masters with a replica each), a primary and replica under three Sentinels,
//! and five independent instances. Each test builds its own deployment on
//! free 127.0.0.1 ports and tears it down on drop.
//!
//! Besides the behaviour checks, a sampler reads the lock's keys where they
//! really live (each slot's current master, the primary the Sentinels name,
//! each instance) every few milliseconds while the holder runs, and records
//! how long `is_held()` stayed true while fewer than `M` keys held the
//! holder's token ("exposure"). An unreachable node's key keeps its last
//! known state (nobody else can take it either). Exposure longer than
//! [`GRACE`] fails the test.
//!
//! The tests print `MEASURE` lines (acquire latency, loss detection) that the
//! README's "Deployments" section quotes:
//! `cargo test --all-features --test deployments -- --nocapture 2>&1 | grep MEASURE`.
#![allow(missing_docs)]

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use support::cluster::{cli, keyslot, parse_nodes, NodeInfo, NodeReader, ValkeyCluster};
use support::sentinel::{SentinelDeployment, SERVICE};
use support::*;
use tokio::task::block_in_place;
use tokio::time::{sleep, timeout, Instant};
use valkeylock::{Error as LockError, LeaseWatcher, LockGuard, Locker, LockerOptions, LostReason};

const PREFIX: &str = "valkeylock";

/// Longest tolerated time of `is_held()` with fewer than `M` keys holding
/// the token: an invalidation plus a verify round trip on a busy 2-core
/// machine, with a wide margin. Detection through the next extension
/// instead (up to `extend_interval` = 1 s here) exceeds it.
const GRACE: Duration = Duration::from_millis(500);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn key(i: usize, name: &str) -> String {
    format!("{PREFIX}:{i}:{name}")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

// ===== measurements =====

/// Median (and p90) of 50 uncontended `lock()` calls, each followed by a
/// `release()` (timed apart), after 3 warm-up rounds.
async fn measure_acquire(locker: &Locker, topology: &str) -> Duration {
    let name = unique(&format!("latency-{topology}"));
    let (mut acquire, mut release) = (Vec::new(), Vec::new());
    for i in 0..53 {
        let t0 = Instant::now();
        let g = timeout(secs(5), locker.lock(&name))
            .await
            .expect("uncontended lock() hung")
            .expect("uncontended lock");
        let t1 = Instant::now();
        let _ = g.release().await;
        if i >= 3 {
            acquire.push(t1 - t0);
            release.push(t1.elapsed());
        }
    }
    let m = median(acquire.clone());
    eprintln!(
        "MEASURE {topology}: acquire latency median {:?} p90 {:?}; release median {:?} (50 uncontended lock+release)",
        m,
        pct(&acquire, 90),
        median(release)
    );
    m
}

/// Loss detection: `rounds` times, lock a fresh name, then delete a majority
/// of its keys with `delete` and time until `lost()` fires (the DEL round
/// trip included). Asserts each reason is `Deleted`.
async fn measure_loss<F, Fut>(
    locker: &Locker,
    topology: &str,
    rounds: usize,
    mut delete: F,
) -> Duration
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..rounds {
        let name = unique(&format!("loss-{topology}"));
        let g = locker.lock(&name).await.expect("lock");
        // Let the acquire script's tracking GETs settle.
        sleep(ms(50)).await;
        let t0 = Instant::now();
        delete(name.clone()).await;
        let reason = timeout(secs(3), g.lost())
            .await
            .unwrap_or_else(|_| panic!("{topology}: lost() did not fire within 3 s of the DEL"));
        times.push(t0.elapsed());
        assert_eq!(reason, LostReason::Deleted, "{topology}: reason");
        assert!(!g.is_held());
    }
    let m = median(times.clone());
    eprintln!(
        "MEASURE {topology}: loss detection (DEL of a majority of keys -> lost()) median {:?} max {:?} over {rounds} rounds",
        m,
        times.iter().max().expect("rounds > 0")
    );
    m
}

// ===== where keys really are =====

/// How to find each key of a lock.
enum Layout {
    /// Independent instances (ports), each key where the engine places it.
    Instances(Vec<u16>),
    /// Each key on its slot's current master, per `CLUSTER NODES` of the
    /// first node (of these ports) that answers.
    Cluster(Vec<u16>),
    /// One primary, the one the first answering Sentinel (ports) names.
    Sentinel(Vec<u16>),
}

/// Reads a lock's keys where they live and counts those holding `token`.
struct Probe {
    layout: Layout,
    keys: Vec<String>,
    token: String,
    reader: NodeReader,
    /// Last known state of each key (ours or not); kept while its node is
    /// unreachable.
    last: Vec<bool>,
}

impl Probe {
    fn new(layout: Layout, name: &str, total: usize, token: &str) -> Probe {
        let reader = match layout {
            Layout::Cluster(_) => NodeReader::cluster(),
            _ => NodeReader::standalone(),
        };
        Probe {
            layout,
            keys: (0..total).map(|i| key(i, name)).collect(),
            token: token.to_owned(),
            reader,
            last: vec![true; total],
        }
    }

    /// The port serving each key now (`None`: unknown, e.g. a failed master).
    async fn ports(&mut self) -> Vec<Option<u16>> {
        let n = self.keys.len();
        match &self.layout {
            Layout::Instances(ports) => {
                let options =
                    LockerOptions::new(ports.iter().map(|p| format!("redis://127.0.0.1:{p}")))
                        .with_key_majority(n.div_ceil(2));
                (0..n)
                    .map(|i| Some(ports[options.node_of_key(i).expect("valid options")]))
                    .collect()
            }
            Layout::Cluster(ports) => {
                let ports = ports.clone();
                let mut topo: Vec<NodeInfo> = Vec::new();
                for p in ports {
                    if let Ok(v) = self.reader.command(p, &["CLUSTER", "NODES"]).await {
                        if let Ok(text) = v.convert::<String>() {
                            topo = parse_nodes(&text);
                            break;
                        }
                    }
                }
                self.keys
                    .iter()
                    .map(|k| {
                        let slot = keyslot(k);
                        topo.iter()
                            .find(|n| n.master && !n.failed && n.serves(slot))
                            .map(|n| n.port)
                    })
                    .collect()
            }
            Layout::Sentinel(sentinels) => {
                let sentinels = sentinels.clone();
                let mut primary = None;
                for s in sentinels {
                    let r = self
                        .reader
                        .command(s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                        .await;
                    if let Ok(v) = r {
                        if let Ok(addr) = v.convert::<Vec<String>>() {
                            primary = addr.get(1).and_then(|p| p.parse().ok());
                            break;
                        }
                    }
                }
                vec![primary; n]
            }
        }
    }

    /// Keys holding the token (unreachable ones count as last seen).
    async fn count(&mut self) -> usize {
        let ports = self.ports().await;
        for (i, port) in ports.into_iter().enumerate() {
            let Some(port) = port else { continue };
            let key = self.keys[i].clone();
            if let Ok(v) = self.reader.get(port, &key).await {
                self.last[i] = v.as_deref() == Some(self.token.as_str());
            }
        }
        self.last.iter().filter(|&&x| x).count()
    }
}

/// What the sampler saw.
#[derive(Debug, Default)]
struct Exposure {
    samples: usize,
    held: usize,
    exposed: usize,
    longest: Duration,
}

/// Samples until `stop`: `is_held()`, then the keys, then `is_held()` again;
/// a sample is exposed when the lock was held before and after while fewer
/// than `m` keys held the token.
fn start_sampler(
    w: LeaseWatcher,
    m: usize,
    mut probe: Probe,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Exposure> {
    tokio::spawn(async move {
        let mut e = Exposure::default();
        let mut streak: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let before = w.is_held();
            let ours = probe.count().await;
            let after = w.is_held();
            let now = Instant::now();
            e.samples += 1;
            if before && after {
                e.held += 1;
            }
            if before && after && ours < m {
                e.exposed += 1;
                let since = *streak.get_or_insert(now);
                e.longest = e.longest.max(now - since);
            } else {
                streak = None;
            }
            sleep(ms(10)).await;
        }
        probe.reader.close().await;
        e
    })
}

async fn stop_sampler(stop: &AtomicBool, h: tokio::task::JoinHandle<Exposure>) -> Exposure {
    stop.store(true, Ordering::Relaxed);
    h.await.expect("sampler task")
}

// ===== Valkey Cluster =====

fn cluster_options(c: &ValkeyCluster) -> LockerOptions {
    LockerOptions::new([c.url()])
        .with_key_majority(2)
        .with_key_validity(secs(2))
}

/// The master port of each of a lock's 3 keys, per `topo`.
fn masters_of(topo: &[NodeInfo], name: &str) -> Vec<u16> {
    (0..3)
        .map(|i| {
            let slot = keyslot(&key(i, name));
            topo.iter()
                .find(|n| n.master && n.serves(slot))
                .map(|n| n.port)
                .expect("every slot is served")
        })
        .collect()
}

/// A fresh name whose 3 keys sit on 3 different masters. The slots of a
/// lock's keys differ by an XOR pattern fixed by the name's length (CRC16 is
/// linear), so the search varies the length, not just the content.
fn spread_name(c: &ValkeyCluster, base: &str) -> String {
    let topo = c.topology();
    for j in 0..500 {
        let name = format!("{}-{}", unique(base), "x".repeat(j % 25));
        let mut m = masters_of(&topo, &name);
        m.sort();
        m.dedup();
        if m.len() == 3 {
            return name;
        }
    }
    panic!(
        "no name with keys on three masters in 500 tries; topology {topo:?} from\n{}",
        c.nodes_text()
    );
}

/// `n` pseudo-random lowercase names of `len` bytes (xorshift, fixed seed).
fn random_names(len: usize, n: usize, seed: u64) -> Vec<String> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect()
        })
        .collect()
}

/// The token of the grant on `name`: waits (up to 3 s, enough for an
/// extension to retake a key a racing release still held) until every key
/// holds the same one, read on its master.
async fn cluster_token(c: &ValkeyCluster, reader: &mut NodeReader, name: &str) -> String {
    let deadline = Instant::now() + secs(3);
    loop {
        let mut tokens = Vec::new();
        for i in 0..3 {
            let k = key(i, name);
            let port = c.master_of(&k).expect("a master");
            tokens.push(reader.get(port, &k).await.ok().flatten());
        }
        if tokens[0].is_some() && tokens.iter().all(|t| *t == tokens[0]) {
            return tokens.swap_remove(0).expect("checked");
        }
        assert!(
            Instant::now() < deadline,
            "keys of {name} never all held one token: {tokens:?}"
        );
        sleep(ms(20)).await;
    }
}

async fn wait_replicated(reader: &mut NodeReader, port: u16, k: &str, token: &str) {
    let mut ok = false;
    for _ in 0..200 {
        if reader.get(port, k).await.ok().flatten().as_deref() == Some(token) {
            ok = true;
            break;
        }
        sleep(ms(10)).await;
    }
    assert!(ok, "{k} never reached the replica on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lock_wait_lost_and_key_placement() {
    init_tracing();
    let cluster = block_in_place(|| ValkeyCluster::start(3));
    let opts = cluster_options(&cluster);
    let a = Locker::connect(opts.clone())
        .await
        .expect("connect a through valkey-cluster://");
    let b = Locker::connect(opts).await.expect("connect b");
    let admin = cluster.admin().await;
    let mut reader = NodeReader::cluster();

    // Placement: fred's slot function agrees with the server, keys of a lock
    // go to distinct slots, and how often they spread over all 3 masters.
    let topo = cluster.topology();
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3, "{}", cluster.nodes_text());
    let sample = unique("slot");
    for i in 0..3 {
        let k = key(i, &sample);
        let server: u16 = cli(masters[0], &["CLUSTER", "KEYSLOT", &k])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT");
        assert_eq!(
            server,
            keyslot(&k),
            "CLUSTER KEYSLOT vs redis_keyslot for {k}"
        );
    }
    // The slots of key i and key 0 differ by an XOR that depends only on the
    // name's length (CRC16 is linear), so how a lock's keys spread over
    // masters is decided by the length of its name.
    let (mut never_spread, mut mostly_one) = (Vec::new(), Vec::new());
    let mut spread_total = [0usize; 4];
    for len in 4..=40 {
        let names = random_names(len, 200, len as u64 * 7919);
        let xor = |n: &str, i: usize| keyslot(&key(i, n)) ^ keyslot(&key(0, n));
        for n in &names[1..] {
            assert_eq!(
                (xor(n, 1), xor(n, 2)),
                (xor(&names[0], 1), xor(&names[0], 2)),
                "slot XOR pattern differs between names of length {len}"
            );
        }
        let mut spread = [0usize; 4];
        for n in &names {
            let mut m = masters_of(&topo, n);
            m.sort();
            m.dedup();
            spread[m.len()] += 1;
            spread_total[m.len()] += 1;
        }
        if spread[3] == 0 {
            never_spread.push(len);
        }
        if spread[1] * 2 > names.len() {
            mostly_one.push(len);
        }
    }
    eprintln!(
        "MEASURE cluster (3 masters): names of 4..=40 bytes, keys on 3/2/1 masters: {}/{}/{} of {}; \
         lengths where no name spreads over 3 masters: {never_spread:?}; \
         lengths where most names have all 3 keys on ONE master: {mostly_one:?}",
        spread_total[3],
        spread_total[2],
        spread_total[1],
        spread_total.iter().sum::<usize>()
    );
    assert!(spread_total[3] > 0, "keys never spread over masters");

    let name = spread_name(&cluster, "cluster-basic");
    let g = a.lock(&name).await.expect("lock on the cluster");
    assert!(g.is_held());
    let token = cluster_token(&cluster, &mut reader, &name).await;
    let mut holders = Vec::new();
    for i in 0..3 {
        let k = key(i, &name);
        let port = cluster.master_of(&k).expect("master");
        holders.push(port);
        for &other in masters.iter().filter(|&&p| p != port) {
            assert!(
                reader.get(other, &k).await.is_err(),
                "{k} readable on {other}, which does not serve slot {}",
                keyslot(&k)
            );
        }
    }
    eprintln!(
        "cluster: lock {name}: key slots {:?} on masters {holders:?}",
        (0..3).map(|i| keyslot(&key(i, &name))).collect::<Vec<_>>()
    );
    let mut distinct = holders.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3);
    assert!(!token.is_empty());

    // A waiter in another locker wakes promptly on release.
    let (latency, g2) = wake_after_release(g, &b, &name).await;
    eprintln!("MEASURE cluster: waiter in another locker woke {latency:?} after the release");
    let token2 = cluster_token(&cluster, &mut reader, &name).await;
    assert_ne!(token, token2);

    // A minority DEL: still held, and the key is taken back.
    let k2 = key(2, &name);
    let _: i64 = admin.del(&k2).await.expect("DEL key 2");
    sleep(ms(300)).await;
    assert!(
        g2.is_held(),
        "lost after a minority DEL: {:?}",
        g2.lost_reason()
    );
    let back = eventually(secs(3), || {
        let (admin, k2, token2) = (admin.clone(), k2.clone(), token2.clone());
        async move { admin.get::<Option<String>, _>(&k2).await.ok().flatten() == Some(token2) }
    })
    .await;
    assert!(back, "the minority key was not taken back within 3 s");

    // A majority DEL through the cluster-aware client fires lost().
    let t0 = Instant::now();
    let (r0, r1) = tokio::join!(
        admin.del::<i64, _>(key(0, &name)),
        admin.del::<i64, _>(key(1, &name))
    );
    r0.expect("DEL key 0");
    r1.expect("DEL key 1");
    let reason = timeout(secs(2), g2.lost())
        .await
        .expect("lost() after a majority DEL");
    eprintln!(
        "cluster: majority DEL -> lost({reason}) after {:?}",
        t0.elapsed()
    );
    assert_eq!(reason, LostReason::Deleted);

    // A semaphore on the cluster: each permit is a lock like the others.
    let sem = spread_name(&cluster, "cluster-sem");
    let (pool_a, pool_b) = (
        a.semaphore(&sem, 2).expect("semaphore"),
        b.semaphore(&sem, 2).expect("semaphore"),
    );
    let p = pool_a.acquire().await.expect("a permit on the cluster");
    let q = pool_b.acquire().await.expect("a second permit");
    assert_ne!(p.slot(), q.slot());
    assert!(matches!(
        pool_b.try_acquire().await,
        Err(valkeylock::Error::NotLocked { .. })
    ));
    let waiter = tokio::spawn({
        let pool_b = pool_b.clone();
        async move { pool_b.acquire().await }
    });
    tokio::time::sleep(ms(200)).await;
    assert!(
        !waiter.is_finished(),
        "a third permit of two on the cluster"
    );
    let t0 = Instant::now();
    drop(p);
    let r = timeout(secs(5), waiter)
        .await
        .expect("the permit waiter was not woken")
        .expect("task")
        .expect("the freed permit");
    eprintln!(
        "cluster: permit waiter woke {:?} after the drop",
        t0.elapsed()
    );
    drop((q, r));

    // Fair queueing on a cluster: each key's queue sits on the key's slot;
    // a waiter of another locker is served when the holder releases, and a
    // name with braces of its own is refused.
    let fair = || async {
        Locker::connect(cluster_options(&cluster).with_fair_queueing(true))
            .await
            .expect("connect a fair locker")
    };
    let (fa, fb) = (fair().await, fair().await);
    let fair_name = spread_name(&cluster, "fair");
    let held = fa.lock(&fair_name).await.expect("fair lock");
    let (woke, g) = wake_after_release(held, &fb, &fair_name).await;
    eprintln!("cluster: fair waiter woke {woke:?} after the release");
    g.release().await.expect("release");
    assert!(matches!(
        fa.lock("fair{tag}").await,
        Err(LockError::InvalidName { .. })
    ));
    fa.close().await;
    fb.close().await;

    // Leader election on a cluster: the term comes from the two-phase
    // fencing step (the counter and the lock's keys are on different
    // slots), the log sits on a slot of its own, and an observer in another
    // locker is woken by its invalidations.
    let election_name = unique("elect");
    let (ea, eb) = (
        a.election(&election_name).expect("election"),
        b.election(&election_name).expect("election"),
    );
    let mut observer = b
        .election(&election_name)
        .expect("election")
        .observe()
        .expect("observe");
    let first = ea.campaign("a").await.expect("a leads");
    let seen = timeout(secs(5), observer.next())
        .await
        .expect("observed within 5 s")
        .expect("observer");
    assert_eq!((seen.value.as_str(), seen.term), ("a", first.term()));
    let next = tokio::spawn({
        let eb = eb.clone();
        async move { eb.campaign("b").await }
    });
    sleep(Duration::from_millis(50)).await;
    let term_a = first.term();
    first.resign().await.expect("resign");
    let second = timeout(secs(5), next)
        .await
        .expect("b leads within 5 s")
        .expect("task")
        .expect("b leads");
    assert!(second.term() > term_a, "{} > {term_a}", second.term());
    assert_eq!(
        ea.leader()
            .await
            .expect("leader")
            .map(|l| (l.value, l.term)),
        Some(("b".to_owned(), second.term()))
    );
    let seen = timeout(secs(5), observer.next())
        .await
        .expect("observed within 5 s")
        .expect("observer");
    assert_eq!((seen.value.as_str(), seen.term), ("b", second.term()));
    second.resign().await.expect("resign");
    eprintln!("cluster: election terms {term_a} then {}", seen.term);

    // A read-write lock on a cluster: each index's keys share a hash tag
    // (one slot, so each gate is one atomic step), the indices spread over
    // the masters. Readers of two lockers share; a writer waits for both,
    // stops a new reader meanwhile, and is woken when they leave.
    let rw_name = unique("rw");
    let (ra, rb) = (
        a.rw_lock(&rw_name).expect("rw_lock"),
        b.rw_lock(&rw_name).expect("rw_lock"),
    );
    let (r1, r2) = (
        ra.read().await.expect("read"),
        rb.read().await.expect("read"),
    );
    let writer = tokio::spawn({
        let ra = ra.clone();
        async move { ra.write().await }
    });
    sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "a writer beside readers");
    assert!(matches!(
        rb.try_read().await,
        Err(LockError::NotLocked { .. })
    ));
    drop(r1);
    r2.release().await.expect("release");
    let w = timeout(secs(5), writer)
        .await
        .expect("the writer woke within 5 s")
        .expect("task")
        .expect("write");
    assert!(w.fencing_token() > 0);
    let tags: std::collections::BTreeSet<u16> = (0..3)
        .map(|i| keyslot(&format!("{{valkeylock:{i}:{rw_name}}}:w")))
        .collect();
    eprintln!("cluster: read-write lock keys on slots {tags:?}");
    w.release().await.expect("release");

    // A burst: the acquisitions and releases that a node's pump finds queued
    // together go in script calls of many keys, one hash slot per call (a
    // call across slots is refused with CROSSSLOT, and its locks with it).
    let burst = unique("burst");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (a, name) = (a.clone(), format!("{burst}-{i}"));
        set.spawn(async move { a.try_lock(&name).await });
    }
    let mut guards = Vec::new();
    while let Some(r) = timeout(secs(30), set.join_next())
        .await
        .expect("a burst of try_lock answered within 30 s")
    {
        guards.push(r.expect("lock task").expect("a free name in a burst"));
    }
    let mut set = tokio::task::JoinSet::new();
    for guard in guards {
        set.spawn(guard.release());
    }
    while let Some(r) = timeout(secs(30), set.join_next())
        .await
        .expect("a burst of releases answered within 30 s")
    {
        r.expect("release task").expect("a release in a burst");
    }

    measure_acquire(&a, "cluster").await;
    measure_loss(&a, "cluster", 5, |name| {
        let admin = admin.clone();
        async move {
            let (x, y) = tokio::join!(
                admin.del::<i64, _>(key(0, &name)),
                admin.del::<i64, _>(key(1, &name))
            );
            x.expect("DEL");
            y.expect("DEL");
        }
    })
    .await;

    reader.close().await;
    let _ = admin.quit().await;
    a.close().await;
    b.close().await;
}

/// Locks a fresh name whose keys sit on 3 masters and waits until every key
/// is on its master's replica too. Returns the guard, the name and the token.
async fn held_on_cluster(
    cluster: &ValkeyCluster,
    locker: &Locker,
    base: &str,
) -> (LockGuard, String, String) {
    let name = spread_name(cluster, base);
    let g = locker.lock(&name).await.expect("lock on the cluster");
    let mut reader = NodeReader::cluster();
    let token = cluster_token(cluster, &mut reader, &name).await;
    // Every key is on its master's replica too before anything happens.
    for i in 0..3 {
        let k = key(i, &name);
        let master = cluster.master_of(&k).expect("master");
        let replica = cluster.replica_of(master).expect("replica");
        wait_replicated(&mut reader, replica, &k, &token).await;
    }
    reader.close().await;
    (g, name, token)
}

fn cluster_probe(cluster: &ValkeyCluster, name: &str, token: &str) -> Probe {
    let ports = cluster.nodes.iter().map(|n| n.port).collect();
    Probe::new(Layout::Cluster(ports), name, 3, token)
}

/// After a disturbance: the lock is either still held with a majority of its
/// keys (verified on their masters) or was reported lost; never held without
/// them. Then a new lock works.
async fn check_consistent_after(
    cluster: &ValkeyCluster,
    locker: &Locker,
    g: &LockGuard,
    name: &str,
    token: &str,
    what: &str,
) {
    let mut probe = cluster_probe(cluster, name, token);
    let ours = probe.count().await;
    probe.reader.close().await;
    if g.is_held() {
        eprintln!("cluster {what}: the holder kept the lock; {ours}/3 keys hold its token");
        assert!(
            ours >= 2,
            "{what}: held with only {ours}/3 keys holding its token"
        );
    } else {
        eprintln!(
            "cluster {what}: the holder was told lost({:?}); {ours}/3 keys hold its token",
            g.lost_reason()
        );
    }
    let t0 = Instant::now();
    let fresh = timeout(secs(10), locker.lock(&unique(&format!("after-{what}"))))
        .await
        .unwrap_or_else(|_| panic!("lock() hung for 10 s after the {what}"))
        .expect("lock after the disturbance");
    eprintln!("cluster {what}: a new lock() took {:?}", t0.elapsed());
    let _ = fresh.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_manual_failover_while_held() {
    init_tracing();
    let cluster = block_in_place(|| ValkeyCluster::start(3));
    let a = Locker::connect(cluster_options(&cluster))
        .await
        .expect("connect");
    let (g, name, token) = held_on_cluster(&cluster, &a, "cluster-failover").await;
    let k0 = key(0, &name);
    let old = cluster.master_of(&k0).expect("master");
    let replica = cluster.replica_of(old).expect("replica");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(
        g.watcher(),
        2,
        cluster_probe(&cluster, &name, &token),
        stop.clone(),
    );
    let t0 = Instant::now();
    block_in_place(|| cluster.manual_failover(replica));
    eprintln!(
        "cluster: CLUSTER FAILOVER {old} -> {replica} done after {:?}",
        t0.elapsed()
    );
    assert_eq!(cluster.master_of(&k0), Some(replica));

    // A coordinated failover loses nothing: the holder must keep the lock
    // through more than one key_validity (its extensions follow MOVED).
    sleep(ms(2500)).await;
    assert!(
        g.is_held(),
        "lock lost after a manual failover that kept every key: {:?}",
        g.lost_reason()
    );
    assert_held_and_extended_on(replica, &k0, &token, "the new master").await;
    check_consistent_after(&cluster, &a, &g, &name, &token, "manual failover").await;

    // Delete key 0 (now on the promoted replica) and key 1: lost() must fire
    // as promptly as before the failover (an invalidation, not the next
    // extension).
    let tracking: Vec<(u16, usize)> = cluster
        .master_ports()
        .into_iter()
        .map(|p| (p, tracking_clients(p)))
        .collect();
    eprintln!("cluster: connections with CLIENT TRACKING on per master (new master {replica}): {tracking:?}");
    let admin = cluster.admin().await;
    // Right after an extension landed (key 0's PTTL jumps up), so the next
    // extension is a full extend_interval away: only an invalidation can
    // make lost() prompt.
    let mut reader = NodeReader::cluster();
    wait_extension(&mut reader, replica, &k0).await;
    reader.close().await;
    let t0 = Instant::now();
    let (x, y) = tokio::join!(admin.del::<i64, _>(&k0), admin.del::<i64, _>(key(1, &name)));
    assert_eq!(
        (x.expect("DEL"), y.expect("DEL")),
        (1, 1),
        "DEL of keys 0 and 1"
    );
    let outcome = timeout(secs(3), g.lost()).await;
    let detect = t0.elapsed();
    eprintln!("MEASURE cluster after a failover: majority DEL (one key on the promoted master) -> {outcome:?} after {detect:?}");
    let exposure = stop_sampler(&stop, sampler).await;
    let held = g.is_held();
    let mut probe = cluster_probe(&cluster, &name, &token);
    let ours = probe.count().await;
    probe.reader.close().await;
    eprintln!("cluster manual failover: sampler {exposure:?}; now held: {held}, {ours}/3 keys hold its token");
    let _ = admin.quit().await;
    a.close().await;
    assert_eq!(
        outcome,
        Ok(LostReason::Deleted),
        "lost() did not fire within 3 s of deleting 2 of 3 keys after a failover \
         (held: {held}, {ours}/3 keys hold its token now; exposure {exposure:?})"
    );
    assert!(
        exposure.longest <= GRACE,
        "is_held() stayed true for {:?} while fewer than 2 of 3 keys held the token ({exposure:?})",
        exposure.longest
    );
}

/// Waits until `k`'s PTTL on `port` jumps up: an extension just landed.
/// Key `k` on the cluster node `port` holds `token` and was extended there
/// (more than 500 ms left): the lock followed its key to `place`.
async fn assert_held_and_extended_on(port: u16, k: &str, token: &str, place: &str) {
    let mut reader = NodeReader::cluster();
    let v = reader.get(port, k).await.expect("read the key's node");
    assert_eq!(v.as_deref(), Some(token), "{k} on {place} ({port})");
    let pttl: i64 = reader
        .command(port, &["PTTL", k])
        .await
        .expect("PTTL")
        .convert()
        .expect("int");
    eprintln!("cluster: {k} on {place} ({port}): PTTL {pttl} ms");
    assert!(
        pttl > 500,
        "{k} not extended on {place} ({port}): PTTL {pttl}"
    );
    reader.close().await;
}

async fn wait_extension(reader: &mut NodeReader, port: u16, k: &str) {
    let mut last = i64::MAX;
    let deadline = Instant::now() + secs(3);
    while Instant::now() < deadline {
        let pttl: i64 = match reader.command(port, &["PTTL", k]).await {
            Ok(v) => v.convert().unwrap_or(-2),
            Err(_) => -2,
        };
        if pttl > last.saturating_add(200) {
            return;
        }
        last = pttl;
        sleep(ms(5)).await;
    }
    panic!("no extension of {k} seen on {port} within 3 s");
}

/// Connections with `CLIENT TRACKING` on (flag `t`) at the node on `port`.
fn tracking_clients(port: u16) -> usize {
    cli(port, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("flags="))
                .is_some_and(|f| f.contains('t'))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_killed_master_while_held() {
    init_tracing();
    let mut cluster = block_in_place(|| ValkeyCluster::start(3));
    // Two holders: key_validity 2 s (shorter than a failover) and 6 s
    // (longer). Each has exactly one key on every master (spread names).
    let a = Locker::connect(cluster_options(&cluster))
        .await
        .expect("connect");
    let long = Locker::connect(cluster_options(&cluster).with_key_validity(secs(6)))
        .await
        .expect("connect");
    let (g, name, token) = held_on_cluster(&cluster, &a, "cluster-kill").await;
    let (h, long_name, long_token) = held_on_cluster(&cluster, &long, "cluster-kill-long").await;
    let k0 = key(0, &name);
    let old = cluster.master_of(&k0).expect("master");
    let replica = cluster.replica_of(old).expect("replica");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(
        g.watcher(),
        2,
        cluster_probe(&cluster, &name, &token),
        stop.clone(),
    );
    let long_sampler = start_sampler(
        h.watcher(),
        2,
        cluster_probe(&cluster, &long_name, &long_token),
        stop.clone(),
    );
    let t0 = Instant::now();
    cluster.node_mut(old).kill();
    block_in_place(|| cluster.wait_promoted(replica, secs(15)));
    eprintln!(
        "MEASURE cluster: master {old} killed; replica {replica} promoted after {:?}",
        t0.elapsed()
    );
    // Let the holders settle: lost, or verified on the new master.
    let settled = timeout(secs(3), g.lost()).await;
    eprintln!(
        "cluster killed master (validity 2 s): {settled:?} after {:?}",
        t0.elapsed()
    );
    check_consistent_after(&cluster, &a, &g, &name, &token, "killed master").await;
    // The 6 s holder outlives the failover unless the locker could not
    // verify a majority within its validity.
    let settled = tokio::time::timeout_at(t0 + ms(7500), h.lost()).await;
    eprintln!(
        "cluster killed master (validity 6 s): {settled:?} after {:?}",
        t0.elapsed()
    );
    check_consistent_after(
        &cluster,
        &long,
        &h,
        &long_name,
        &long_token,
        "killed master, 6 s validity",
    )
    .await;
    let exposure = stop_sampler(&stop, sampler).await;
    let long_exposure = long_sampler.await.expect("sampler");
    eprintln!("cluster killed master: sampler 2 s {exposure:?}; 6 s {long_exposure:?}");
    a.close().await;
    long.close().await;
    for e in [exposure, long_exposure] {
        assert!(
            e.longest <= GRACE,
            "is_held() stayed true for {:?} while fewer than 2 of 3 keys held the token ({e:?})",
            e.longest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_migration_while_held() {
    init_tracing();
    let cluster = block_in_place(|| ValkeyCluster::start(3));
    let a = Locker::connect(cluster_options(&cluster))
        .await
        .expect("connect");
    let (g, name, token) = held_on_cluster(&cluster, &a, "cluster-migrate").await;
    let k0 = key(0, &name);
    let slot = keyslot(&k0);
    let from = cluster.master_of(&k0).expect("master");
    let to = cluster.master_of(&key(1, &name)).expect("master");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(
        g.watcher(),
        2,
        cluster_probe(&cluster, &name, &token),
        stop.clone(),
    );
    let t0 = Instant::now();
    // The ASK window (key moved, slot still owned by the source) lasts
    // longer than key_validity, as a slot with many keys can: the holder
    // keeps the lock only if its commands on key 0 follow ASK.
    let conns = |port: u16| -> u64 {
        cli(port, &["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = conns(from);
    block_in_place(|| {
        cluster.migrate_slot(slot, from, to, || std::thread::sleep(ms(2500)));
    });
    eprintln!(
        "cluster: slot {slot} of key 0 migrated {from} -> {to} in {:?} (ASK window 2.5 s); \
         connections opened to the source meanwhile: {}; holder: {:?}",
        t0.elapsed(),
        conns(from).saturating_sub(before),
        g.lost_reason()
    );
    assert_eq!(cluster.master_of(&k0), Some(to));
    // Through MOVED now. The bar: the lock is either verified on the
    // new master or reported lost, never silently unprotected (the sampler).
    sleep(ms(2500)).await;
    if let Some(reason) = g.lost_reason() {
        // fred 10.1 ends a tracking cluster connection when an ASK redirect
        // fails ("Routing Error: Max attempts reached"), so the node restarts
        // until the migration completes; a window longer than the validity
        // is reported as a loss (README, Deployments).
        eprintln!("cluster slot migration: holder told {reason} during the ASK window");
        let exposure = stop_sampler(&stop, sampler).await;
        assert!(
            exposure.longest <= GRACE,
            "is_held() stayed true for {:?} while fewer than 2 of 3 keys held the token ({exposure:?})",
            exposure.longest
        );
        // The locker recovers: the slot's new owner serves the lock.
        let again = timeout(secs(10), a.lock(&name))
            .await
            .expect("lock after the migration")
            .expect("lock");
        assert!(again.is_held());
        let _ = again.release().await;
        a.close().await;
        return;
    }
    assert_held_and_extended_on(to, &k0, &token, "its new master after the migration").await;
    check_consistent_after(&cluster, &a, &g, &name, &token, "slot migration").await;

    // A majority DEL including the migrated key fires lost().
    let admin = cluster.admin().await;
    let t0 = Instant::now();
    let (x, y) = tokio::join!(admin.del::<i64, _>(&k0), admin.del::<i64, _>(key(2, &name)));
    x.expect("DEL");
    y.expect("DEL");
    let reason = timeout(secs(3), g.lost())
        .await
        .expect("lost() after the DEL");
    eprintln!("MEASURE cluster after a slot migration: majority DEL (incl. the migrated key) -> lost({reason}) after {:?}", t0.elapsed());
    let exposure = stop_sampler(&stop, sampler).await;
    eprintln!("cluster slot migration: sampler {exposure:?}");
    let _ = admin.quit().await;
    a.close().await;
    assert_eq!(reason, LostReason::Deleted);
    assert!(
        exposure.longest <= GRACE,
        "is_held() stayed true for {:?} while fewer than 2 of 3 keys held the token ({exposure:?})",
        exposure.longest
    );
}

// ===== Sentinel =====

fn sentinel_options(d: &SentinelDeployment) -> LockerOptions {
    LockerOptions::new([d.url()])
        .with_key_majority(1)
        .with_key_validity(secs(2))
}

fn sentinel_probe(d: &SentinelDeployment, name: &str, token: &str) -> Probe {
    let ports = d.sentinels.iter().map(|s| s.port).collect();
    Probe::new(Layout::Sentinel(ports), name, 1, token)
}

/// Locks `name` and returns the guard and its token, once the replica has
/// the key too.
async fn held_on_sentinel(
    d: &SentinelDeployment,
    locker: &Locker,
    name: &str,
) -> (LockGuard, String) {
    let g = locker.lock(name).await.expect("lock through the sentinels");
    let primary = d.primary_port();
    let admin = d.server(primary).admin().await;
    let token: String = admin
        .get::<Option<String>, _>(key(0, name))
        .await
        .expect("GET")
        .expect("the key is on the primary");
    let _ = admin.quit().await;
    let mut reader = NodeReader::standalone();
    let replica = d
        .servers
        .iter()
        .find(|s| s.port != primary)
        .expect("replica")
        .port;
    wait_replicated(&mut reader, replica, &key(0, name), &token).await;
    reader.close().await;
    (g, token)
}

/// After a failover: `locker` must reach the new primary (a fresh lock's key
/// lands there) within `within`. Returns how long it took.
async fn reaches(
    locker: &Locker,
    d: &SentinelDeployment,
    primary: u16,
    within: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    let admin = d.server(primary).admin().await;
    let mut found = None;
    while t0.elapsed() < within {
        let name = unique("sentinel-probe");
        if let Ok(Ok(g)) = timeout(secs(2), locker.lock(&name)).await {
            let there: i64 = admin.exists(key(0, &name)).await.unwrap_or(0);
            let _ = g.release().await;
            if there == 1 {
                found = Some(t0.elapsed());
                break;
            }
        }
        sleep(ms(100)).await;
    }
    let _ = admin.quit().await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_lock_measure_and_manual_failover() {
    init_tracing();
    let d = block_in_place(SentinelDeployment::start);
    let opts = sentinel_options(&d);
    let a = Locker::connect(opts.clone())
        .await
        .expect("connect a through valkey-sentinel://");
    let b = Locker::connect(opts.clone()).await.expect("connect b");
    let old = d.primary_port();

    // Basics: a waiter in another locker wakes on release; DEL fires lost().
    let name = unique("sentinel-basic");
    let g = a.lock(&name).await.expect("lock");
    let (latency, g2) = wake_after_release(g, &b, &name).await;
    eprintln!("MEASURE sentinel: waiter in another locker woke {latency:?} after the release");
    let _ = g2.release().await;
    measure_acquire(&a, "sentinel").await;
    let admin = d.server(old).admin().await;
    measure_loss(&a, "sentinel", 5, |name| {
        let admin = admin.clone();
        async move {
            let _: i64 = admin.del(key(0, &name)).await.expect("DEL");
        }
    })
    .await;
    let _ = admin.quit().await;

    // Hold a lock across SENTINEL FAILOVER.
    let name = unique("sentinel-failover");
    let (g, token) = held_on_sentinel(&d, &a, &name).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(
        g.watcher(),
        1,
        sentinel_probe(&d, &name, &token),
        stop.clone(),
    );
    let t0 = Instant::now();
    let reply = cli(d.sentinels[0].port, &["SENTINEL", "FAILOVER", SERVICE]);
    assert!(reply.contains("OK"), "SENTINEL FAILOVER: {reply}");
    let new = block_in_place(|| d.wait_new_primary(old, secs(15)));
    eprintln!(
        "sentinel: SENTINEL FAILOVER {old} -> {new} after {:?}",
        t0.elapsed()
    );

    // A client that connects now goes to the new primary. While the old
    // holder says it holds the lock, that client must not get it.
    let c = Locker::connect(opts)
        .await
        .expect("connect c after the failover");
    let mut double = None;
    let watch_until = Instant::now() + secs(4);
    while Instant::now() < watch_until {
        if g.is_held() {
            if let Ok(Ok(other)) = timeout(secs(1), c.try_lock(&name)).await {
                if g.is_held() {
                    double = Some(t0.elapsed());
                }
                let _ = other.release().await;
                if double.is_some() {
                    break;
                }
            }
        }
        sleep(ms(100)).await;
    }
    // The old locker moves to the new primary.
    let moved = reaches(&a, &d, new, secs(25)).await;
    eprintln!(
        "MEASURE sentinel: after SENTINEL FAILOVER the old locker reached the new primary {:?} after the switch; holder: {:?}",
        moved,
        g.lost_reason()
    );
    let mut reader = NodeReader::standalone();
    let on_new = reader.get(new, &key(0, &name)).await.ok().flatten();
    reader.close().await;
    let exposure = stop_sampler(&stop, sampler).await;
    eprintln!(
        "sentinel manual failover: sampler {exposure:?}; key on the new primary: {:?}",
        on_new.as_deref().map(|t| t == token)
    );
    let held = g.is_held();
    drop(g);
    a.close().await;
    b.close().await;
    c.close().await;
    assert!(moved.is_some(), "the locker never reached the new primary");
    assert!(
        double.is_none(),
        "a client connected after the failover acquired the lock {:?} after SENTINEL FAILOVER while the old holder still had is_held() == true",
        double
    );
    if held {
        assert_eq!(
            on_new.as_deref(),
            Some(token.as_str()),
            "held, but its key is not on the new primary"
        );
    }
    assert!(
        exposure.longest <= GRACE,
        "is_held() stayed true for {:?} while the key on the primary the Sentinels name did not hold the token ({exposure:?})",
        exposure.longest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_killed_primary() {
    init_tracing();
    let mut d = block_in_place(SentinelDeployment::start);
    let a = Locker::connect(sentinel_options(&d))
        .await
        .expect("connect through valkey-sentinel://");
    let old = d.primary_port();
    let name = unique("sentinel-kill");
    let (g, token) = held_on_sentinel(&d, &a, &name).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(
        g.watcher(),
        1,
        sentinel_probe(&d, &name, &token),
        stop.clone(),
    );
    let t0 = Instant::now();
    d.server_mut(old).kill();
    let new = block_in_place(|| d.wait_new_primary(old, secs(20)));
    eprintln!(
        "sentinel: primary {old} killed; {new} promoted after {:?}",
        t0.elapsed()
    );
    let moved = reaches(&a, &d, new, secs(20)).await;
    eprintln!(
        "MEASURE sentinel: after the primary was killed the locker reached the new primary {:?} after the promotion ({:?} after the kill); holder: {:?}",
        moved,
        t0.elapsed(),
        g.lost_reason()
    );
    let mut reader = NodeReader::standalone();
    let on_new = reader.get(new, &key(0, &name)).await.ok().flatten();
    reader.close().await;
    let exposure = stop_sampler(&stop, sampler).await;
    eprintln!("sentinel killed primary: sampler {exposure:?}");
    let held = g.is_held();
    drop(g);
    a.close().await;
    assert!(moved.is_some(), "the locker never reached the new primary");
    if held {
        assert_eq!(
            on_new.as_deref(),
            Some(token.as_str()),
            "held, but its key is not on the new primary"
        );
    }
    assert!(
        exposure.longest <= GRACE,
        "is_held() stayed true for {:?} while the key on the primary did not hold the token ({exposure:?})",
        exposure.longest
    );
}

// ===== Independent instances =====

fn five() -> Vec<ValkeyServer> {
    (0..5).map(|_| ValkeyServer::start()).collect()
}

fn five_options(servers: &[ValkeyServer]) -> LockerOptions {
    LockerOptions::new(servers.iter().map(ValkeyServer::url))
        .with_key_majority(3)
        .with_key_validity(secs(2))
}

/// Reads `name`'s token from instance `i` (key `i` lives there).
/// The value of the key of `name` that lives on `servers[j]` (five
/// instances, one key each, placed by the engine).
async fn token_on(servers: &[ValkeyServer], j: usize, name: &str) -> Option<String> {
    let options = five_options(servers);
    let i = (0..5)
        .find(|&i| options.node_of_key(i).expect("valid options") == j)
        .expect("one key per instance");
    let admin = servers[j].admin().await;
    let v = admin
        .get::<Option<String>, _>(key(i, name))
        .await
        .ok()
        .flatten();
    let _ = admin.quit().await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_five_two_down_held_third_lost_then_rejoin() {
    init_tracing();
    let mut servers = block_in_place(five);
    let opts = five_options(&servers);
    let a = Locker::connect(opts.clone()).await.expect("connect a");
    let b = Locker::connect(opts).await.expect("connect b");

    measure_acquire(&a, "independent x5").await;
    let admins: Vec<Client> = {
        let mut v = Vec::new();
        for s in &servers {
            v.push(s.admin().await);
        }
        v
    };
    // Keys 0, 1 and 2, each on the instance the engine placed it on.
    let on: Vec<usize> = (0..3)
        .map(|i| {
            five_options(&servers)
                .node_of_key(i)
                .expect("valid options")
        })
        .collect();
    measure_loss(&a, "independent x5", 5, |name| {
        let (admins, on) = (admins.clone(), on.clone());
        async move {
            let (x, y, z) = tokio::join!(
                admins[on[0]].del::<i64, _>(key(0, &name)),
                admins[on[1]].del::<i64, _>(key(1, &name)),
                admins[on[2]].del::<i64, _>(key(2, &name))
            );
            x.expect("DEL");
            y.expect("DEL");
            z.expect("DEL");
        }
    })
    .await;
    for c in admins {
        let _ = c.quit().await;
    }

    let name = unique("five");
    let g = a.lock(&name).await.expect("lock");
    let token = token_on(&servers, 0, &name)
        .await
        .expect("the key on server 0");
    for i in 1..5 {
        assert_eq!(
            token_on(&servers, i, &name).await.as_deref(),
            Some(token.as_str())
        );
    }
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(
        g.watcher(),
        3,
        Probe::new(Layout::Instances(ports), &name, 5, &token),
        stop.clone(),
    );

    // Any two down: still held, through more than a validity.
    servers[3].kill();
    servers[4].kill();
    let t0 = Instant::now();
    while t0.elapsed() < ms(2600) {
        assert!(
            g.is_held(),
            "lost {:?} after two of five instances died: {:?}",
            t0.elapsed(),
            g.lost_reason()
        );
        sleep(ms(20)).await;
    }
    match b.try_lock(&name).await {
        Err(LockError::NotLocked { acquired, .. }) => assert!(acquired < 3),
        other => panic!("b got the lock with 3 of 5 instances holding a's keys: {other:?}"),
    }

    // The third failure: lost() fires within a validity.
    servers[2].kill();
    let t1 = Instant::now();
    let reason = timeout(secs(2) + ms(500), g.lost())
        .await
        .expect("lost() within key_validity + 0.5 s of losing the majority");
    eprintln!(
        "MEASURE independent x5: third instance killed -> lost({reason}) after {:?}",
        t1.elapsed()
    );
    assert!(
        matches!(reason, LostReason::Unreachable | LostReason::Expired),
        "reason {reason:?}"
    );
    let exposure = stop_sampler(&stop, sampler).await;
    eprintln!("independent x5: sampler {exposure:?}");
    assert!(exposure.longest <= GRACE, "exposure {exposure:?}");

    // They come back (empty): a new lock works, and it needs them: with two
    // of the survivors stopped, only the restarted ones make the majority.
    for s in &mut servers[2..] {
        s.restart();
    }
    let t2 = Instant::now();
    let g = timeout(secs(10), a.lock(&unique("five-back")))
        .await
        .expect("lock() hung after the restarts")
        .expect("lock after the restarts");
    let _ = g.release().await;
    servers[0].kill();
    servers[1].kill();
    let rejoined = timeout(secs(10), a.lock(&unique("five-rejoined")))
        .await
        .expect("the restarted instances did not rejoin within 10 s")
        .expect("lock on the three restarted instances");
    eprintln!(
        "independent x5: restarted instances rejoined; lock on them {:?} after the restart",
        t2.elapsed()
    );
    let _ = rejoined.release().await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_restarted_empty_does_not_admit_a_second_client() {
    init_tracing();
    let mut servers = block_in_place(five);
    let opts = five_options(&servers);
    let a = Locker::connect(opts.clone()).await.expect("connect a");
    let b = Locker::connect(opts).await.expect("connect b");
    let name = unique("restart-empty");
    let g = a.lock(&name).await.expect("lock");
    let token = token_on(&servers, 0, &name)
        .await
        .expect("the key on server 0");
    for i in 0..5 {
        assert_eq!(
            token_on(&servers, i, &name).await.as_deref(),
            Some(token.as_str()),
            "the key on server {i} after lock()"
        );
    }

    // One instance restarts empty: a still holds 4 of 5.
    servers[0].restart();
    assert_eq!(
        token_on(&servers, 0, &name).await,
        None,
        "restarted with data"
    );
    match b.try_lock(&name).await {
        Err(LockError::NotLocked {
            acquired,
            held_by_others,
            ..
        }) => {
            eprintln!("independent x5: one restarted empty: b's try_lock got {acquired}/3");
            assert!(acquired <= 1 && held_by_others);
        }
        other => panic!("b got the lock while a holds 4 of 5 keys: {other:?}"),
    }
    // A second one restarts empty: a holds 3 of 5, still a majority.
    servers[1].restart();
    match b.try_lock(&name).await {
        Err(LockError::NotLocked { acquired, .. }) => {
            eprintln!("independent x5: two restarted empty: b's try_lock got {acquired}/3");
            assert!(acquired <= 2);
        }
        other => panic!("b got the lock while a holds 3 of 5 keys: {other:?}"),
    }
    assert!(g.is_held(), "a lost the lock: {:?}", g.lost_reason());

    // a takes the emptied keys back (NX) within an extension or two.
    let back = eventually(secs(4), || {
        let (servers, name, token) = (&servers, &name, &token);
        async move {
            token_on(servers, 0, name).await.as_deref() == Some(token.as_str())
                && token_on(servers, 1, name).await.as_deref() == Some(token.as_str())
        }
    })
    .await;
    assert!(
        back,
        "the keys on the restarted instances were not taken back"
    );
    assert!(g.is_held());
    let _ = g.release().await;
    let g = b.try_lock(&name).await.expect("b after the release");
    let _ = g.release().await;
    a.close().await;
    b.close().await;
}
