//! Direct connections (`LockerOptions::direct_connections`) against a real
//! server: acquisitions go on a connection the caller's runtime drives, and a
//! holder still hears of a loss at once, because that connection's tracking
//! is redirected to the engine's connection, also after the engine's
//! connection is replaced.
//!
//! Every lock here has a validity of 30 s: its first extension (which would
//! also notice a deleted key) comes 15 s after it is taken, so only an
//! invalidation can tell the holder within the 5 s these tests allow.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use support::*;
use valkeylock::{Locker, LockerOptions};

/// The server's clients, each as its `CLIENT LIST` fields.
async fn clients(admin: &Client) -> Vec<HashMap<String, String>> {
    let list: String = admin
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec!["LIST"],
        )
        .await
        .expect("CLIENT LIST");
    list.lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// The id of the connection whose tracking redirects to another, and that
/// other's id (the engine's connection), once the locker's commands take
/// it; the locker takes and releases a lock meanwhile (the first caller
/// opens it).
///
/// Listed is not yet in use: the server lists the connection with its
/// redirect as soon as it has run `CLIENT TRACKING`, and the locker puts
/// it to use only once it has read that command's reply. Until then its
/// commands take the engine's connection, so a caller that counts the
/// direct connection's commands right after it is listed can miss its
/// own (a test of this file failed that way once, in round 0, under the
/// whole suite's load). So the connection is returned once a lock +
/// release has gone on it.
async fn direct_connection(admin: &Client, locker: &Locker) -> (String, String) {
    let warm = unique("direct-warm");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The connections redirected to an engine's, with their command
    // counts when first seen: another locker's may be among them.
    let mut listed: HashMap<(String, String), u64> = HashMap::new();
    loop {
        locker
            .lock(&warm)
            .await
            .expect("lock")
            .release()
            .await
            .expect("release");
        // Redirected to a live connection that tracks for itself (the
        // engine's): a replaced one's may linger a moment.
        let all = clients(admin).await;
        let engines: Vec<&String> = all
            .iter()
            .filter(|c| c.get("redir").is_some_and(|r| r == "0"))
            .map(|c| &c["id"])
            .collect();
        for c in &all {
            let (Some(redir), Some(commands)) = (
                c.get("redir"),
                c.get("tot-cmds").and_then(|n| n.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if !engines.contains(&redir) {
                continue;
            }
            let key = (c["id"].clone(), redir.clone());
            match listed.get(&key) {
                // In use: this lock + release went on it.
                Some(&before) if commands > before => return key,
                Some(_) => {}
                None => {
                    listed.insert(key, commands);
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no direct connection was opened: {:?}",
            clients(admin).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Closes connection `id` from the server's side.
async fn kill(admin: &Client, id: &str) {
    let _: Value = admin
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec!["KILL", "ID", id],
        )
        .await
        .expect("CLIENT KILL");
}

/// Commands the server has run for connection `id`.
async fn commands_of(admin: &Client, id: &str) -> u64 {
    clients(admin)
        .await
        .into_iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c.get("tot-cmds").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("connection {id} is gone"))
}

/// Takes `name` and checks it went on direct connection `direct`, deletes
/// its key from outside, and waits for the holder to hear.
async fn lost_at_once(admin: &Client, locker: &Locker, direct: &str, name: &str) {
    let before = commands_of(admin, direct).await;
    let guard = locker.lock(name).await.expect("lock");
    assert!(
        commands_of(admin, direct).await > before,
        "the acquisition did not go on the direct connection"
    );
    hears_of_delete(admin, &guard, name, Duration::from_secs(5)).await;
}

fn options(server: &ValkeyServer) -> LockerOptions {
    LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_key_validity(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_on_a_direct_connection_hears_of_its_loss_at_once() {
    taken_direct_hears_its_loss(|o| o).await;
}

/// The same with the engine on the application's runtime
/// (`dedicated_runtime` off): its actors and its connection share the
/// workers the callers run on, and a direct connection still saves each
/// call the trip through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_engine_on_the_callers_runtime_a_lock_still_goes_direct() {
    taken_direct_hears_its_loss(|o| o.with_dedicated_runtime(false)).await;
}

/// The same on a current-thread runtime (`#[tokio::test]`'s default, many
/// small services'): the engine, the direct connection and the caller all
/// on one thread.
#[tokio::test]
async fn on_a_current_thread_runtime_with_the_engine_on_it_a_lock_still_goes_direct() {
    taken_direct_hears_its_loss(|o| o.with_dedicated_runtime(false)).await;
}

/// A lock taken on a direct connection hears at once of its key deleted;
/// one released there is free for another locker; closing the lockers
/// closes their direct connections. The lockers' options are `options`'
/// through `with`.
async fn taken_direct_hears_its_loss(with: impl Fn(LockerOptions) -> LockerOptions) {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let options = |server: &ValkeyServer| with(options(server));
    let locker = Locker::connect(options(&server)).await.unwrap();
    let (direct, engine) = direct_connection(&admin, &locker).await;
    assert_ne!(direct, engine);
    lost_at_once(&admin, &locker, &direct, &unique("direct")).await;
    // A release on it, and the name taken again by another locker.
    let name = unique("direct-release");
    locker.lock(&name).await.unwrap().release().await.unwrap();
    let other = Locker::connect(options(&server)).await.unwrap();
    let taken = other.try_lock(&name).await.expect("released");
    taken.release().await.unwrap();
    other.close().await;
    locker.close().await;
    // Closed with their lockers: no connection redirects any more.
    let gone = eventually(Duration::from_secs(5), || async {
        clients(&admin)
            .await
            .iter()
            .all(|c| c.get("redir").is_none_or(|r| r == "-1" || r == "0"))
    })
    .await;
    assert!(
        gone,
        "a direct connection outlived its locker: {:?}",
        clients(&admin).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_engine_reconnects_a_new_direct_connection_redirects_to_its_new_one() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = Locker::connect(options(&server)).await.unwrap();
    let (direct, engine) = direct_connection(&admin, &locker).await;
    kill(&admin, &engine).await;
    // The engine reconnects; the old direct connection, redirected to the
    // killed one, is replaced by one redirected to the new one.
    let ok = eventually(Duration::from_secs(10), || async {
        let _ = locker.try_lock(&unique("direct-after")).await;
        clients(&admin).await.iter().any(|c| {
            c.get("redir")
                .is_some_and(|r| r != "-1" && r != "0" && *r != engine)
        })
    })
    .await;
    assert!(
        ok,
        "no direct connection to the new engine connection: {:?}",
        clients(&admin).await
    );
    let (direct2, engine2) = direct_connection(&admin, &locker).await;
    assert_ne!(engine2, engine);
    assert_ne!(direct2, direct);
    // The one redirected to the killed connection is closed; none is left
    // over beside the new one.
    let single = eventually(Duration::from_secs(5), || async {
        let all = clients(&admin).await;
        let redirected = all
            .iter()
            .filter(|c| c.get("redir").is_some_and(|r| r != "-1" && r != "0"))
            .count();
        redirected == 1
    })
    .await;
    assert!(
        single,
        "stale direct connections: {:?}",
        clients(&admin).await
    );
    lost_at_once(&admin, &locker, &direct2, &unique("direct-again")).await;
    locker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_direct_connection_is_replaced_and_nothing_is_lost() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = Locker::connect(options(&server)).await.unwrap();
    let (direct, _) = direct_connection(&admin, &locker).await;
    kill(&admin, &direct).await;
    // Locks keep working meanwhile (on the engine's connection, or a
    // failed try answered and retried), and a new one opens.
    let (direct2, _) = direct_connection(&admin, &locker).await;
    assert_ne!(direct2, direct);
    lost_at_once(&admin, &locker, &direct2, &unique("direct-replaced")).await;
    locker.close().await;
}

/// The runtime that opened the direct connection is gone; callers on
/// another runtime still lock, and one of them opens a new one.
#[test]
fn a_direct_connection_whose_runtime_ended_is_replaced() {
    init_tracing();
    let server = ValkeyServer::start();
    let first = tokio::runtime::Runtime::new().unwrap();
    let (locker, direct) = first.block_on(async {
        let admin = server.admin().await;
        let locker = Locker::connect(options(&server)).await.unwrap();
        let (direct, _) = direct_connection(&admin, &locker).await;
        (locker, direct)
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let admin = server.admin().await;
        let (direct2, _) = direct_connection(&admin, &locker).await;
        assert_ne!(direct2, direct);
        lost_at_once(&admin, &locker, &direct2, &unique("direct-second")).await;
        locker.close().await;
    });
}

/// With `direct_connections` off every command goes on the engine's
/// connection: no connection redirects its tracking.
#[tokio::test]
async fn off_means_no_direct_connection() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = Locker::connect(options(&server).with_direct_connections(false))
        .await
        .unwrap();
    for _ in 0..20 {
        let g = locker.lock(&unique("direct-off")).await.unwrap();
        g.release().await.unwrap();
    }
    let redirected = clients(&admin)
        .await
        .into_iter()
        .filter(|c| c.get("redir").is_some_and(|r| r != "-1" && r != "0"))
        .count();
    assert_eq!(redirected, 0, "{:?}", clients(&admin).await);
    locker.close().await;
}

/// A caller's own task sends its acquisition and release on the direct
/// connection; dropped while one is out, it hands the command on to a task
/// of its own. So a `lock()` dropped with its acquisition in flight leaves
/// no key held by nobody, and a `release()` dropped with its delete in
/// flight still deletes the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_dropped_while_its_command_is_out_leaves_nothing_behind() {
    use futures_util::FutureExt;
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = Locker::connect(options(&server)).await.unwrap();
    let other = Locker::connect(options(&server)).await.unwrap();
    let (direct, _) = direct_connection(&admin, &locker).await;
    // Rounds whose lock() and release() were dropped with a command out.
    // At least 20 rounds, and more (200 at most) until five of each were:
    // on a loaded machine the reply is often there at the first poll
    // (2 of 20 lock() in one run of 20 rounds beside a whole-suite run).
    let mut dropped = (0, 0);
    let mut rounds = 0;
    for round in 0..200 {
        if round >= 20 && dropped.0 >= 5 && dropped.1 >= 5 {
            break;
        }
        rounds += 1;
        let name = unique("direct-dropped");
        // The name's lock actor is live (it stays a while after a release),
        // so the next request is fed on this task and its acquisition
        // driven here: polled once, it is out on the direct connection.
        locker.lock(&name).await.unwrap().release().await.unwrap();
        let before = commands_of(&admin, &direct).await;
        // One poll sends it and looks for its reply once: on a busy
        // machine the reply can be there already, and then nothing was
        // dropped this round.
        match locker.lock(&name).now_or_never() {
            None => dropped.0 += 1,
            Some(answered) => answered.expect("lock").release().await.expect("release"),
        }
        let sent = eventually(Duration::from_secs(5), || async {
            commands_of(&admin, &direct).await > before
        })
        .await;
        if !sent {
            // Say which connections there were (a direct connection
            // replaced, its engine's reconnected, the command on the
            // engine's): this failed once in a whole-suite run, before
            // `direct_connection` waited for its connection to be in use.
            let seen: Vec<String> = clients(&admin)
                .await
                .iter()
                .map(|c| {
                    let field = |k: &str| c.get(k).map_or("?", String::as_str);
                    format!(
                        "id={} redir={} tot-cmds={} cmd={} age={}",
                        field("id"),
                        field("redir"),
                        field("tot-cmds"),
                        field("cmd"),
                        field("age")
                    )
                })
                .collect();
            panic!(
                "round {round}: the acquisition did not go direct (connection {direct}, \
                 {before} commands before); connections: {seen:#?}"
            );
        }
        let free = eventually(Duration::from_secs(5), || async {
            existing_keys(&admin, "valkeylock", &name, 1).await == 0
        })
        .await;
        assert!(free, "round {round}: a dropped lock() left its key");
        let taken = other.try_lock(&name).await.expect("free for another");
        taken.release().await.unwrap();

        // A release dropped with its delete out.
        let guard = locker.lock(&name).await.unwrap();
        match guard.release().now_or_never() {
            None => dropped.1 += 1,
            Some(answered) => answered.expect("release"),
        }
        let deleted = eventually(Duration::from_secs(5), || async {
            existing_keys(&admin, "valkeylock", &name, 1).await == 0
        })
        .await;
        assert!(deleted, "round {round}: a dropped release() left its key");
        let taken = other.try_lock(&name).await.expect("free after the release");
        taken.release().await.unwrap();
    }
    assert!(
        dropped.0 >= 5 && dropped.1 >= 5,
        "too few rounds dropped a caller with its command out: {dropped:?} of {rounds}"
    );
    other.close().await;
    locker.close().await;
}

/// The server keeps what a connection read for that connection only: once a
/// direct connection is gone, the keys acquired on it send their
/// invalidations nowhere. So a lock taken on a direct connection that then
/// closes must still hear of its loss at once (its locker re-checks its keys
/// on the engine's connection), not only at its next extension 15 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_direct_connection_closed_still_hears_of_its_loss_at_once() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let locker = Locker::connect(options(&server)).await.unwrap();
    let (direct, _) = direct_connection(&admin, &locker).await;
    let name = unique("direct-closed");
    let before = commands_of(&admin, &direct).await;
    let guard = locker.lock(&name).await.expect("lock");
    assert!(
        commands_of(&admin, &direct).await > before,
        "the acquisition did not go on the direct connection"
    );
    kill(&admin, &direct).await;
    let gone = eventually(Duration::from_secs(5), || async {
        clients(&admin).await.iter().all(|c| c["id"] != direct)
    })
    .await;
    assert!(gone, "the killed connection is still listed");
    // Time for the re-check to read the key on the engine's connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        guard.is_held(),
        "lost without a cause: {:?}",
        guard.lost_reason()
    );
    hears_of_delete(&admin, &guard, &name, Duration::from_secs(5)).await;
    locker.close().await;
}

/// The arguments of every command the server logged since `SLOWLOG RESET`
/// (with `slowlog-log-slower-than 0`, every command but those run inside
/// scripts).
async fn logged(admin: &Client) -> Vec<Vec<String>> {
    let log: Value = admin
        .custom(
            CustomCommand::new_static("SLOWLOG", ClusterHash::FirstKey, false),
            vec!["GET", "-1"],
        )
        .await
        .expect("SLOWLOG GET");
    let Value::Array(entries) = log else {
        panic!("SLOWLOG GET: {log:?}");
    };
    entries
        .into_iter()
        .filter_map(|entry| match entry {
            Value::Array(mut fields) if fields.len() > 3 => match fields.swap_remove(3) {
                Value::Array(args) => Some(args.iter().filter_map(|a| a.as_string()).collect()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whether a command `logged` is an acquisition: the acquire script with
/// an `NX` mode, or a free key's `SET NX` sent as a plain command.
fn is_acquisition(args: &[String]) -> bool {
    args.first()
        .is_some_and(|c| c.eq_ignore_ascii_case("evalsha") || c.eq_ignore_ascii_case("set"))
        && args.iter().any(|a| a == "NX")
}

/// Whether a command `logged` is a delete: a script call without an `NX`
/// mode (here, only the compare-and-delete runs one).
fn is_delete(args: &[String]) -> bool {
    args.first()
        .is_some_and(|c| c.eq_ignore_ascii_case("evalsha"))
        && !args.iter().any(|a| a == "NX")
}

/// Every command each server runs from now on goes to its `SLOWLOG`, for
/// `logged` to read.
async fn log_every_command(admin: &Client) {
    for (cmd, args) in [
        ("CONFIG", vec!["SET", "slowlog-log-slower-than", "0"]),
        ("CONFIG", vec!["SET", "slowlog-max-len", "100000"]),
        ("SLOWLOG", vec!["RESET"]),
    ] {
        let _: Value = admin
            .custom(
                CustomCommand::new_static(cmd, ClusterHash::FirstKey, false),
                args,
            )
            .await
            .expect(cmd);
    }
}

/// A loop of `lock()` and a dropped guard: each acquisition is sent right
/// behind the delete before it, without waiting for its reply (a chain, see
/// README "A release nobody waits for"). On the one connection both take,
/// the delete must be written first, although the dropped guard's delete
/// runs on a task of its own; and the acquisition must take that
/// connection even while a check of the key is out on the engine's (the
/// engine's connection hears of our deletes). Otherwise the acquisition
/// finds our own old key, fails, and waits to be woken by the delete's
/// reply: one more acquisition script per lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_lock_and_a_dropped_guard_writes_each_delete_before_the_next_acquisition() {
    chain_writes_each_delete_first(|o| o).await;
}

/// The same with the engine's actors on the callers' runtime
/// (`dedicated_runtime` off), where a command a lock's actor makes and one
/// a caller makes run on the same workers: only the caller's is handed to
/// its connection at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_engine_on_the_callers_runtime_each_delete_is_still_written_first() {
    chain_writes_each_delete_first(|o| o.with_dedicated_runtime(false)).await;
}

/// The loop of `lock()` and a dropped guard, with `options`' options
/// through `with`.
async fn chain_writes_each_delete_first(with: impl Fn(LockerOptions) -> LockerOptions) {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let options = |server: &ValkeyServer| with(options(server));
    let locker = Locker::connect(options(&server)).await.unwrap();
    direct_connection(&admin, &locker).await;
    let name = unique("direct-chain");
    drop(locker.lock(&name).await.unwrap());
    let free = || async { existing_keys(&admin, "valkeylock", &name, 1).await == 0 };
    assert!(eventually(Duration::from_secs(5), free).await);
    log_every_command(&admin).await;
    let n = 300;
    for _ in 0..n {
        drop(locker.lock(&name).await.expect("lock"));
    }
    assert!(
        eventually(Duration::from_secs(5), free).await,
        "the last delete"
    );
    let acquisitions = logged(&admin)
        .await
        .iter()
        .filter(|args| is_acquisition(args))
        .count();
    assert!(
        acquisitions >= n,
        "{acquisitions} acquisitions logged for {n} locks"
    );
    let failed = acquisitions - n;
    assert!(
        failed <= n / 20,
        "{failed} of {n} acquisitions failed (found our own key before its delete)"
    );
    locker.close().await;
}

/// Such a loop wins every race after its own delete, so it is bounded like
/// local hand-overs: another locker (as another process would) still gets
/// the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_lock_and_a_dropped_guard_lets_another_locker_in() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let looping = Locker::connect(options(&server)).await.unwrap();
    let other = Locker::connect(options(&server)).await.unwrap();
    direct_connection(&admin, &looping).await;
    let name = unique("direct-chain-fair");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ops = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let task = {
        let (looping, name, stop, ops) = (looping.clone(), name.clone(), stop.clone(), ops.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(looping.lock(&name).await.expect("lock"));
                ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let going = eventually(Duration::from_secs(10), || async {
        ops.load(std::sync::atomic::Ordering::Relaxed) >= 200
    })
    .await;
    assert!(going, "the loop did not get going");
    let got = tokio::time::timeout(Duration::from_secs(10), other.lock(&name)).await;
    let guard = got
        .expect("another locker never got the lock from the loop within 10 s")
        .expect("lock");
    // The loop made progress meanwhile, and waits now.
    let seen = ops.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(ops.load(std::sync::atomic::Ordering::Relaxed) <= seen + 1);
    assert!(guard.is_held());
    guard.release().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    task.await.unwrap();
    other.close().await;
    looping.close().await;
}

/// A guard held by a task of a runtime that shuts down is dropped with the
/// task, on that runtime, while it shuts down: its delete is sent from
/// there (and polled once before `drop` returns) without a panic, and the
/// name is free for another locker at the latest when the key expires.
#[test]
fn a_guard_dropped_as_its_runtime_shuts_down_frees_the_name() {
    init_tracing();
    let server = ValkeyServer::start();
    let options = LockerOptions::new([server.url()])
        .with_key_majority(1)
        .with_key_validity(Duration::from_secs(3));
    let main = tokio::runtime::Runtime::new().unwrap();
    let locker = main.block_on(async { Locker::connect(options).await.unwrap() });
    let name = unique("direct-shutdown");
    for round in 0..3 {
        let holder = tokio::runtime::Runtime::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (locker, name) = (locker.clone(), name.clone());
            holder.spawn(async move {
                // The name's actor is live from the second round on: the
                // acquisition and the delete go direct, from this runtime.
                let guard = locker.lock(&name).await.expect("lock");
                tx.send(()).unwrap();
                std::future::pending::<()>().await;
                drop(guard);
            });
        }
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("round {round}: not acquired"));
        drop(holder);
        main.block_on(async {
            let other = tokio::time::timeout(Duration::from_secs(10), locker.lock(&name)).await;
            other
                .unwrap_or_else(|_| panic!("round {round}: the name stayed taken"))
                .expect("lock")
                .release()
                .await
                .unwrap();
        });
    }
    main.block_on(locker.close());
}

/// Three nodes, majority 2: `lock()` returns with two keys won, and a lock
/// released at once finds the third key's acquisition still out. Its delete
/// goes right behind that acquisition, on the direct connection it took,
/// and spares a second delete when the acquisition's late "ours" comes.
/// Sent on the engine's connection instead, the delete could overtake the
/// acquisition and find nothing, and the late "ours" then needed a delete
/// of its own: in a loop of lock and release, 0.2 to 0.9 more script calls
/// per lock on each node (counted by hand before this was built), and the
/// next acquisition there could find the old key and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_released_at_once_on_three_nodes_runs_one_acquisition_and_one_delete_per_node() {
    init_tracing();
    let servers: Vec<ValkeyServer> = (0..3).map(|_| ValkeyServer::start()).collect();
    let mut admins = Vec::new();
    for s in &servers {
        admins.push(s.admin().await);
    }
    let locker = Locker::connect(
        LockerOptions::new(servers.iter().map(|s| s.url()))
            .with_key_majority(2)
            .with_key_validity(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    for admin in &admins {
        direct_connection(admin, &locker).await;
    }
    let name = unique("direct-three");
    let free = || async {
        let mut left = 0;
        for admin in &admins {
            left += existing_keys(admin, "valkeylock", &name, 3).await;
        }
        left == 0
    };
    for admin in &admins {
        log_every_command(admin).await;
    }
    let n: usize = 300;
    for _ in 0..n {
        let guard = locker.lock(&name).await.expect("lock");
        guard.release().await.expect("release");
    }
    assert!(
        eventually(Duration::from_secs(5), free).await,
        "keys left after the last release"
    );
    for (node, admin) in admins.iter().enumerate() {
        let logged = logged(admin).await;
        let acquisitions = logged.iter().filter(|args| is_acquisition(args)).count();
        let deletes = logged.iter().filter(|args| is_delete(args)).count();
        let calls = acquisitions + deletes;
        assert!(
            acquisitions >= n && deletes >= n,
            "node {node}: {acquisitions} acquisitions and {deletes} deletes for {n} locks"
        );
        let extra = calls - 2 * n;
        assert!(
            extra <= n / 20,
            "node {node}: {extra} acquisitions and deletes beyond one of each per lock, for {n} locks"
        );
    }
    locker.close().await;
}

/// Two lockers take one name in turn, each in a loop of lock and release:
/// the waiter woken by the other's delete retries from the engine's thread,
/// and that retry goes on its direct connection too. Sent on the engine's
/// connection, as it was before, its read of the key had that connection
/// track the key as well; the locker's own later delete, written on the
/// direct connection, then came back to it as an invalidation (`NOLOOP`
/// spares only the connection that writes), and the next lock of the loop
/// checked its key for nothing (a script call on the engine's connection,
/// which read the key there again). With the retry kept there, every round
/// of this test ran 1.8 to 3.2 commands per lock + release on the engines'
/// connections, 0.1 to 0.4 of them checks.
///
/// A retry goes direct only while the connection's runtime answers the
/// engine's commands promptly (`Pace`); on a loaded machine a round may
/// find it counted busy, and its retries on the engines' connections. So
/// rounds run until one whose retries all went direct, for 30 s at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiters_retry_goes_direct_and_its_own_deletes_bring_no_checks() {
    retries_go_direct(|o| o).await;
}

/// The same with the engine on the callers' runtime (`dedicated_runtime`
/// off): the retry is made in a lock actor's handler there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_engine_on_the_callers_runtime_a_waiters_retry_still_goes_direct() {
    retries_go_direct(|o| o.with_dedicated_runtime(false)).await;
}

/// Two lockers with `options`' options through `with` take one name in
/// turn, in rounds, until a round with enough retries runs (nearly) no
/// command on the engines' connections.
async fn retries_go_direct(with: impl Fn(LockerOptions) -> LockerOptions) {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let mut lockers = Vec::new();
    let mut engines = Vec::new();
    for _ in 0..2 {
        let locker = Locker::connect(with(options(&server))).await.unwrap();
        let (_, engine) = direct_connection(&admin, &locker).await;
        lockers.push(locker);
        engines.push(engine);
    }
    let name = unique("direct-retry");
    let n: u64 = 200;
    let ops = n * lockers.len() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut rounds = Vec::new();
    loop {
        let before = command_calls(&admin).await;
        let mut on_engine = 0;
        for e in &engines {
            on_engine += commands_of(&admin, e).await;
        }
        let start = Arc::new(tokio::sync::Barrier::new(lockers.len()));
        let mut loops = Vec::new();
        for locker in &lockers {
            let (locker, name, start) = (locker.clone(), name.clone(), start.clone());
            loops.push(tokio::spawn(async move {
                start.wait().await;
                for _ in 0..n {
                    let guard = locker.lock(&name).await.expect("lock");
                    guard.release().await.expect("release");
                }
            }));
        }
        for l in loops {
            l.await.expect("loop");
        }
        let after = command_calls(&admin).await;
        let mut on_engine_after = 0;
        for e in &engines {
            on_engine_after += commands_of(&admin, e).await;
        }
        let on_engine = on_engine_after - on_engine;
        let calls = |c: &str| calls_since(&before, &after, c);
        // An acquisition runs one `EXISTS` (of the fair queue) and one
        // `GET` (as plain commands on a direct connection, or in the acquire
        // script), a release one `GET` and one `DEL` (its own key, here
        // always), a check one `GET`: the `GET`s beyond those are checks.
        let (acquisitions, deletes) = (calls("exists"), calls("del"));
        assert_eq!(deletes, ops, "one delete per lock + release");
        let checks = calls("get") - acquisitions - deletes;
        let retries = acquisitions - ops;
        rounds.push((retries, on_engine, checks));
        // Checks run on the engine's connection: a round with (nearly)
        // nothing there had (nearly) none.
        if retries >= ops / 10 && on_engine <= ops / 50 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no round of {ops} locks had its retries go direct: (retries, commands on the engines' connections, checks) per round {rounds:?}"
        );
        // Past the runtime's busy spell (`Pace::BACKOFF`).
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    for locker in lockers {
        locker.close().await;
    }
}
