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
}

async fn run(url: &str, rounds: usize, calls: usize) {
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
    let acquire = script("ACQUIRE_LUA");
    let (_, rest) = acquire
        .split_once("local n = #KEYS")
        .expect("the general steps start with `local n = #KEYS`");
    let general = format!("local n = #KEYS{rest}");
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
            let _: Value = client
                .custom(
                    CustomCommand::new_static("FLUSHALL", None, false),
                    Vec::<String>::new(),
                )
                .await
                .expect("FLUSHALL");
            let before = common::command_usec(&client).await;
            let t0 = std::time::Instant::now();
            for start in (0..calls).step_by(IN_FLIGHT) {
                let pipeline = client.pipeline();
                for i in start..(start + IN_FLIGHT).min(calls) {
                    for (cmd, args) in acquire_one(v, &shas, round, i) {
                        let queued: Value = pipeline
                            .custom(CustomCommand::new_static(cmd, None, false), args)
                            .await
                            .expect("queued in the pipeline");
                        drop(queued);
                    }
                }
                for r in pipeline.try_all::<Value>().await {
                    r.expect("an acquisition");
                }
            }
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
