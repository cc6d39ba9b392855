//! The `valkeylock` command-line tool, run as a real process against real
//! `valkey-server`s: exclusion between `run`s, a lost lock stopping the
//! program, exit codes, `status`, `release --force`, fencing tokens, and the
//! flags > environment > config file precedence.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use support::*;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;
use tokio::time::Instant;

const EXIT_UNAVAILABLE: i32 = 69;
const EXIT_WAIT_TIMEOUT: i32 = 73;
const EXIT_LOST: i32 = 75;

/// The tool with a clean environment (no inherited `VALKEYLOCK_*`), standard
/// input not a terminal, and `VALKEYLOCK_NODES` pointing at `url`.
fn tool(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_valkeylock"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VALKEYLOCK_") {
            c.env_remove(k);
        }
    }
    c.env("VALKEYLOCK_NODES", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn output(mut c: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("the tool hangs")
        .expect("run the tool")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("valkeylock-cli-{}", unique(name)));
    // A run of an earlier test process with the same process id (ids are
    // reused) left its files there: a log appended to would hold its lines
    // too.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `sh -c` script that appends `start <ns>` and `end <ns>` lines to `log`
/// around a sleep.
fn recorder(log: &Path, sleep: &str) -> Vec<String> {
    let log = log.display();
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo \"start $(date +%s%N) $VALKEYLOCK_FENCING_TOKEN\" >> {log}; sleep {sleep}; echo \"end $(date +%s%N)\" >> {log}"
        ),
    ]
}

/// Two processes each `run` three programs under one name, concurrently: the
/// programs' [start, end] intervals never overlap, and their fencing tokens
/// strictly increase in the order the grants were made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_never_overlap() {
    let server = ValkeyServer::start();
    let name = unique("overlap");
    let dir = scratch("overlap");
    let log = dir.join("log");
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (url, name, log) = (server.url(), name.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let mut c = tool(&url);
                c.args(["run", &name, "--"]).args(recorder(&log, "0.15"));
                let out = output(c).await;
                assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let events: Vec<(&str, u128)> = lines
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap(), w.next().unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(events.len(), 12, "{lines}");
    // Appends from non-overlapping programs alternate start, end, start...
    // with non-decreasing times.
    for (i, pair) in events.chunks(2).enumerate() {
        assert_eq!((pair[0].0, pair[1].0), ("start", "end"), "run {i}: {lines}");
        assert!(pair[0].1 <= pair[1].1, "{lines}");
    }
    for w in events.windows(2) {
        assert!(w[0].1 <= w[1].1, "overlap or clock step: {lines}");
    }
    // Fencing tokens across these competing processes, in grant order,
    // strictly increase.
    let tokens: Vec<u64> = lines
        .lines()
        .filter(|l| l.starts_with("start"))
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), 6, "{lines}");
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "tokens {tokens:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `valkeylock run` with its defaults and a library locker with its defaults
/// exclude each other (both use `key_majority` 2, three keys on one node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_library_defaults_exclude_each_other() {
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let name = unique("defaults");
    let mut c = tool(&server.url());
    c.args(["run", &name, "--", "sleep", "3"]);
    let holder = c.spawn().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            existing_keys(&admin, "valkeylock", &name, 3).await >= 1
        })
        .await,
        "the tool never took the lock"
    );
    let locker = valkeylock::Locker::connect(valkeylock::LockerOptions::new([server.url()]))
        .await
        .expect("connect");
    let r = locker.try_lock(&name).await;
    assert!(
        matches!(r, Err(valkeylock::Error::NotLocked { .. })),
        "the library took a lock the tool holds: {r:?}"
    );
    drop(r);
    let out = holder.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // And the other way round: the tool waits for the library's holder.
    let g = locker.lock(&name).await.expect("lock");
    let mut c = tool(&server.url());
    c.args(["run", &name, "--wait-timeout", "0", "--", "echo", "ran"]);
    let out = output(c).await;
    assert_eq!(
        out.status.code(),
        Some(EXIT_WAIT_TIMEOUT),
        "{}",
        text(&out.stderr)
    );
    let _ = g.release().await;
    locker.close().await;
}

/// Keys deleted behind the holder's back: the program gets SIGTERM (and
/// SIGKILL after --grace when it ignores SIGTERM), its children go too, and
/// the tool exits 75.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lock_stops_the_program() {
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let dir = scratch("lost");
    for ignore_term in [false, true] {
        let name = unique("lost");
        let marks = dir.join(format!("marks-{ignore_term}"));
        let trap = if ignore_term { "trap '' TERM; " } else { "" };
        let mut c = tool(&server.url());
        c.args(["run", &name, "--grace", "500ms", "--", "sh", "-c"])
            .arg(format!(
                "{trap}echo started >> {m}; sleep 30; echo finished >> {m}",
                m = marks.display()
            ));
        let child = c.spawn().unwrap();
        assert!(
            eventually(Duration::from_secs(10), || async {
                std::fs::read_to_string(&marks).is_ok_and(|s| s.contains("started"))
            })
            .await
        );
        // Wait for all three keys (`key_majority` 2 by default), then delete them.
        let keys: Vec<String> = (0..3).map(|i| format!("valkeylock:{i}:{name}")).collect();
        assert!(
            eventually(Duration::from_secs(5), || async {
                existing_keys(&admin, "valkeylock", &name, 3).await == 3
            })
            .await
        );
        let t = Instant::now();
        let deleted: i64 = fred::prelude::KeysInterface::del(&admin, keys)
            .await
            .unwrap();
        assert_eq!(deleted, 3);
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .expect("the program was not stopped")
            .unwrap();
        let stopped = t.elapsed();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_LOST), "{stderr}");
        assert!(stderr.contains("lost lock"), "{stderr}");
        assert!(stderr.contains("deleted"), "{stderr}");
        if ignore_term {
            assert!(stderr.contains("SIGKILL"), "{stderr}");
            assert!(stopped >= Duration::from_millis(500), "{stopped:?}");
        }
        assert!(stopped < Duration::from_secs(5), "{stopped:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = std::fs::read_to_string(&marks).unwrap();
        assert!(!m.contains("finished"), "{m}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `kill -9` of the tool does not leave its program running (Linux): the
/// kernel kills the program with the tool, so a second `run` cannot start
/// the same program beside it once the lock expires.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_dies_with_the_tool() {
    let server = ValkeyServer::start();
    let dir = scratch("pdeathsig");
    let pidfile = dir.join("pid");
    let name = unique("pdeathsig");
    let mut c = tool(&server.url());
    c.args(["run", &name, "--validity", "1s", "--", "sh", "-c"])
        .arg(format!("echo $$ > {}; exec sleep 30", pidfile.display()));
    let mut child = c.spawn().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
        })
        .await,
        "the program never started"
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Alive: not gone and not a zombie (state is the field after `(comm)`).
    let alive = move || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    };
    assert!(alive(), "the program is not running");
    child.start_kill().unwrap(); // SIGKILL
    let _ = child.wait().await;
    let died = eventually(Duration::from_secs(10), || async { !alive() }).await;
    assert!(died, "the program outlived the tool killed with SIGKILL");
    let _ = std::fs::remove_dir_all(dir);
}

/// `-v` logs the engine's events to stderr; without it (or `RUST_LOG`)
/// nothing is logged; `RUST_LOG` decides when set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_logs_to_stderr() {
    let server = ValkeyServer::start();
    let name = unique("verbose");
    let mut quiet = tool(&server.url());
    quiet
        .env_remove("RUST_LOG")
        .args(["run", &name, "--", "true"]);
    let out = output(quiet).await;
    assert!(
        !text(&out.stderr).contains("node connected"),
        "{}",
        text(&out.stderr)
    );
    let mut loud = tool(&server.url());
    loud.env_remove("RUST_LOG")
        .args(["-v", "run", &name, "--", "true"]);
    let out = output(loud).await;
    let stderr = text(&out.stderr);
    assert!(stderr.contains("node connected"), "{stderr}");
    assert!(stderr.contains("INFO"), "{stderr}");
    let mut by_env = tool(&server.url());
    by_env
        .env("RUST_LOG", "valkeylock_actors=info")
        .args(["run", &name, "--", "true"]);
    let out = output(by_env).await;
    assert!(
        text(&out.stderr).contains("node connected"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    let url = "redis://127.0.0.1:1";
    for args in [
        &["run"][..],
        &["run", "n"],
        &["frobnicate"],
        &["--majority", "many", "status", "n"],
        &["run", "n", "--wait-timeout", "5 lightyears", "--", "true"],
        &["release", "n", "--yes"],
        &["--majority", "0", "status", "n"],
        &["--validity", "1ms", "run", "n", "--", "true"],
        &["--config", "/nonexistent/valkeylock.toml", "status", "n"],
    ] {
        let mut c = tool(url);
        c.args(args);
        let out = output(c).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}");
    }
    let mut c = tool(url);
    c.args(["--majority", "0", "status", "n"]);
    let stderr = text(&output(c).await.stderr);
    assert!(stderr.contains("invalid option `key_majority`"), "{stderr}");
}

/// Nothing listens on the port: a clear message, exit 69, and the program
/// does not run.
#[tokio::test]
async fn unreachable_valkey() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let dir = scratch("unreachable");
    let ran = dir.join("ran");
    let mut c = tool(&url);
    c.args(["run", "n", "--", "touch"]).arg(&ran);
    let out = output(c).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_UNAVAILABLE), "{stderr}");
    assert!(stderr.contains("cannot connect to Valkey"), "{stderr}");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
    assert!(!ran.exists());
    for sub in [&["status", "n"][..], &["release", "--force", "--yes", "n"]] {
        let mut c = tool(&url);
        c.args(sub);
        let out = output(c).await;
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(EXIT_UNAVAILABLE),
            "{sub:?}: {stderr}"
        );
        assert!(stderr.contains("cannot connect to Valkey"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `status` while a `run` holds the lock (three keys on one node with
/// `--majority 2`, the default), and after; a key written with another
/// `key_majority` is pointed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_held_and_not_held() {
    let server = ValkeyServer::start();
    let name = unique("status");
    let status = || {
        let mut c = tool(&server.url());
        c.args(["--majority", "2", "status", &name]);
        output(c)
    };
    let out = status().await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(": not held"), "{stdout}");
    assert!(stdout.contains("fencing counter"), "{stdout}");

    let mut c = tool(&server.url());
    c.args(["--majority", "2", "run", &name, "--", "sh", "-c"])
        .arg("echo $VALKEYLOCK_FENCING_TOKEN; sleep 4");
    let holder = c.spawn().unwrap();
    let mut held = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.is_none() && Instant::now() < deadline {
        let out = status().await;
        let stdout = text(&out.stdout);
        // Held once 2 keys are ours; wait for the third too (set in parallel),
        // and for the fencing counter, raised once the majority is won (a
        // look in between sees the keys and no counter yet).
        let fenced = !stdout.contains(&format!("fencing counter valkeylock:fence:{name}: absent"));
        if out.status.code() == Some(0) && stdout.matches(": present, ttl ").count() == 3 && fenced
        {
            held = Some(stdout);
        }
    }
    let stdout = held.expect("status never said held");
    assert!(stdout.contains(": held by token"), "{stdout}");
    assert_eq!(stdout.matches(": present, ttl ").count(), 3, "{stdout}");
    for i in 0..3 {
        assert!(stdout.contains(&format!("valkeylock:{i}:{name} on node 0")));
    }
    assert!(
        stdout.contains("all present keys belong to token"),
        "{stdout}"
    );
    assert!(!stdout.contains("written with"), "{stdout}");
    // Asked with another key_majority: the holder's configuration is shown.
    let mut c = tool(&server.url());
    c.args(["--majority", "1", "status", &name]);
    let other = text(&output(c).await.stdout);
    assert!(
        other.contains("(written with m2n1: key_majority and node count differ from m1n1)"),
        "{other}"
    );
    let out = holder.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The counter is the token the program was given.
    let token = text(&out.stdout).trim().to_owned();
    assert!(
        stdout.contains(&format!(
            "fencing counter valkeylock:fence:{name}: {token} (node 0)"
        )),
        "{token}: {stdout}"
    );
    let out = status().await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains(": not held"));
}

/// `status` lists who waits: a waiter of a locker with hand-over, by its
/// claim, in the text and in the JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_who_waits() {
    let server = ValkeyServer::start();
    let name = unique("status-waiting");
    let connect = || {
        valkeylock::Locker::connect(
            valkeylock::LockerOptions::new([server.url()])
                .with_key_majority(1)
                .with_handover(true),
        )
    };
    let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
    let held = a.lock(&name).await.unwrap();
    let waits = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move { b.lock(&name).await.unwrap() }
    });
    let status = |json: bool| {
        let mut c = tool(&server.url());
        c.args(["--majority", "1", "status"]);
        if json {
            c.arg("--json");
        }
        c.arg(&name);
        async { text(&output(c).await.stdout) }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut listed = None;
    while listed.is_none() && Instant::now() < deadline {
        let stdout = status(false).await;
        if stdout.contains("waiting, longest first:") {
            listed = Some(stdout);
        }
    }
    let stdout = listed.expect("status never listed the waiter");
    assert!(
        stdout.contains("(hand-over claim beside 1 of 1 keys): waited "),
        "{stdout}"
    );
    assert!(stdout.contains(" unless refreshed"), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&status(true).await).unwrap();
    let waiting = doc["waiting"].as_array().expect("a list");
    assert_eq!(waiting.len(), 1, "{doc}");
    assert_eq!(waiting[0]["how"], "handover_claim", "{doc}");
    assert_eq!(waiting[0]["keys"], 1, "{doc}");
    assert!(waiting[0]["waited_ms"].is_u64(), "{doc}");
    assert!(waiting[0]["lapses_in_ms"].is_u64(), "{doc}");
    assert!(doc["waiting_unreadable"].is_null(), "{doc}");
    held.release().await.unwrap();
    let g = tokio::time::timeout(Duration::from_secs(10), waits)
        .await
        .unwrap()
        .unwrap();
    g.release().await.unwrap();
    a.close().await;
    b.close().await;
}

/// `status --json`: one JSON document with the state, the keys, the fencing
/// counter and the nodes' health; free / held / a node down, with the exit
/// codes of the text form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json() {
    let s0 = ValkeyServer::start();
    let s1 = ValkeyServer::start();
    let mut s2 = ValkeyServer::start();
    let urls = format!("{},{},{}", s0.url(), s1.url(), s2.url());
    let name = unique("json");
    let status = || {
        let mut c = tool(&urls);
        c.args(["status", "--json", &name]);
        async {
            let out = output(c).await;
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
            (out.status.code(), doc)
        }
    };
    let (code, doc) = status().await;
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["state"], "free");
    assert_eq!(doc["name"], name.as_str());
    assert_eq!(
        (doc["needed"].as_u64(), doc["total"].as_u64()),
        (Some(2), Some(3))
    );
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k["status"] == "absent"), "{doc}");
    assert_eq!(doc["nodes"].as_array().unwrap().len(), 3);
    assert!(doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["connected"] == true));

    let holder = valkeylock::Locker::connect(
        valkeylock::LockerOptions::new([s0.url(), s1.url(), s2.url()]).with_fencing(true),
    )
    .await
    .unwrap();
    let guard = holder.lock(&name).await.unwrap();
    let (code, doc) = status().await;
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["state"], "held");
    assert_eq!(doc["ours"], false);
    assert_eq!(doc["owner_keys"], 3, "{doc}");
    let owner = doc["owner"].as_str().unwrap().to_owned();
    assert_eq!(owner.len(), 8);
    assert!(doc["expires_in_ms"].as_u64().is_some_and(|ms| ms <= 5000));
    for k in doc["keys"].as_array().unwrap() {
        assert_eq!(k["status"], "present", "{doc}");
        assert_eq!(k["owner"], owner.as_str());
        assert_eq!(k["written_with"], "m2n3");
        assert!(k["ttl_ms"].as_u64().is_some_and(|t| t > 0 && t <= 5000));
        let node = k["node"].as_u64().unwrap() as usize;
        assert_eq!(k["address"], doc["nodes"][node]["address"]);
    }
    let counters: Vec<u64> = doc["fencing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["value"].as_u64().unwrap())
        .collect();
    assert_eq!(counters.iter().max(), Some(&guard.fencing_token()), "{doc}");

    // One node down: its key unknown, its health down; still held (2 of 3).
    s2.kill();
    let (code, doc) = status().await;
    assert_eq!(code, Some(0), "{doc}");
    let down: Vec<&serde_json::Value> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["status"] == "unknown")
        .collect();
    assert_eq!(down.len(), 1, "{doc}");
    let node = down[0]["node"].as_u64().unwrap() as usize;
    assert_eq!(doc["nodes"][node]["connected"], false, "{doc}");
    assert!(doc["nodes"][node]["last_error"].is_string(), "{doc}");
    // The key on the dead node cannot be deleted: it is left to expire.
    let _ = guard.release().await;
    let (code, doc) = status().await;
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["state"], "free");
    holder.close().await;
}

/// `release --force --yes` deletes every key (the holder is stopped, exit
/// 75) and keeps the fencing counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_force_deletes_keys() {
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let name = unique("release");
    let mut c = tool(&server.url());
    c.args(["--majority", "2", "run", &name, "--", "sleep", "30"]);
    let holder = c.spawn().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            existing_keys(&admin, "valkeylock", &name, 3).await == 3
        })
        .await
    );
    let mut c = tool(&server.url());
    c.args(["--majority", "2", "release", "--force", "--yes", &name]);
    let out = output(c).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("deleted 3 of 3 keys"), "{stdout}");
    let out = tokio::time::timeout(Duration::from_secs(10), holder.wait_with_output())
        .await
        .expect("holder not stopped")
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_LOST), "{}", text(&out.stderr));
    assert_eq!(existing_keys(&admin, "valkeylock", &name, 3).await, 0);
    let fence: Option<u64> =
        fred::prelude::KeysInterface::get(&admin, format!("valkeylock:fence:{name}"))
            .await
            .unwrap();
    assert!(fence.is_some_and(|f| f >= 1), "{fence:?}");

    // Standard input is not a terminal here, so --yes is not needed.
    let mut c = tool(&server.url());
    c.args(["release", "--force", &name]);
    let out = output(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("deleted 0 of 3 keys"));
}

/// Consecutive runs see strictly increasing `VALKEYLOCK_FENCING_TOKEN`s, and
/// `VALKEYLOCK_NAME`; the program's exit code (or 128 + signal) comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_and_exit_codes() {
    let server = ValkeyServer::start();
    let name = unique("fence");
    let mut last = 0u64;
    for _ in 0..4 {
        let mut c = tool(&server.url());
        c.args([
            "run",
            &name,
            "--",
            "sh",
            "-c",
            "echo $VALKEYLOCK_FENCING_TOKEN $VALKEYLOCK_NAME",
        ]);
        let out = output(c).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let mut w = stdout.split_whitespace();
        let token: u64 = w.next().unwrap().parse().unwrap();
        assert_eq!(w.next(), Some(name.as_str()));
        assert!(token > last, "{token} after {last}");
        last = token;
    }
    for (script, code) in [("exit 3", 3), ("kill -9 $$", 128 + 9), ("true", 0)] {
        let mut c = tool(&server.url());
        c.args(["run", &name, "--", "sh", "-c", script]);
        assert_eq!(output(c).await.status.code(), Some(code), "{script}");
    }
    let mut c = tool(&server.url());
    c.args(["run", &name, "--", "/nonexistent/program"]);
    assert_eq!(output(c).await.status.code(), Some(127));
}

/// `--wait-timeout` while another `run` holds the lock: exit 73, the program
/// does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout() {
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let name = unique("timeout");
    let mut c = tool(&server.url());
    c.args(["run", &name, "--", "sleep", "3"]);
    let holder = c.spawn().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            existing_keys(&admin, "valkeylock", &name, 3).await == 3
        })
        .await
    );
    for timeout in ["300ms", "0"] {
        let t = Instant::now();
        let mut c = tool(&server.url());
        c.args(["run", &name, "--wait-timeout", timeout, "--", "echo", "ran"]);
        let out = output(c).await;
        assert_eq!(
            out.status.code(),
            Some(EXIT_WAIT_TIMEOUT),
            "{}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).is_empty());
        assert!(text(&out.stderr).contains("--wait-timeout"));
        assert!(t.elapsed() < Duration::from_secs(3));
    }
    drop(holder);
}

/// `run --permits 2`: five runs started together, at most two programs at
/// once (and two do run together), each on slot 0 or 1; `--permits 0` is a
/// usage error.
/// `run --fair`: programs waiting in separate processes run in the order
/// they started waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fair_serves_processes_in_arrival_order() {
    let server = ValkeyServer::start();
    let name = unique("fair");
    let dir = scratch("fair");
    let log = dir.join("log");
    let mut holder = tool(&server.url());
    holder.args(["run", "--fair", &name, "--", "sleep", "1"]);
    let holder = tokio::spawn(output(holder));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (url, name, log) = (server.url(), name.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = tool(&url);
            let script = format!("echo {i} >> {}", log.display());
            c.args(["run", "--fair", &name, "--", "sh", "-c", &script]);
            let out = output(c).await;
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(holder.await.unwrap().status.code(), Some(0));
    for t in tasks {
        t.await.unwrap();
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines, "0\n1\n2\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_permits() {
    let server = ValkeyServer::start();
    let name = unique("permits");
    let dir = scratch("permits");
    let log = dir.join("log");
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (url, name, log) = (server.url(), name.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = tool(&url);
            let script = format!(
                "echo \"start $(date +%s%N) $VALKEYLOCK_PERMIT_SLOT\" >> {log}; sleep 0.4; echo \"end $(date +%s%N) $VALKEYLOCK_PERMIT_SLOT\" >> {log}",
                log = log.display()
            );
            c.args(["run", "--permits", "2", &name, "--", "sh", "-c", &script]);
            let out = output(c).await;
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let mut events: Vec<(u128, i32, u32)> = lines
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let delta = if w[0] == "start" { 1 } else { -1 };
            (w[1].parse().unwrap(), delta, w[2].parse().unwrap())
        })
        .collect();
    assert_eq!(events.len(), 10, "{lines}");
    assert!(
        events.iter().all(|e| e.2 < 2),
        "slots outside 0..2: {lines}"
    );
    // Ends before starts at one instant: a program ending as another starts
    // is not an overlap.
    events.sort_by_key(|e| (e.0, e.1));
    let (mut running, mut most) = (0, 0);
    for e in &events {
        running += e.1;
        most = most.max(running);
    }
    assert_eq!(
        most, 2,
        "programs at once (at most 2, and 2 ran together): {lines}"
    );

    let mut c = tool(&server.url());
    c.args(["run", "--permits", "0", &name, "--", "true"]);
    let out = output(c).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("permits"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A `run --permits 1` holder killed with SIGKILL: nobody extends its
/// permit, which frees within one validity (1 s here) for the next holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_permit_holder_frees_its_permit_within_one_validity() {
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let name = unique("permit-kill");
    let mut c = tool(&server.url());
    c.args([
        "run",
        "--permits",
        "1",
        "--validity",
        "1s",
        &name,
        "--",
        "sleep",
        "30",
    ]);
    let mut holder = c.spawn().unwrap();
    let slot = format!("{name}:permit:0");
    assert!(
        eventually(Duration::from_secs(10), || async {
            existing_keys(&admin, "valkeylock", &slot, 3).await == 3
        })
        .await,
        "the holder never took its permit"
    );
    let locker = valkeylock::Locker::connect(
        valkeylock::LockerOptions::new([server.url()]).with_key_validity(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let pool = locker.semaphore(&name, 1).unwrap();
    assert!(matches!(
        pool.try_acquire().await,
        Err(valkeylock::Error::NotLocked { .. })
    ));
    // `status --permits`: the one permit is held (exit 0), in text and JSON.
    let mut c = tool(&server.url());
    c.args(["status", "--permits", "1", &name]);
    let out = output(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("1 of 1 permits held, 0 free"), "{shown}");
    assert!(
        shown.contains(&format!("slot 0 ({slot}): held by token")),
        "{shown}"
    );
    let mut c = tool(&server.url());
    c.args(["status", "--json", "--permits", "1", &name]);
    let out = output(c).await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["held"], 1, "{doc}");
    assert_eq!(doc["slots"][0]["state"], "held", "{doc}");
    assert!(doc["nodes"].is_array(), "{doc}");
    holder.start_kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let _ = holder.wait().await;
    let permit = tokio::time::timeout(Duration::from_secs(10), pool.acquire())
        .await
        .expect("the dead holder's permit never freed")
        .unwrap();
    let freed = killed.elapsed();
    println!("permit free {freed:?} after SIGKILL of its holder (validity 1 s)");
    // One validity, plus the waiter's retry and this machine's slack.
    assert!(freed < Duration::from_secs(5), "{freed:?}");
    drop(permit);
    locker.close().await;
    // Free again once the permit is dropped: exit 1.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let mut c = tool(&server.url());
            c.args(["status", "--permits", "1", &name]);
            output(c).await.status.code() == Some(1)
        })
        .await,
        "status --permits never showed the permit free"
    );
}

/// Flags > environment > config file > defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_env_and_flags() {
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    let dead = "redis://127.0.0.1:1";
    let dir = scratch("config");
    let config = dir.join("valkeylock.toml");
    std::fs::write(
        &config,
        format!(
            "nodes = [\"{}\"]\nkey_prefix = \"fromfile\"\nkey_validity = \"3s\"\n",
            server.url()
        ),
    )
    .unwrap();
    let name = unique("config");
    let hold = "echo $VALKEYLOCK_FENCING_TOKEN";

    // The file alone: its nodes and prefix.
    let mut c = tool(dead);
    c.env_remove("VALKEYLOCK_NODES")
        .env("VALKEYLOCK_CONFIG", &config)
        .args(["run", &name, "--", "sh", "-c", hold]);
    let out = output(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let fence: Option<u64> =
        fred::prelude::KeysInterface::get(&admin, format!("fromfile:fence:{name}"))
            .await
            .unwrap();
    assert_eq!(Some(text(&out.stdout).trim().parse().unwrap()), fence);

    // The environment beats the file.
    let mut c = tool(dead);
    c.args(["--config"]).arg(&config).args(["status", &name]);
    let out = output(c).await;
    assert_eq!(out.status.code(), Some(EXIT_UNAVAILABLE));
    let mut c = tool(&server.url());
    c.env("VALKEYLOCK_PREFIX", "fromenv")
        .args(["--config"])
        .arg(&config)
        .args(["status", &name]);
    let stdout = text(&output(c).await.stdout);
    assert!(stdout.contains(&format!("fromenv:0:{name}")), "{stdout}");

    // Flags beat the environment.
    let mut c = tool(dead);
    c.env("VALKEYLOCK_PREFIX", "fromenv")
        .args(["--nodes", &server.url(), "--prefix", "fromflag"])
        .args(["--config"])
        .arg(&config)
        .args(["status", &name]);
    let out = output(c).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(stdout.contains(&format!("fromflag:0:{name}")), "{stdout}");

    // An unknown field in the file is a usage error.
    std::fs::write(&config, "nodez = []\n").unwrap();
    let mut c = tool(&server.url());
    c.args(["--config"]).arg(&config).args(["status", &name]);
    let out = output(c).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nodez"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

/// `elect` and `leader`: the first `elect` runs its program as leader (it
/// sees its term and value), a second waits and runs after it with a higher
/// term; `leader` prints `TERM VALUE` while one leads (exit 0) and `-` when
/// none does (exit 1); `leader --watch --json` prints every term, in order;
/// `elect --wait-timeout 0` while another leads exits 73.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_and_leader() {
    let server = ValkeyServer::start();
    let name = unique("elect");
    let dir = scratch("elect");
    let log = dir.join("log");

    let mut c = tool(&server.url());
    c.args(["leader", &name]);
    let out = output(c).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "-\n");

    let mut watch = tool(&server.url());
    watch.args(["leader", "--watch", "--json", &name]);
    let mut watcher = watch.spawn().unwrap();
    // The watcher's lines, read as they come: the first candidate starts
    // only once the watcher has printed that nobody leads, so both terms
    // begin after its first look (a term that ends before an observer's first
    // look is not reported, by design).
    let (line_tx, mut watched) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher_out = tokio::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = watcher_out.next_line().await {
            let _ = line_tx.send(line);
        }
    });
    let first_look = tokio::time::timeout(Duration::from_secs(30), watched.recv())
        .await
        .expect("the watcher prints its first look")
        .expect("the watcher prints a line");
    let first_look: serde_json::Value = serde_json::from_str(&first_look).unwrap();
    assert!(first_look["leader"].is_null(), "{first_look}");

    let script = format!(
        "echo \"$VALKEYLOCK_TERM $VALKEYLOCK_LEADER_VALUE $VALKEYLOCK_FENCING_TOKEN\" >> {}; sleep 1",
        log.display()
    );
    let mut first = tool(&server.url());
    first.args(["elect", &name, "host-a", "--", "sh", "-c", &script]);
    let first = first.spawn().unwrap();
    let admin = server.admin().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() == 1)
        })
        .await,
        "the first candidate leads"
    );
    let mut c = tool(&server.url());
    c.args(["leader", &name]);
    let out = output(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = std::fs::read_to_string(&log).unwrap();
    let mut fields = line.split_whitespace();
    let (term, value, token) = (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    );
    assert_eq!(value, "host-a");
    assert_eq!(term, token, "the term is the fencing token");
    assert_eq!(text(&out.stdout), format!("{term} host-a\n"));

    let mut c = tool(&server.url());
    c.args([
        "elect",
        &name,
        "host-c",
        "--wait-timeout",
        "0",
        "--",
        "true",
    ]);
    let out = output(c).await;
    assert_eq!(
        out.status.code(),
        Some(EXIT_WAIT_TIMEOUT),
        "{}",
        text(&out.stderr)
    );

    let mut second = tool(&server.url());
    second.args(["elect", &name, "host-b", "--", "sh", "-c", &script]);
    let second = output(second).await;
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let first = tokio::time::timeout(Duration::from_secs(30), first.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let lines: Vec<(u64, String)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1].1, "host-b", "the waiting candidate led second");
    assert!(lines[1].0 > lines[0].0, "{lines:?}");

    // After its first look (`null`), the watcher printed both terms in order.
    assert!(
        eventually(Duration::from_secs(10), || async {
            existing_keys(&admin, "valkeylock", &format!("{name}:election"), 3).await == 0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = nix_kill(watcher.id().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(30), watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    reader.await.unwrap();
    let mut docs: Vec<serde_json::Value> = Vec::new();
    while let Ok(line) = watched.try_recv() {
        docs.push(serde_json::from_str(&line).unwrap());
    }
    assert_eq!(docs.len(), 2, "{docs:?}");
    for (doc, (term, value)) in docs.iter().zip(&lines) {
        assert_eq!(doc["name"], name.as_str());
        assert_eq!(doc["leader"]["term"], *term);
        assert_eq!(doc["leader"]["value"], value.as_str());
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGTERM to a process by id (the `leader --watch` ends on it, exit 0).
fn nix_kill(pid: u32) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
}
