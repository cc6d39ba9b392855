//! Bad input and security (issue #3): what a caller or another client can
//! throw at a locker from outside.
//!
//! - property tests: lock names and options (from arbitrary JSON) never
//!   panic and fail only with the documented errors;
//! - a password, and an ACL user limited to `~{prefix}:*` and the minimal set
//!   of commands the lock needs (found by `acl_minimal_set_discovery`);
//!   wrong credentials and missing permissions fail at connect with a clear
//!   error;
//! - a client that does not know the token can neither extend nor release
//!   someone else's lock (the engine's own scripts, captured on the wire and
//!   replayed with a wrong token).
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use proptest::prelude::*;
use support::proxy::*;
use support::*;
use tokio::time::{sleep, timeout, Instant};
use valkeylock::{ConnectionErrorKind, Error, Locker, LockerOptions, LostReason, MAX_NAME_LEN};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

const ADMIN_PASS: &str = "adm1n-pass";

/// The commands a locker needs with default options (found by
/// `acl_minimal_set_discovery`): everything else can be denied. (`HELLO`,
/// `AUTH` and `QUIT` need no permission.)
const MINIMAL: &[&str] = &[
    "+evalsha",
    "+script|load",
    "+client|tracking",
    "+get",
    "+set",
    "+pexpire",
    "+pttl",
    "+del",
    // The starvation bound's look at a key's fair queue (`{key}:q`).
    "+exists",
    // The fair queues themselves (fair queueing, and waiters that waited a
    // validity): without them a lock is acquired without its queue.
    "+time",
    "+zadd",
    "+zrem",
    "+zrange",
    "+zrangebyscore",
    "+zremrangebyscore",
    "+zscore",
    "+pexpireat",
];

/// Added to [`MINIMAL`] with `fencing` on.
const FENCING: &[&str] = &["+incr"];

/// Added to [`MINIMAL`] with `handover` on, with the channel pattern
/// `&{prefix}:handover:*`: the claims (a hash beside each key) and their
/// taking back, the release's message, the subscription and its
/// confirmation.
const HANDOVER: &[&str] = &[
    "+hset",
    "+hget",
    "+hdel",
    "+hgetall",
    "+publish",
    "+subscribe",
    "+client|info",
];

/// Probes the client library sends at connect and copes without: denied,
/// they only show up in `ACL LOG`.
const PROBES: &[&str] = &["client|id", "info"];

/// Creates ACL user `user` with password `pass`, keys `~{prefix}:*` and the
/// fair queues' `~{{prefix}:*`, no channels, and exactly `commands`.
async fn set_user(port: u16, user: &str, pass: &str, prefix: &str, commands: &[&str]) {
    let pattern = format!("~{prefix}:*");
    let queues = format!("~{{{prefix}:*");
    let password = format!(">{pass}");
    let mut args = vec![
        "ACL",
        "SETUSER",
        user,
        "reset",
        "on",
        &password,
        &pattern,
        &queues,
        "resetchannels",
        "-@all",
    ];
    args.extend_from_slice(commands);
    let r = command_auth(port, &[ADMIN_PASS], &args)
        .await
        .expect("ACL SETUSER");
    assert_eq!(r.text().as_deref(), Some("OK"), "ACL SETUSER: {r:?}");
}

/// Denials the server logged since the last reset, as text.
async fn acl_denials(port: u16) -> Vec<String> {
    let r = command_auth(port, &[ADMIN_PASS], &["ACL", "LOG"])
        .await
        .expect("ACL LOG");
    let mut out = Vec::new();
    if let Resp::Array(Some(entries)) = r {
        for e in entries {
            if let Resp::Array(Some(fields)) = e {
                let texts: Vec<String> = fields.iter().filter_map(Resp::text).collect();
                out.push(texts.join(" "));
            }
        }
    }
    out
}

/// Denials the server logged since the last reset, but for the client
/// library's [`PROBES`].
async fn denials_beyond_probes(port: u16) -> Vec<String> {
    acl_denials(port)
        .await
        .into_iter()
        .filter(|d| !PROBES.iter().any(|p| d.contains(&format!("object {p} "))))
        .collect()
}

/// Everything a lock does with default options: connect, a waiter queued
/// behind a holder, extensions, a shortened TTL noticed and repaired, a
/// release that wakes the waiter, a loss by deletion noticed, `try_lock`,
/// `force_lock`, and close (deletes). `Err` says what failed.
async fn full_flow(
    urls: Vec<String>,
    prefix: &str,
    port: u16,
    fencing: bool,
) -> Result<(), String> {
    let opts = || {
        LockerOptions::new(urls.clone())
            .with_key_majority(1)
            .with_key_prefix(prefix)
            .with_key_validity(ms(1000))
            .with_connect_timeout(ms(1000))
            .with_fencing(fencing)
    };
    let a = Locker::connect(opts())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let b = Locker::connect(opts())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = unique("acl");
    let key = format!("{prefix}:0:{name}");
    let g = timeout(ms(2000), a.lock(&name))
        .await
        .map_err(|_| "lock() hung")?
        .map_err(|e| format!("lock: {e}"))?;
    match b.try_lock(&name).await {
        Err(Error::NotLocked { .. }) => {}
        other => return Err(format!("try_lock on a held lock: {other:?}")),
    }
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move { timeout(ms(3000), b.lock(&name)).await })
    };
    // Extensions, and a TTL cut short by someone (repaired after a verify).
    sleep(ms(700)).await;
    let _ = command_auth(port, &[ADMIN_PASS], &["PEXPIRE", &key, "300"]).await;
    sleep(ms(800)).await;
    if !g.is_held() {
        return Err(format!("lost while extending: {:?}", g.lost_reason()));
    }
    let t = Instant::now();
    let _ = g.release().await;
    let g2 = waiter
        .await
        .map_err(|e| format!("join: {e}"))?
        .map_err(|_| "waiter not woken by the release")?
        .map_err(|e| format!("waiter: {e}"))?;
    let woken = t.elapsed();
    if woken > ms(500) {
        return Err(format!(
            "waiter woken only {woken:?} after the release (no invalidation?)"
        ));
    }
    // A deletion by someone else is noticed (invalidation + verify).
    let _ = command_auth(port, &[ADMIN_PASS], &["DEL", &key]).await;
    match timeout(ms(600), g2.lost()).await {
        Ok(LostReason::Deleted) => {}
        other => return Err(format!("deletion not noticed: {other:?}")),
    }
    let f = a
        .force_lock(&name)
        .await
        .map_err(|e| format!("force_lock: {e}"))?;
    drop(f);
    a.close().await;
    b.close().await;
    let left = command_auth(port, &[ADMIN_PASS], &["EXISTS", &key])
        .await
        .map_err(|e| e.to_string())?;
    if left.int() != Some(0) {
        return Err("close() left the key behind".into());
    }
    Ok(())
}

fn secured_server() -> ValkeyServer {
    ValkeyServer::start_with(&["--requirepass", ADMIN_PASS])
}

#[test]
fn password_auth_and_wrong_credentials() {
    runtime().block_on(async {
        init_tracing();
        let server = secured_server();
        let prefix = unique("pw");
        let good = format!("redis://:{ADMIN_PASS}@127.0.0.1:{}", server.port);
        full_flow(vec![good], &prefix, server.port, false)
            .await
            .expect("a locker with the right password");
        let cases = [
            (
                format!("redis://:wrong@127.0.0.1:{}", server.port),
                "wrong password",
                format!("redis://:***@127.0.0.1:{}", server.port),
            ),
            (
                format!("redis://127.0.0.1:{}", server.port),
                "no password",
                format!("redis://127.0.0.1:{}", server.port),
            ),
            (
                format!("redis://nobody:{ADMIN_PASS}@127.0.0.1:{}", server.port),
                "unknown user",
                format!("redis://nobody:***@127.0.0.1:{}", server.port),
            ),
        ];
        for (url, what, redacted) in cases {
            let t = Instant::now();
            let r = Locker::connect(
                LockerOptions::new([url])
                    .with_key_majority(1)
                    .with_connect_timeout(ms(1500)),
            )
            .await;
            let elapsed = t.elapsed();
            match r {
                Err(e @ Error::Connection { .. }) => {
                    let shown = with_causes(&e);
                    eprintln!("{what}: connect failed in {elapsed:?}: {shown}");
                    let Error::Connection { kind, node, .. } = &e else {
                        unreachable!()
                    };
                    assert_eq!(
                        *kind,
                        ConnectionErrorKind::Authentication,
                        "{what}: {shown}"
                    );
                    assert_eq!(
                        node.as_deref(),
                        Some(redacted.as_str()),
                        "{what}: the node, without its password"
                    );
                    let m = shown.to_ascii_uppercase();
                    assert!(
                        m.contains("WRONGPASS") || m.contains("NOAUTH"),
                        "{what}: the server's reply is not in the error's causes: {shown}"
                    );
                    assert!(
                        !format!("{e:?}").contains(ADMIN_PASS)
                            && !shown.contains(ADMIN_PASS)
                            && !shown.contains("wrong@"),
                        "{what}: the error leaks the password: {shown}"
                    );
                }
                other => panic!("{what}: expected Error::Connection, got {other:?}"),
            }
            assert!(
                elapsed < ms(1500),
                "{what}: took {elapsed:?}, not a fast failure"
            );
        }
    });
}

/// A user with the command set from before the fair queues (no `EXISTS`,
/// no sorted sets, no `TIME`) still locks with fair queueing on: the queue
/// is refused, and the acquisition is made again without it.
#[test]
fn acl_user_without_the_queue_commands_still_locks() {
    runtime().block_on(async {
        init_tracing();
        let server = secured_server();
        let prefix = unique("aclold");
        let before_queues = &MINIMAL[..8];
        assert_eq!(before_queues.last(), Some(&"+del"));
        set_user(server.port, "old", "0ld", &prefix, before_queues).await;
        let url = format!("redis://old:0ld@127.0.0.1:{}", server.port);
        let locker = Locker::connect(
            LockerOptions::new([url])
                .with_key_majority(1)
                .with_key_prefix(&prefix)
                .with_fair_queueing(true),
        )
        .await
        .expect("connect");
        for _ in 0..3 {
            let g = timeout(ms(3000), locker.lock("x"))
                .await
                .expect("lock() hung")
                .expect("a fair lock without the queue's commands");
            assert!(g.is_held());
            g.release().await.expect("release");
        }
        locker.close().await;
    });
}

/// Added to [`MINIMAL`] and [`FENCING`] for leader election: the log's
/// trimming (`ZCARD`, `ZREMRANGEBYRANK`).
const ELECTION: &[&str] = &["+zcard", "+zremrangebyrank"];

/// An election needs the fencing set (its term is a fencing token) and
/// the log's two commands; with them nothing is denied, read-write locks
/// included. Without the log's
/// commands, `campaign` fails with `Unavailable` (and the lock it won is
/// released), never a hang.
/// A user with the minimal set, [`HANDOVER`] and the hand-over channels
/// hands the lock over (the waiter is granted on the message, long before
/// its fallback run) and is denied nothing; without them, a locker with
/// `handover` does not connect, rather than leave claims nobody hears.
#[test]
fn acl_user_for_handover() {
    runtime().block_on(async {
        init_tracing();
        let server = secured_server();
        let prefix = unique("aclhand");
        let channels = format!("&{prefix}:handover:*");
        let full: Vec<&str> = MINIMAL
            .iter()
            .chain(HANDOVER)
            .copied()
            .chain([channels.as_str()])
            .collect();
        set_user(server.port, "hander", "h4nd", &prefix, &full).await;
        let _ = command_auth(server.port, &[ADMIN_PASS], &["ACL", "LOG", "RESET"]).await;
        let connect = |user: &str, pass: &str| {
            Locker::connect(
                LockerOptions::new([format!("redis://{user}:{pass}@127.0.0.1:{}", server.port)])
                    .with_key_majority(1)
                    .with_key_prefix(&prefix)
                    .with_key_validity(ms(10_000))
                    .with_try_next_after(ms(2_000))
                    .with_handover(true),
            )
        };
        let a = connect("hander", "h4nd").await.expect("connect");
        let b = connect("hander", "h4nd").await.expect("connect");
        let held = a.lock("h").await.expect("a locks");
        let waiter = tokio::spawn({
            let b = b.clone();
            async move {
                let g = b.lock("h").await.expect("b locks");
                (g, Instant::now())
            }
        });
        let claim = format!("{{{prefix}:0:h}}:c");
        let claims_come_to = |n: &'static str| {
            let claim = &claim;
            eventually(ms(5000), move || async move {
                command_auth(server.port, &[ADMIN_PASS], &["HLEN", claim])
                    .await
                    .is_ok_and(|r| r.text().as_deref() == Some(n))
            })
        };
        assert!(claims_come_to("1").await, "b's claim is there");
        // `inspect` lists it: the set above reads who waits too.
        let info = a.inspect("h").await.expect("inspect");
        assert_eq!(info.waiting.len(), 1, "{info:?}");
        assert_eq!(info.waiting_unreadable, None);
        let released = Instant::now();
        held.release().await.expect("a releases");
        let (g, granted) = timeout(ms(5000), waiter)
            .await
            .expect("b is granted")
            .expect("b's task");
        assert!(
            granted - released < ms(1000),
            "b granted {:?} after the release: not by the hand-over",
            granted - released
        );
        // A waiter of a's that gives up takes its claim back.
        let gives_up = tokio::spawn({
            let a = a.clone();
            async move { a.lock("h").await.map(|_| ()) }
        });
        assert!(claims_come_to("1").await, "a's claim is there");
        gives_up.abort();
        assert!(claims_come_to("0").await, "a's claim is taken back");
        g.release().await.unwrap();
        let denied = denials_beyond_probes(server.port).await;
        assert!(denied.is_empty(), "denied commands: {denied:#?}");
        a.close().await;
        b.close().await;

        set_user(server.port, "plain", "pl41n", &prefix, MINIMAL).await;
        let r = timeout(ms(10_000), connect("plain", "pl41n"))
            .await
            .expect("connect hung");
        assert!(
            r.is_err(),
            "a locker with hand-over connected without SUBSCRIBE"
        );
    });
}

#[test]
fn acl_user_for_elections() {
    runtime().block_on(async {
        init_tracing();
        let server = secured_server();
        let prefix = unique("aclelect");
        let full: Vec<&str> = MINIMAL
            .iter()
            .chain(FENCING)
            .chain(ELECTION)
            .copied()
            .collect();
        set_user(server.port, "elector", "el3ct", &prefix, &full).await;
        let _ = command_auth(server.port, &[ADMIN_PASS], &["ACL", "LOG", "RESET"]).await;
        let connect = |user: &str, pass: &str| {
            Locker::connect(
                LockerOptions::new([format!("redis://{user}:{pass}@127.0.0.1:{}", server.port)])
                    .with_key_majority(1)
                    .with_key_prefix(&prefix),
            )
        };
        let locker = connect("elector", "el3ct").await.expect("connect");
        let election = locker.election("e").unwrap();
        let mut observer = election.observe().unwrap();
        for round in 0..3 {
            let leadership = timeout(ms(3000), election.campaign(&format!("v{round}")))
                .await
                .expect("campaign hung")
                .expect("leadership with the election set");
            let seen = timeout(ms(3000), observer.next())
                .await
                .expect("observer hung")
                .unwrap();
            assert_eq!(seen.term, leadership.term());
            assert_eq!(election.leader().await.unwrap(), Some(seen));
            leadership.resign().await.unwrap();
        }
        // Read-write locks need no more than the fencing set.
        let rw = locker.rw_lock("rw").unwrap();
        for _ in 0..2 {
            let (r1, r2) = (rw.read().await.unwrap(), rw.read().await.unwrap());
            assert!(matches!(rw.try_write().await, Err(Error::NotLocked { .. })));
            drop((r1, r2));
            let w = timeout(ms(3000), rw.write())
                .await
                .expect("write hung")
                .unwrap();
            assert!(w.fencing_token() > 0);
            w.release().await.unwrap();
        }
        let denied = denials_beyond_probes(server.port).await;
        assert!(denied.is_empty(), "denied commands: {denied:#?}");
        locker.close().await;

        let without: Vec<&str> = MINIMAL.iter().chain(FENCING).copied().collect();
        set_user(server.port, "nolog", "n0log", &prefix, &without).await;
        let locker = connect("nolog", "n0log").await.expect("connect");
        let r = timeout(ms(3000), locker.election("f").unwrap().campaign("v"))
            .await
            .expect("campaign hung");
        assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
        let free = timeout(ms(3000), locker.try_lock("f:election"))
            .await
            .expect("try_lock hung");
        assert!(free.is_ok(), "the election's lock was released: {free:?}");
        locker.close().await;
    });
}

#[test]
fn acl_user_with_the_minimal_command_set() {
    runtime().block_on(async {
        init_tracing();
        let server = secured_server();
        let prefix = unique("aclmin");
        set_user(server.port, "locker", "l0cker", &prefix, MINIMAL).await;
        let _ = command_auth(server.port, &[ADMIN_PASS], &["ACL", "LOG", "RESET"]).await;
        let url = format!("redis://locker:l0cker@127.0.0.1:{}", server.port);
        full_flow(vec![url.clone()], &prefix, server.port, false)
            .await
            .expect("a locker limited to the minimal set");
        // Fencing tokens (one instance: a counter raised by the acquire
        // script) also need INCR.
        let fenced: Vec<&str> = MINIMAL.iter().chain(FENCING).copied().collect();
        set_user(server.port, "fencer", "f3ncer", &prefix, &fenced).await;
        full_flow(
            vec![format!("redis://fencer:f3ncer@127.0.0.1:{}", server.port)],
            &prefix,
            server.port,
            true,
        )
        .await
        .expect("a fencing locker limited to the minimal set");
        let denied = denials_beyond_probes(server.port).await;
        assert!(denied.is_empty(), "denied commands: {denied:#?}");
        eprintln!("ACL user `~{prefix}:*` with {} works", MINIMAL.join(" "));

        // `inspect` also reads the hand-over claims (`+hgetall`, not in the
        // minimal set): it still reads the keys, and says that who waits
        // could not be read.
        let looker = Locker::connect(
            LockerOptions::new([url.clone()])
                .with_key_majority(1)
                .with_key_prefix(&prefix),
        )
        .await
        .expect("connect");
        let info = looker.inspect("looked-at").await.expect("inspect");
        assert!(info.is_free(), "{info:?}");
        assert!(
            info.waiting_unreadable
                .as_deref()
                .is_some_and(|why| why.contains("hgetall")),
            "{info:?}"
        );
        looker.close().await;

        // Keys outside its pattern: a clear error on the first attempt,
        // never a panic or a hang.
        let other = Locker::connect(
            LockerOptions::new([url.clone()])
                .with_key_majority(1)
                .with_key_prefix("elsewhere"),
        )
        .await
        .expect("connect (permissions are only checked on keys)");
        let r = timeout(ms(2000), other.try_lock("x"))
            .await
            .expect("try_lock hung");
        eprintln!("a prefix outside the ACL key pattern: {r:?}");
        assert!(
            matches!(
                r,
                Err(Error::NotLocked {
                    acquired: 0,
                    held_by_others: false,
                    ..
                })
            ),
            "{r:?}"
        );
        other.close().await;

        // Without CLIENT TRACKING the locker cannot work as designed: refused
        // at connect, naming the permission.
        set_user(
            server.port,
            "notrack",
            "n0track",
            &prefix,
            &MINIMAL
                .iter()
                .copied()
                .filter(|c| *c != "+client|tracking")
                .collect::<Vec<_>>(),
        )
        .await;
        let t = Instant::now();
        let r = Locker::connect(
            LockerOptions::new([format!("redis://notrack:n0track@127.0.0.1:{}", server.port)])
                .with_key_majority(1)
                .with_key_prefix(&prefix),
        )
        .await;
        match r {
            Err(e @ Error::Connection { .. }) => {
                let shown = with_causes(&e);
                eprintln!(
                    "without +client|tracking: refused in {:?}: {shown}",
                    t.elapsed()
                );
                assert!(
                    matches!(
                        e,
                        Error::Connection {
                            kind: ConnectionErrorKind::Permission,
                            ..
                        }
                    ),
                    "{e:?}"
                );
                assert!(shown.to_ascii_uppercase().contains("NOPERM"), "{shown}");
            }
            other => panic!("expected a connection error, got {other:?}"),
        }
        // With disable_cache, tracking is not needed.
        let polling = Locker::connect(
            LockerOptions::new([format!("redis://notrack:n0track@127.0.0.1:{}", server.port)])
                .with_key_majority(1)
                .with_key_prefix(&prefix)
                .with_disable_cache(true),
        )
        .await
        .expect("disable_cache needs no CLIENT TRACKING");
        let g = polling.lock(&unique("poll")).await.expect("lock");
        let _ = g.release().await;
        polling.close().await;
    });
}

/// Finds which commands of a generous candidate set the full flow needs:
/// removes each in turn and sees whether the flow still passes with no ACL
/// denial. Slow (~1 min); runs with `VALKEYLOCK_ACL_DISCOVER=1`.
#[test]
fn acl_minimal_set_discovery() {
    if std::env::var("VALKEYLOCK_ACL_DISCOVER").is_err() {
        return;
    }
    runtime().block_on(async {
        let server = secured_server();
        let candidates = [
            "+hello",
            "+ping",
            "+quit",
            "+eval",
            "+evalsha",
            "+script|load",
            "+script|exists",
            "+client|tracking",
            "+client|setname",
            "+client|setinfo",
            "+client|id",
            "+select",
            "+get",
            "+set",
            "+pexpire",
            "+pexpireat",
            "+pttl",
            "+del",
            "+info",
            "+incr",
        ];
        let mut needed = Vec::new();
        for (i, skip) in candidates.iter().enumerate() {
            let prefix = unique("disc");
            let set: Vec<&str> = candidates.iter().copied().filter(|c| c != skip).collect();
            let user = format!("u{i}");
            set_user(server.port, &user, "pw", &prefix, &set).await;
            let _ = command_auth(server.port, &[ADMIN_PASS], &["ACL", "LOG", "RESET"]).await;
            let url = format!("redis://{user}:pw@127.0.0.1:{}", server.port);
            let r = full_flow(vec![url.clone()], &prefix, server.port, false).await;
            let r = match r {
                Ok(()) => full_flow(vec![url], &prefix, server.port, true)
                    .await
                    .map_err(|e| format!("with fencing: {e}")),
                e => e,
            };
            let denied: Vec<String> = acl_denials(server.port)
                .await
                .into_iter()
                .filter(|d| !PROBES.iter().any(|p| d.contains(&format!("object {p} "))))
                .map(|d| d.chars().take(120).collect())
                .collect();
            let ok = r.is_ok() && denied.is_empty();
            eprintln!(
                "without {skip:<18}: {}",
                if ok {
                    "works".to_owned()
                } else {
                    format!("FAILS {r:?} {denied:?}")
                }
            );
            if !ok {
                needed.push(*skip);
            }
        }
        eprintln!("needed: {}", needed.join(" "));
    });
}

/// The commands a locker sent (recorded by the proxy's tap), as text.
fn captured(tap: &[u8]) -> Vec<Vec<String>> {
    parse_commands(tap)
        .into_iter()
        .map(|c| {
            c.iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .collect()
}

/// A command's name, with the subcommand for containers.
fn command_name(args: &[String]) -> String {
    let mut label = args
        .first()
        .map(|a| a.to_ascii_uppercase())
        .unwrap_or_default();
    if let Some(sub) = args
        .get(1)
        .filter(|_| matches!(label.as_str(), "SCRIPT" | "CLIENT"))
    {
        label = format!("{label} {}", sub.to_ascii_uppercase());
    }
    label
}

/// A lock token as the engine writes it: 48 hex digits, `F` first when
/// forced, then the locker's fingerprint (`:m<key_majority>n<nodes>`).
fn is_token(s: &str) -> bool {
    let s = s.strip_prefix('F').unwrap_or(s);
    let Some((hex, fingerprint)) = s.split_once(':') else {
        return false;
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let fingerprint_ok = fingerprint
        .strip_prefix('m')
        .and_then(|r| r.split_once('n'))
        .is_some_and(|(m, n)| digits(m) && digits(n));
    hex.len() == 48 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && fingerprint_ok
}

async fn key_state(a: &mut RawConn, key: &str) -> (Option<String>, Option<i64>) {
    let v = a.cmd(&["GET", key]).await.expect("GET").text();
    let e = a
        .cmd(&["PEXPIRETIME", key])
        .await
        .expect("PEXPIRETIME")
        .int();
    (v, e)
}

/// A client without the token cannot extend or release a lock: every script
/// call a locker made (acquire, extend, release, whatever their layout) and
/// every plain `SET NX` (a free key's acquisition on a direct connection),
/// captured on the wire, is replayed by another client against a held lock
/// with the token replaced by a wrong one; the keys stay exactly as they
/// were and the holder notices nothing.
#[test]
fn wrong_token_cannot_extend_or_release() {
    runtime().block_on(async {
        init_tracing();
        let server = ValkeyServer::start();
        let proxy = Proxy::start(server.port).await;
        proxy.start_tap();
        let prefix = unique("tok");
        let opts = |url: String| {
            LockerOptions::new([url])
                .with_key_majority(1)
                .with_key_prefix(&prefix)
                .with_key_validity(ms(1000))
        };
        let locker = Locker::connect(opts(proxy.url())).await.expect("connect");
        let (held, other) = (unique("held"), unique("other"));
        // Another lock goes through acquire, extensions and release, so that
        // every kind of script call is on the wire.
        let g_other = locker.lock(&other).await.expect("lock");
        let g = locker.lock(&held).await.expect("lock");
        sleep(ms(700)).await;
        let _ = g_other.release().await;
        sleep(ms(50)).await;
        let commands = captured(&proxy.tapped());
        let mut names: Vec<String> = commands.iter().map(|c| command_name(c)).collect();
        names.dedup();
        names.sort();
        names.dedup();
        eprintln!("commands a locker sent: {}", names.join(", "));
        let mut admin = RawConn::connect(server.port, &[]).await.expect("admin");
        // Make sure every script is in the server's cache (they are, unless
        // the server was flushed) so that EVALSHA runs them.
        for c in commands.iter().filter(|c| command_name(c) == "SCRIPT LOAD") {
            admin.cmd(&["SCRIPT", "LOAD", &c[2]]).await.expect("SCRIPT LOAD");
        }
        let held_keys: Vec<String> = (0..1).map(|i| format!("{prefix}:{i}:{held}")).collect();
        let mut before = Vec::new();
        for k in &held_keys {
            before.push(key_state(&mut admin, k).await);
        }
        assert!(before.iter().all(|s| s.0.as_deref().is_some_and(is_token)), "{before:?}");
        let wrong_tokens = |real: &str| {
            vec![
                "0".repeat(real.len()),
                real[..8].to_owned(),
                format!("{real}x"),
                real.to_uppercase(),
                // The random part with another fingerprint.
                format!("{}:m9n9", real.rsplit_once(':').map_or(real, |(hex, _)| hex)),
                String::new(),
            ]
        };
        let mut replayed = 0;
        let mut kinds = std::collections::BTreeSet::new();
        // Script calls, and the free keys' plain `SET NX` of a direct
        // connection.
        let replayable = |c: &&Vec<String>| matches!(command_name(c).as_str(), "EVALSHA" | "SET");
        for c in commands.iter().filter(replayable) {
            let Some(real) = c.iter().find(|a| is_token(a)).cloned() else {
                continue;
            };
            for wrong in wrong_tokens(&real) {
                let args: Vec<String> = c
                    .iter()
                    .map(|a| {
                        if is_token(a) {
                            wrong.clone()
                        } else if a.starts_with(&format!("{prefix}:")) && a.ends_with(&other) {
                            a.replace(&other, &held)
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                let refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
                let r = admin
                    .cmd_bytes(&refs, Duration::from_secs(5))
                    .await
                    .expect("a replay");
                assert!(!r.is_error(), "replay failed: {r:?} for {args:?}");
                replayed += 1;
                kinds.insert(match command_name(c).as_str() {
                    "SET" => "SET".to_owned(),
                    _ => c[1].clone(),
                });
                for (k, b) in held_keys.iter().zip(&before) {
                    assert_eq!(
                        &key_state(&mut admin, k).await,
                        b,
                        "a call with a wrong token changed {k}: {args:?} → {r:?}"
                    );
                }
            }
        }
        assert!(kinds.len() >= 2, "too few kinds of script calls captured: {kinds:?}");
        assert!(g.is_held() && g.lost_reason().is_none(), "the holder was disturbed");
        eprintln!(
            "{replayed} script calls ({} scripts) replayed with wrong tokens: keys unchanged, holder unaffected",
            kinds.len()
        );
        let _ = g.release().await;
        locker.close().await;
    });
}

/// A third party turns one lock's key into a hash: every script that reads
/// it now fails with `WRONGTYPE`. Both locks' keys live on the one node and
/// are extended in the same batch (one script call); only the lock whose key
/// was spoiled may suffer. Before per-key isolation the whole batch failed
/// and every lock of the node lapsed.
#[test]
fn a_key_of_another_type_fails_only_its_own_lock() {
    runtime().block_on(async {
        init_tracing();
        let server = ValkeyServer::start();
        let validity = ms(1000);
        let locker = Locker::connect(
            LockerOptions::new([server.url()])
                .with_key_majority(1)
                .with_key_validity(validity),
        )
        .await
        .expect("connect");
        let (name_a, name_b) = (unique("wrongtype-a"), unique("wrongtype-b"));
        let a = locker.lock(&name_a).await.expect("lock A");
        let b = locker.lock(&name_b).await.expect("lock B");
        let key_a = format!("valkeylock:0:{name_a}");
        // DEL and HSET in one step, so the holder cannot retake the key as a
        // string in between.
        let r = command_auth(
            server.port,
            &[],
            &[
                "EVAL",
                "redis.call('DEL', KEYS[1]) return redis.call('HSET', KEYS[1], 'f', 'v')",
                "1",
                &key_a,
            ],
        )
        .await
        .expect("turn A's key into a hash");
        assert_eq!(r.int(), Some(1), "HSET: {r:?}");
        sleep(validity * 3).await;
        assert!(
            b.is_held(),
            "B was lost ({:?}) because another lock's key on its node had the wrong type",
            b.lost_reason()
        );
        assert!(!a.is_held(), "A is still held although its key is a hash");
        eprintln!("A lost: {:?}; B held", a.lost_reason());
        let kind = command_auth(server.port, &[], &["TYPE", &key_a])
            .await
            .expect("TYPE");
        assert_eq!(kind.text().as_deref(), Some("hash"), "A's key: {kind:?}");
        let _ = b.release().await;
        drop(a);
        locker.close().await;
    });
}

// ===== property tests =====

/// The documented rule for names (README, "Lock names"), written out
/// independently of the engine: non-empty, at most 1024 bytes, and with
/// `key_majority > 1` no `{hash tag}` that would put every key in one slot.
fn name_is_valid(name: &str, majority: usize) -> bool {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return false;
    }
    if majority > 1 {
        // Keys are `prefix:i:name` with a prefix without braces: the tag is
        // the text between the first `{` of the name and the next `}`.
        if let Some(open) = name.find('{') {
            if let Some(close) = name[open + 1..].find('}') {
                if close > 0 {
                    return false;
                }
            }
        }
    }
    true
}

fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[:{}a-c ]{0,12}",
        "\\PC{0,20}",
        proptest::collection::vec(any::<char>(), 0..30).prop_map(String::from_iter),
        (MAX_NAME_LEN - 3..MAX_NAME_LEN + 4).prop_map(|n| "é".repeat(n / 2) + &"x".repeat(n % 2)),
        (1000usize..5000).prop_map(|n| ":".repeat(n)),
        Just(String::new()),
        Just("{}".to_owned()),
        Just("{a}".to_owned()),
        Just("a{}b{c}".to_owned()),
        Just("\u{0}\u{1}\u{7f}".to_owned()),
    ]
}

#[test]
fn names_never_panic_and_fail_as_documented() {
    let rt = runtime();
    let server = ValkeyServer::start();
    let prefix = unique("names");
    let (l1, l2) = rt.block_on(async {
        let mk = |m: usize| {
            Locker::connect(
                LockerOptions::new([server.url()])
                    .with_key_majority(m)
                    .with_key_prefix(&prefix),
            )
        };
        (mk(1).await.expect("connect"), mk(2).await.expect("connect"))
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&names(), |name| {
        for (locker, m) in [(&l1, 1usize), (&l2, 2usize)] {
            let r = rt.block_on(async { timeout(ms(3000), locker.try_lock(&name)).await });
            let r = r.map_err(|_| TestCaseError::fail("try_lock hung"))?;
            let valid = name_is_valid(&name, m);
            match r {
                Ok(g) => {
                    prop_assert!(valid, "accepted an invalid name {name:?} (m={m})");
                    prop_assert!(g.is_held());
                    prop_assert_eq!(g.name(), name.as_str());
                    let _ = rt.block_on(g.release());
                }
                Err(Error::InvalidName {
                    name: shown,
                    reason,
                }) => {
                    prop_assert!(!valid, "rejected a valid name {name:?} (m={m}): {reason}");
                    prop_assert!(shown.len() <= 80, "error echoes a huge name");
                }
                Err(e) => prop_assert!(false, "unexpected error for {name:?} (m={m}): {e}"),
            }
        }
        Ok(())
    });
    rt.block_on(async {
        l1.close().await;
        l2.close().await;
    });
    result.unwrap();
}

const FIELDS: &[&str] = &[
    "nodes",
    "key_prefix",
    "key_majority",
    "key_validity",
    "extend_interval",
    "try_next_after",
    "clock_drift",
    "no_loop_tracking",
    "fallback_set_px",
    "disable_cache",
    "connect_timeout",
    "local_handover_limit",
    "fencing",
    "event_buffer",
];

fn json_scalar() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u32..100).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        "[0-9.]{0,8}(ns|us|µs|ms|s|sec|m|min|h|d|)".prop_map(Value::from),
        "([0-9]{1,3}(ms|s)){1,3}".prop_map(Value::from),
        "[0-9]{15,30}(s|h)".prop_map(Value::from),
        "(redis|valkey|rediss|http|)://([a-z%0-9]{0,4}(:[a-z%0-9]{0,4})?@)?(\\[::1\\]|127\\.0\\.0\\.1|[a-z]{0,5})(:[0-9]{0,6})?(/[0-9a-z]{0,4})?[?#]?"
            .prop_map(Value::from),
        "[a-z{}:]{0,8}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json_scalar().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects with mostly known fields, values of any JSON type.
fn options_json() -> impl Strategy<Value = serde_json::Value> {
    let field = prop_oneof![
        9 => proptest::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ];
    let value = prop_oneof![
        4 => json_scalar(),
        2 => proptest::collection::vec(json_scalar(), 0..4).prop_map(serde_json::Value::from),
        1 => json_value(),
    ];
    proptest::collection::btree_map(field, value, 0..10)
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn options_from_arbitrary_json_never_panic(v in options_json()) {
        let text = v.to_string();
        if let Ok(o) = serde_json::from_str::<LockerOptions>(&text) {
            match o.validate() {
                Ok(()) => {
                    // Valid options survive a round trip unchanged.
                    let back: LockerOptions = serde_json::from_str(
                        &serde_json::to_string(&o).expect("serialize"),
                    ).expect("deserialize what was serialized");
                    prop_assert_eq!(&back, &o);
                    prop_assert!(back.validate().is_ok());
                }
                Err(Error::InvalidOptions { field, reason }) => {
                    prop_assert!(FIELDS.contains(&field), "unknown field name {field}");
                    prop_assert!(!reason.is_empty());
                }
                Err(e) => prop_assert!(false, "validate returned {e:?}"),
            }
        }
    }

    #[test]
    fn arbitrary_json_text_never_panics(text in "\\PC{0,64}", v in json_value()) {
        let _ = serde_json::from_str::<LockerOptions>(&text);
        if let Ok(o) = serde_json::from_value::<LockerOptions>(v) {
            let _ = o.validate();
        }
    }

    #[test]
    fn node_urls_never_panic(
        text in "\\PC{0,40}|(redis|valkey|rediss)(-cluster|-sentinel)?://[a-z:@%/?=&,\\[\\]0-9.#]{0,30}"
    ) {
        match valkeylock::NodeAddr::parse(&text) {
            Ok(a) => {
                prop_assert!(!a.hosts.is_empty());
                let _ = (a.placement_key(), a.display(), a.redacted_url());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn durations_never_panic(text in "\\PC{0,24}|[0-9.]{1,30}(ns|us|ms|s|m|h){0,2}") {
        if let Ok(d) = valkeylock::parse_duration(&text) {
            let shown = valkeylock::format_duration(d);
            prop_assert!(valkeylock::parse_duration(&shown).is_ok(), "{text:?} → {shown:?}");
        }
    }
}
