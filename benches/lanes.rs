//! Which connection a lock's commands take, measured (issue #11): the one
//! task loop of lock + release, through six transports in alternated
//! rounds on one server (each round in another order), each as a ratio to
//! the raw floor of the same round.
//!
//! The engine as built sends every command from its own thread (its runtime,
//! its fred connection), which costs a wake-up of that thread and one back per
//! round trip. The transports below move the commands to a connection the
//! caller's runtime drives itself, and differ in how the holder would still
//! hear of a loss at once, which is what the engine's connection is for
//! (`CLIENT TRACKING` invalidations; README, "How it works"):
//!
//! - `floor`: `SET NX PX` then the compare-and-delete script, one fred
//!   client on the caller's runtime (the floor of the other benches).
//! - `script`: the same client runs an acquire script with the commands
//!   valkeylock's runs for a free key (`GET`, `EXISTS` of the fair queue,
//!   `SET NX PXAT`, `GET`), then the compare-and-delete. Nobody would hear
//!   of a loss: the ceiling of any transport.
//! - `script+verify`: `script`, and after each acquisition a read-only check
//!   of the key sent by an "engine" (a thread with its own current-thread
//!   runtime and RESP3 connection with tracking on, as the engine's), which
//!   arms tracking there: what the engine would add if the caller's
//!   connection did not track.
//! - `script+redirect`: `script` on a caller's connection with
//!   `CLIENT TRACKING ON REDIRECT <the engine's connection> NOLOOP`: its
//!   reads arm tracking, and the invalidations go to the engine's
//!   connection. Checked before the rounds: a key the caller's connection
//!   read, deleted by another client, reaches the engine as an invalidation.
//! - `valkeylock`: `Locker::lock` then `LockGuard::release`, as built: its
//!   acquisitions and releases go on a direct connection (the caller's
//!   runtime drives it, its tracking redirected to the engine's
//!   connection; `LockerOptions::direct_connections`, on by default).
//! - `valkeylock (engine)`: the same with `direct_connections` off, every
//!   command from the engine's thread.
//!
//! Run: `cargo bench --bench lanes` (`CI=1`: one short round).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Args, Raw};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, RespVersion};
use support::ValkeyServer;
use valkeylock::Locker;

/// A free key's commands in valkeylock's acquire script, in its order.
const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
if redis.call('EXISTS', '{' .. KEYS[1] .. '}:q') == 1 then return {1, 0} end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return redis.call('GET', KEYS[1])
"#;

/// valkeylock's read-only check of a key it holds.
const VERIFY: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return redis.call('PTTL', KEYS[1]) end
return cur
"#;

const VARIANTS: [&str; 6] = [
    "floor",
    "script",
    "script+verify",
    "script+redirect",
    "valkeylock",
    "valkeylock (engine)",
];

fn main() {
    let args = Args::parse();
    if args.list || !args.wants("lanes") {
        return;
    }
    let quick = args.quick();
    let (rounds, each) = if quick {
        (1, Duration::from_millis(300))
    } else {
        (8, Duration::from_secs(2))
    };
    let server = ValkeyServer::start();
    let url = server.url();
    let engine = Engine::start(&url);
    let rt = common::runtime();
    println!("# lanes bench: {}", common::machine());
    rt.block_on(async {
        let raw = Raw::connect(&url).await;
        let plain = common::raw_client(&url).await;
        let redirected = common::raw_client(&url).await;
        let _: Value = redirected
            .custom(
                CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
                vec![
                    "TRACKING".to_owned(),
                    "ON".into(),
                    "REDIRECT".into(),
                    engine.id.to_string(),
                    "NOLOOP".into(),
                ],
            )
            .await
            .expect("CLIENT TRACKING ON REDIRECT");
        let acquire: String = plain.script_load(ACQUIRE).await.expect("SCRIPT LOAD");
        let release: String = plain.script_load(common::RELEASE_LUA).await.expect("SCRIPT LOAD");
        let locker = Locker::connect(common::valkeylock_options(std::slice::from_ref(&url), 1))
            .await
            .expect("connect");
        let engine_only = Locker::connect(
            common::valkeylock_options(std::slice::from_ref(&url), 1)
                .with_direct_connections(false),
        )
        .await
        .expect("connect");

        // The redirect carries invalidations to the engine's connection.
        let before = engine.invalidations.load(Ordering::SeqCst);
        let _: Value = redirected
            .evalsha(&acquire, "lanes-check", vec!["t".to_owned(), expiry()])
            .await
            .expect("acquire");
        let _: i64 = plain.del("lanes-check").await.expect("DEL");
        let start = Instant::now();
        while engine.invalidations.load(Ordering::SeqCst) == before {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no invalidation reached the engine's connection through the redirect"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("redirect check: the engine's connection got the invalidation of a key the caller's connection read");
        println!();
        println!("## Rounds ({rounds} of {each:?} per transport)");
        println!();
        println!("| round | transport | µs per lock + release | ops | × floor of the round |");
        println!("|---:|---|---:|---:|---:|");

        let mut all: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut n = 0u64;
        for round in 1..=rounds {
            // Each round starts one transport later: none always follows
            // the same one (the check's leftover work, a warm cache).
            let mut times = [f64::NAN; VARIANTS.len()];
            let mut counts = [0u64; VARIANTS.len()];
            for i in 0..VARIANTS.len() {
                let v = (i + round) % VARIANTS.len();
                let variant = &VARIANTS[v];
                let t0 = Instant::now();
                let mut ops = 0u64;
                while t0.elapsed() < each {
                    n += 1;
                    let token = format!("{n:048x}");
                    let key = "lanes";
                    match *variant {
                        "floor" => {
                            let t = raw.lock(key).await;
                            raw.unlock(key, t).await;
                        }
                        "valkeylock" => {
                            let g = locker.lock("lanes-valkeylock").await.expect("lock");
                            g.release().await.expect("release");
                        }
                        "valkeylock (engine)" => {
                            let g = engine_only.lock("lanes-engine").await.expect("lock");
                            g.release().await.expect("release");
                        }
                        _ => {
                            let client = if *variant == "script+redirect" {
                                &redirected
                            } else {
                                &plain
                            };
                            let got: Value = client
                                .evalsha(&acquire, key, vec![token.clone(), expiry()])
                                .await
                                .expect("acquire");
                            assert!(matches!(got, Value::String(_)), "{got:?}");
                            if *variant == "script+verify" {
                                engine.verify(key, &token);
                            }
                            let _: i64 = client
                                .evalsha(&release, key, token)
                                .await
                                .expect("release");
                        }
                    }
                    ops += 1;
                }
                times[v] = t0.elapsed().as_secs_f64() * 1e6 / ops as f64;
                counts[v] = ops;
            }
            for (v, variant) in VARIANTS.iter().enumerate() {
                let ratio = times[v] / times[0];
                all[v].push(times[v]);
                ratios[v].push(ratio);
                println!(
                    "| {round} | {variant} | {:.1} | {} | {} |",
                    times[v],
                    counts[v],
                    common::fmt_ratio(ratio)
                );
            }
        }
        println!();
        println!("## Medians over the rounds");
        println!();
        println!("| transport | median µs per lock + release | median × floor of the round |");
        println!("|---|---:|---:|");
        for (v, variant) in VARIANTS.iter().enumerate() {
            println!(
                "| {variant} | {:.1} | {} |",
                median(&mut all[v]),
                common::fmt_ratio(median(&mut ratios[v]))
            );
        }
        locker.close().await;
        engine_only.close().await;
        raw.quit().await;
    });
}

/// The benches' validity from now, as a Unix time in milliseconds (`PXAT`).
fn expiry() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_millis() + u128::from(common::TTL_MS)).to_string()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A stand-in for the engine: its own thread and current-thread runtime, a
/// RESP3 connection with tracking on (`NOLOOP`), counting the invalidations
/// it gets, and running checks sent to it without the sender waiting.
struct Engine {
    id: i64,
    invalidations: Arc<AtomicU64>,
    checks: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

impl Engine {
    fn start(url: &str) -> Engine {
        let (checks, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let (id_tx, id_rx) = std::sync::mpsc::channel();
        let invalidations = Arc::new(AtomicU64::new(0));
        let (url, count) = (url.to_owned(), invalidations.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("engine runtime");
            rt.block_on(async move {
                let mut config = Config::from_url(&url).expect("url");
                config.version = RespVersion::RESP3;
                let client = Builder::from_config(config).build().expect("client");
                client.init().await.expect("engine connect");
                let _: () = client
                    .start_tracking(Vec::<String>::new(), false, false, false, true)
                    .await
                    .expect("CLIENT TRACKING");
                let _task = client.on_invalidation(move |_| {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                });
                let verify: String = client.script_load(VERIFY).await.expect("SCRIPT LOAD");
                let id: i64 = client
                    .custom(
                        CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
                        vec!["ID"],
                    )
                    .await
                    .expect("CLIENT ID");
                let _ = id_tx.send(id);
                while let Some((key, token)) = rx.recv().await {
                    let (client, verify) = (client.clone(), verify.clone());
                    tokio::spawn(async move {
                        let _: Result<Value, _> = client.evalsha(&verify, key, token).await;
                    });
                }
            });
        });
        Engine {
            id: id_rx.recv().expect("the engine's connection id"),
            invalidations,
            checks,
        }
    }

    fn verify(&self, key: &str, token: &str) {
        let _ = self.checks.send((key.to_owned(), token.to_owned()));
    }
}
