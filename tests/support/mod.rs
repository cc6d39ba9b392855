//! Shared test support: real `valkey-server` processes on free loopback ports,
//! an admin client to poke at keys, a polling helper, and a `tracing` layer
//! that captures what the engine logs (`capture`).
//!
//! Each `ValkeyServer` kills its own process on drop. Traffic goes to
//! 127.0.0.1 only.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod capture;
pub mod cluster;
pub mod history;
pub mod proxy;
pub mod sentinel;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fred::prelude::*;
use tokio::time::Instant;

/// The server binary: `$VALKEY_SERVER`, else `valkey-server`, else
/// `redis-server`.
pub fn server_binary() -> String {
    if let Ok(b) = std::env::var("VALKEY_SERVER") {
        return b;
    }
    for b in ["valkey-server", "redis-server"] {
        if Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return b.to_owned();
        }
    }
    panic!("no valkey-server on PATH: run .ci/install-valkey (or set VALKEY_SERVER)");
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A `valkey-server` child process.
pub struct ValkeyServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

impl ValkeyServer {
    /// Starts a fresh server (no persistence) on a free port.
    pub fn start() -> ValkeyServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--name value` arguments.
    pub fn start_with(extra: &[&str]) -> ValkeyServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("valkeylock-test-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let mut s = ValkeyServer {
                port,
                child: None,
                dir,
                extra: extra.clone(),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start valkey-server");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .args(["--enable-debug-command", "yes", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("spawn valkey-server: {e}"),
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// True if the server answers PING (with or without auth required).
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => buf[0] == b'+' || buf[..n].starts_with(b"-NOAUTH"),
            _ => false,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one inline command (words without spaces) on a connection of
    /// its own, without a runtime, and returns the first line of the reply:
    /// for a test whose runtime is blocked on purpose.
    pub fn blocking_command(&self, command: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{command}\r\n").as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            assert_eq!(s.read(&mut byte).expect("reply"), 1, "connection closed");
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply[..reply.len() - 2]).into_owned()
    }

    /// Kills the process (SIGKILL): the data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart valkey-server on port {}", self.port);
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// SIGSTOP: the server stops answering but keeps its connections.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// A `Locker` on this one server: `key_majority` 1, every other option at
    /// its default.
    pub async fn locker(&self) -> valkeylock::Locker {
        valkeylock::Locker::connect(
            valkeylock::LockerOptions::new([self.url()]).with_key_majority(1),
        )
        .await
        .expect("connect a locker")
    }

    /// An admin connection (RESP3, no tracking) for poking at keys.
    pub async fn admin(&self) -> Client {
        let config = Config::from_url(&self.url()).expect("url");
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
            .build()
            .expect("client");
        client.init().await.expect("admin connect");
        client
    }
}

impl Drop for ValkeyServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 5 ms until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Keys of lock `name` with prefix `prefix` that exist on `admin`'s server.
pub async fn existing_keys(admin: &Client, prefix: &str, name: &str, total: usize) -> usize {
    let mut n = 0;
    for i in 0..total {
        let exists: i64 = admin
            .exists(format!("{prefix}:{i}:{name}"))
            .await
            .unwrap_or(0);
        n += exists as usize;
    }
    n
}

/// Deletes `name`'s key 0 from outside (a one-key lock, default prefix)
/// and waits for `guard`'s holder to hear, `within` at most.
pub async fn hears_of_delete(
    admin: &Client,
    guard: &valkeylock::LockGuard,
    name: &str,
    within: Duration,
) {
    let _: i64 = admin
        .del(format!("valkeylock:0:{name}"))
        .await
        .expect("DEL");
    let reason = tokio::time::timeout(within, guard.lost())
        .await
        .unwrap_or_else(|_| panic!("the holder was not told of the deleted key within {within:?}"));
    assert_eq!(reason, valkeylock::LostReason::Deleted);
}

/// Script calls (`EVALSHA`) the server has run so far (`INFO commandstats`).
pub async fn evalsha_calls(admin: &Client) -> u64 {
    command_calls(admin)
        .await
        .get("evalsha")
        .copied()
        .unwrap_or(0)
}

/// `calls` per command from `INFO commandstats` (e.g. `evalsha` → n).
pub async fn command_calls(admin: &Client) -> std::collections::BTreeMap<String, u64> {
    command_stat(admin, "calls").await
}

/// How many more times `command` ran in `after` than in `before`, two
/// [`command_calls`] of one server.
pub fn calls_since(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    command: &str,
) -> u64 {
    after.get(command).copied().unwrap_or(0) - before.get(command).copied().unwrap_or(0)
}

/// One field of `INFO commandstats` per command: `calls`, or `usec` (the
/// server's time in it, µs; a script's own commands count both inside its
/// call and under their own names).
pub async fn command_stat<T: std::str::FromStr>(
    admin: &Client,
    field: &str,
) -> std::collections::BTreeMap<String, T> {
    let info: String = admin
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let value = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))?
                .parse()
                .ok()?;
            Some((name.to_owned(), value))
        })
        .collect()
}

/// Turns on test logs when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A unique lock name for a test.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts `waiter.lock(name)`, checks it keeps waiting while `holder` is held,
/// releases `holder`, and returns how long after the release the waiter got
/// the lock (bounded by 2 s), with its guard.
pub async fn wake_after_release(
    holder: valkeylock::LockGuard,
    waiter: &valkeylock::Locker,
    name: &str,
) -> (Duration, valkeylock::LockGuard) {
    let task = tokio::spawn({
        let (waiter, name) = (waiter.clone(), name.to_owned());
        async move {
            let g = waiter.lock(&name).await;
            (Instant::now(), g)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "the waiter got a held lock");
    let released = Instant::now();
    let _ = holder.release().await;
    let (at, g) = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the waiter was not woken within 2 s of the release")
        .expect("task");
    (at - released, g.expect("the waiter's lock"))
}

/// An error's text followed by its causes' (`std::error::Error::source`),
/// `: `-separated, for assertions on everything a user would be shown.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
