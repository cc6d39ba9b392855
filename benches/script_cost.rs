//! What the acquire script costs the server, apart from the network and
//! the client: one acquisition of a free key, measured as the server's own
//! time in the call (`INFO commandstats`, the `usec` of the script call;
//! the commands a script runs count inside it), beside the floor's bare
//! `SET NX PX` in the same run and reported as ratios. The one-task and
//! ten-task loops of the other benches mix this with everything else the
//! machine does; here the calls go in pipelines on one connection, so what
//! the server spends on the script is most of what is measured.
//!
//! Five variants, each on keys nobody holds, in alternated rounds (each
//! round in another order), on a RESP3 connection with `CLIENT TRACKING ON
//! NOLOOP`, as a lock's direct connection (the script's reads arm
//! tracking, and its write drops the entry):
//!
//! - `floor`: `SET key token NX PX ms`.
//! - `stand-in`: a script of the same commands valkeylock's runs for a
//!   free key, bare (`EXISTS` of the fair queue, `SET … NX PXAT`, `GET`),
//!   the `script` transport of the lanes bench.
//! - `general steps`: valkeylock's acquire script without its first lines,
//!   which is the script before it answered the common case up front
//!   (the text after `local n = #KEYS`).
//! - `valkeylock`: the acquire script as built, with the arguments the
//!   engine sends for one key without fencing or hand-over.
//! - `plain commands`: what a direct connection of valkeylock's sends for
//!   such a key since it stopped sending the script there: `SET … NX
//!   PXAT`, the `GET` that arms tracking and `EXISTS` of the fair queue, as
//!   plain commands (the server's time in the three, summed).
//!
//! A second part measures a hand-over (`LockerOptions::handover`): a
//! waiter's claim on a key another locker holds, then that holder's release,
//! which hands the key to the claim and publishes the claimant's message
//! (to a subscriber, so that it counts as heard). Each key is set to the
//! holder's token first (a plain `SET`, before the counters are read). Three
//! variants, in alternated rounds as above, on the same kind of connection:
//!
//! - `floor`: the raw floor's commands for one hand-over, as the lanes
//!   bench's floor sends them: the waiter's `SET NX PX` refused, the
//!   holder's compare-and-delete, and the waiter's next `SET NX PX`, which
//!   takes the key.
//! - `handed stand-in`: the lanes bench's handed stand-in, its claim and
//!   its release (`common::HANDED_ACQUIRE`, `common::HANDED_RELEASE`).
//! - `valkeylock`: the acquire script and the hand-over release as built,
//!   with the arguments the engine sends for one key without fencing.
//!
//! Besides each variant's time, the part splits it: the server's time in
//! the commands the scripts run (each counted under its own name too), and
//! the rest, the script calls' own: all the server does for a call besides
//! running those commands (the interpreter, each command's arguments and
//! reply converted to and from Lua, the keys its reads track).
//!
//! The scripts are read from `actors/src/scripts.rs` at build time, so the
//! bench measures the script that ships.
//!
//! Run: `cargo bench --bench script_cost` (`CI=1`: one short round).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use common::{median, order, Args};
use fred::prelude::*;
use fred::types::{CustomCommand, RespVersion};
use support::ValkeyServer;

/// The engine's scripts, as built.
const SCRIPTS_RS: &str = include_str!("../actors/src/scripts.rs");

const VARIANTS: [&str; 5] = [
    "floor",
    "stand-in",
    "general steps",
    "valkeylock",
    "plain commands",
];

/// The commands whose time (`INFO commandstats`) each variant is charged.
const CHARGED: [&[&str]; 5] = [
    &["set"],
    &["evalsha"],
    &["evalsha"],
    &["evalsha"],
    &["set", "get", "exists"],
];

/// Calls sent together in one pipeline (one write, one batch of replies).
const IN_FLIGHT: usize = 32;

/// The text of `const {name}: &str = r#"…"#;` in `actors/src/scripts.rs`.
fn script(name: &str) -> &'static str {
    let start = format!("const {name}: &str = r#\"");
    let from = SCRIPTS_RS
        .find(&start)
        .map(|i| i + start.len())
        .unwrap_or_else(|| panic!("{name} not found in actors/src/scripts.rs"));
    let len = SCRIPTS_RS[from..]
        .find("\"#;")
        .unwrap_or_else(|| panic!("{name} has no end"));
    &SCRIPTS_RS[from..from + len]
}

fn main() {
    let args = Args::parse();
    if args.list || !args.wants("script_cost") {
        return;
    }
    let (rounds, calls) = if args.quick() {
        (1, 2_000)
    } else {
        (8, 40_000)
    };
    let server = ValkeyServer::start();
    let rt = common::runtime();
    println!("# script_cost bench: {}", common::machine());
    rt.block_on(run(&server.url(), rounds, calls));
    rt.block_on(handover(&server.url(), rounds, calls / 2));
}

/// A RESP3 connection with `CLIENT TRACKING ON NOLOOP`, as a lock's direct
/// connection.
async fn tracking_client(url: &str) -> Client {
    let mut config = Config::from_url(url).expect("url");
    config.version = RespVersion::RESP3;
    let client = Builder::from_config(config).build().expect("client");
    client.init().await.expect("connect");
    let _: Value = client
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["TRACKING", "ON", "NOLOOP"],
        )
        .await
        .expect("CLIENT TRACKING ON");
    client
}

/// The acquire script's general steps: the text after `local n = #KEYS`.
fn general_steps(acquire: &str) -> String {
    let (_, rest) = acquire
        .split_once("local n = #KEYS")
        .expect("the general steps start with `local n = #KEYS`");
    format!("local n = #KEYS{rest}")
}

async fn run(url: &str, rounds: usize, calls: usize) {
    let client = tracking_client(url).await;
    let acquire = script("ACQUIRE_LUA");
    let general = general_steps(acquire);
    let mut shas = Vec::new();
    for text in [common::STAND_IN_ACQUIRE, general.as_str(), acquire] {
        let sha: String = client.script_load(text).await.expect("SCRIPT LOAD");
        shas.push(sha);
    }

    println!();
    println!("## Rounds ({rounds} of {calls} acquisitions of free keys per variant, pipelines of {IN_FLIGHT})");
    println!();
    println!("| round | variant | place in the round | server µs per acquisition | × floor of the round | wall µs per acquisition |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut all: Vec<Vec<(f64, f64)>> = vec![Vec::new(); VARIANTS.len()];
    for round in 1..=rounds {
        let order = order(VARIANTS.len(), round);
        let mut got = vec![(f64::NAN, f64::NAN); VARIANTS.len()];
        for &v in &order {
            flushall(&client).await;
            let before = common::command_usec(&client).await;
            let t0 = std::time::Instant::now();
            pipelined(&client, calls, |i| acquire_one(v, &shas, round, i), drop).await;
            let wall = t0.elapsed().as_secs_f64() * 1e6 / calls as f64;
            let after = common::command_usec(&client).await;
            let spent = |m: &std::collections::BTreeMap<String, f64>| {
                CHARGED[v]
                    .iter()
                    .map(|c| m.get(*c).copied().unwrap_or(0.0))
                    .sum::<f64>()
            };
            let us = (spent(&after) - spent(&before)) / calls as f64;
            got[v] = (us, wall);
        }
        let floor = got[0].0;
        for (v, variant) in VARIANTS.iter().enumerate() {
            let place = order.iter().position(|&o| o == v).unwrap_or(v) + 1;
            let (us, wall) = got[v];
            all[v].push((us, us / floor));
            println!(
                "| {round} | {variant} | {place} | {us:.2} | {} | {wall:.2} |",
                common::fmt_ratio(us / floor)
            );
        }
    }
    println!();
    println!("## Medians over the rounds");
    println!();
    println!("| variant | median server µs per acquisition | median × floor of the round |");
    println!("|---|---:|---:|");
    for (v, variant) in VARIANTS.iter().enumerate() {
        let us = median(&mut all[v].iter().map(|m| m.0).collect::<Vec<_>>());
        let ratio = median(&mut all[v].iter().map(|m| m.1).collect::<Vec<_>>());
        println!("| {variant} | {us:.2} | {} |", common::fmt_ratio(ratio));
    }
    let fewer = (0..rounds).filter(|&r| all[3][r].0 < all[2][r].0).count();
    println!();
    println!(
        "- `valkeylock` cost the server less than `general steps` in {fewer} of {rounds} rounds."
    );
    let mut paired: Vec<f64> = (0..rounds).map(|r| all[3][r].0 / all[2][r].0).collect();
    println!(
        "- `valkeylock`'s server time over `general steps`' in the same round, median of the rounds: {:.3}.",
        median(&mut paired)
    );
    let mut plain: Vec<f64> = (0..rounds).map(|r| all[4][r].0 / all[3][r].0).collect();
    println!(
        "- `plain commands`' server time over `valkeylock`'s in the same round, median of the rounds: {:.3}.",
        median(&mut plain)
    );
}

/// An empty server again.
async fn flushall(client: &Client) {
    let _: Value = client
        .custom(
            CustomCommand::new_static("FLUSHALL", None, false),
            Vec::<String>::new(),
        )
        .await
        .expect("FLUSHALL");
}

/// Sends the commands `one(i)` of calls `0..calls` in pipelines of
/// `IN_FLIGHT` calls (one write, one batch of replies each), and hands each
/// reply to `reply`.
async fn pipelined(
    client: &Client,
    calls: usize,
    one: impl Fn(usize) -> Vec<(&'static str, Vec<String>)>,
    mut reply: impl FnMut(Value),
) {
    for start in (0..calls).step_by(IN_FLIGHT) {
        let pipeline = client.pipeline();
        for i in start..(start + IN_FLIGHT).min(calls) {
            for (cmd, args) in one(i) {
                let queued: Value = pipeline
                    .custom(CustomCommand::new_static(cmd, None, false), args)
                    .await
                    .expect("queued in the pipeline");
                drop(queued);
            }
        }
        for r in pipeline.try_all::<Value>().await {
            reply(r.expect("a pipelined command's reply"));
        }
    }
}

/// One acquisition of a key nobody holds, by variant `v`: its commands and
/// their arguments.
fn acquire_one(
    v: usize,
    shas: &[String],
    round: usize,
    i: usize,
) -> Vec<(&'static str, Vec<String>)> {
    let key = format!("valkeylock:0:cost-{round}-{v}-{i}");
    let token = format!("{:048x}:m1n1p0", i);
    let at = common::expiry();
    let one = "1".to_owned();
    if v == 4 {
        let queue = format!("{{{key}}}:q");
        return vec![
            (
                "SET",
                vec![key.clone(), token, "NX".into(), "PXAT".into(), at],
            ),
            ("GET", vec![key]),
            ("EXISTS", vec![queue]),
        ];
    }
    vec![match v {
        0 => (
            "SET",
            vec![
                key,
                token,
                "NX".into(),
                "PX".into(),
                common::TTL_MS.to_string(),
            ],
        ),
        1 => ("EVALSHA", vec![shas[0].clone(), one, key, token, at]),
        _ => (
            "EVALSHA",
            vec![
                shas[v - 1].clone(),
                one,
                key,
                at,
                "PXAT".into(),
                "0".into(),
                token,
                "NX".into(),
            ],
        ),
    }]
}

/// The hand-over part's variants.
const HANDOVER_VARIANTS: [&str; 3] = ["floor", "handed stand-in", "valkeylock"];

/// The commands each hand-over variant sends itself (the rest it is
/// charged for runs inside its scripts). The `SET` that gives each key its
/// holder runs before the counters are read.
const HANDOVER_SENT: [&[&str]; 3] = [&["set", "evalsha"], &["evalsha"], &["evalsha"]];

/// The channel every claim names; a subscriber listens on it.
const CLAIMANT: &str = "script-cost-claimant";

/// One variant's figures in one round, per hand-over: the server's time in
/// what it sent, of which in the plain commands it sent (the floor's
/// `SET`s) and in the commands its scripts ran, and the hand-overs heard.
#[derive(Clone, Copy)]
struct Spent {
    us: f64,
    plain: f64,
    inner: f64,
    heard: u64,
}

/// The hand-over part: `calls` hand-overs per variant and round, each on
/// a key of its own.
async fn handover(url: &str, rounds: usize, calls: usize) {
    let client = tracking_client(url).await;
    let listener = tracking_client(url).await;
    listener.subscribe(CLAIMANT).await.expect("SUBSCRIBE");
    let mut shas = Vec::new();
    for text in [
        common::RELEASE_LUA,
        common::HANDED_ACQUIRE,
        common::HANDED_RELEASE,
        script("ACQUIRE_LUA"),
        script("RELEASE_HANDOVER_LUA"),
    ] {
        let sha: String = client.script_load(text).await.expect("SCRIPT LOAD");
        shas.push(sha);
    }

    println!();
    println!("## Hand-over: rounds ({rounds} of {calls} hand-overs per variant, pipelines of {IN_FLIGHT})");
    println!();
    println!("| round | variant | place in the round | server µs per hand-over | × floor of the round | × handed stand-in of the round | of which in the scripts' commands | of which the script calls' own | hand-overs heard |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut all: Vec<Vec<Spent>> = vec![Vec::new(); HANDOVER_VARIANTS.len()];
    for round in 1..=rounds {
        let order = order(HANDOVER_VARIANTS.len(), round);
        let mut got = vec![
            Spent {
                us: f64::NAN,
                plain: f64::NAN,
                inner: f64::NAN,
                heard: 0
            };
            HANDOVER_VARIANTS.len()
        ];
        for &v in &order {
            got[v] = handover_round(&client, &shas, v, round, calls).await;
        }
        let (floor, stand_in) = (got[0].us, got[1].us);
        for (v, variant) in HANDOVER_VARIANTS.iter().enumerate() {
            let place = order.iter().position(|&o| o == v).unwrap_or(v) + 1;
            let g = got[v];
            all[v].push(g);
            println!(
                "| {round} | {variant} | {place} | {:.2} | {} | {} | {:.2} | {:.2} | {} |",
                g.us,
                common::fmt_ratio(g.us / floor),
                common::fmt_ratio(g.us / stand_in),
                g.inner,
                g.us - g.plain - g.inner,
                g.heard
            );
        }
    }
    println!();
    println!("## Hand-over: medians over the rounds");
    println!();
    println!("| variant | median server µs per hand-over | median × floor of the round | median × handed stand-in of the round | median in the scripts' commands | median in the script calls' own |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (v, variant) in HANDOVER_VARIANTS.iter().enumerate() {
        let rounds = &all[v];
        let per = |f: &dyn Fn(usize, &Spent) -> f64| {
            median(
                &mut rounds
                    .iter()
                    .enumerate()
                    .map(|(r, g)| f(r, g))
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "| {variant} | {:.2} | {} | {} | {:.2} | {:.2} |",
            per(&|_, g| g.us),
            common::fmt_ratio(per(&|r, g| g.us / all[0][r].us)),
            common::fmt_ratio(per(&|r, g| g.us / all[1][r].us)),
            per(&|_, g| g.inner),
            per(&|_, g| g.us - g.plain - g.inner),
        );
    }
}

/// One variant's hand-overs in one round.
async fn handover_round(
    client: &Client,
    shas: &[String],
    v: usize,
    round: usize,
    calls: usize,
) -> Spent {
    flushall(client).await;
    // Every key held by the holder's token first.
    let ttl = common::TTL_MS.to_string();
    let hold = |i| {
        let args = vec![
            handover_key(round, v, i),
            HOLDER.into(),
            "PX".into(),
            ttl.clone(),
        ];
        vec![("SET", args)]
    };
    pipelined(client, calls, hold, drop).await;
    let before = common::command_usec(client).await;
    let mut heard = 0u64;
    let one = |i| handover_one(v, shas, round, i);
    pipelined(client, calls, one, |r| heard += u64::from(handed(v, &r))).await;
    let after = common::command_usec(client).await;
    let per = |names: &mut dyn Iterator<Item = &String>| {
        names
            .map(|c| after.get(c).copied().unwrap_or(0.0) - before.get(c).copied().unwrap_or(0.0))
            .sum::<f64>()
            / calls as f64
    };
    let sent: Vec<String> = HANDOVER_SENT[v].iter().map(|c| c.to_string()).collect();
    // The counters' own reads (`INFO`) are charged to nobody.
    let inner: Vec<String> = after
        .keys()
        .filter(|c| !sent.contains(c) && c.as_str() != "info")
        .cloned()
        .collect();
    Spent {
        us: per(&mut sent.iter()),
        plain: per(&mut sent.iter().filter(|c| c.as_str() != "evalsha")),
        inner: per(&mut inner.iter()),
        heard,
    }
}

/// The token every hand-over's key is held by, and the claimant's.
const HOLDER: &str = "000000000000000000000000000000000000000000000001:m1n1p0";
const CLAIMANT_TOKEN: &str = "000000000000000000000000000000000000000000000002:m1n1p0";

fn handover_key(round: usize, v: usize, i: usize) -> String {
    format!("valkeylock:0:handover-{round}-{v}-{i}")
}

/// One hand-over by variant `v`: the claim (or the floor's refused `SET`),
/// then the release, then (the floor only) the waiter's `SET` that takes
/// the key.
fn handover_one(
    v: usize,
    shas: &[String],
    round: usize,
    i: usize,
) -> Vec<(&'static str, Vec<String>)> {
    let key = handover_key(round, v, i);
    let ttl = common::TTL_MS.to_string();
    let set = |token: &str| {
        (
            "SET",
            vec![
                key.clone(),
                token.to_owned(),
                "NX".into(),
                "PX".into(),
                ttl.clone(),
            ],
        )
    };
    match v {
        0 => vec![
            set(CLAIMANT_TOKEN),
            (
                "EVALSHA",
                vec![shas[0].clone(), "1".into(), key.clone(), HOLDER.into()],
            ),
            set(CLAIMANT_TOKEN),
        ],
        1 => {
            let claims = format!("{{{key}}}:h");
            vec![
                (
                    "EVALSHA",
                    vec![
                        shas[1].clone(),
                        "2".into(),
                        key.clone(),
                        claims.clone(),
                        CLAIMANT_TOKEN.into(),
                        ttl.clone(),
                        ttl.clone(),
                        CLAIMANT.into(),
                    ],
                ),
                (
                    "EVALSHA",
                    vec![shas[2].clone(), "2".into(), key, claims, HOLDER.into()],
                ),
            ]
        }
        _ => {
            vec![
                (
                    "EVALSHA",
                    vec![
                        shas[3].clone(),
                        "1".into(),
                        key.clone(),
                        common::expiry(),
                        "PXAT".into(),
                        "0".into(),
                        CLAIMANT_TOKEN.into(),
                        format!(
                            "NX|{CLAIMANT}|{}|{i}|0",
                            1_700_000_000_000_000u64 + i as u64
                        ),
                    ],
                ),
                (
                    "EVALSHA",
                    vec![shas[4].clone(), "1".into(), key, HOLDER.into()],
                ),
            ]
        }
    }
}

/// Whether reply `r` of variant `v` is a release that handed its key over
/// (the floor's: a `SET` that took the key).
fn handed(v: usize, r: &Value) -> bool {
    match v {
        0 => r.as_str().as_deref() == Some("OK"),
        1 => matches!(r, Value::Integer(2)),
        _ => matches!(r, Value::Array(a) if matches!(a.as_slice(), [Value::Integer(1)])),
    }
}
