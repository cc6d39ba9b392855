//! The main demo: three workers, each with its own `Locker` (its own
//! connection, as if in separate processes), take turns on one lock; then a
//! holder is told the moment another client deletes its key.
//!
//! Run it with `scripts/demo.sh` (starts a local Valkey if none is running) or
//! `cargo run --example demo -- redis://127.0.0.1:6379`.

use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface};
use tokio::time::Instant;
use valkeylock::{Locker, LockerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let options = LockerOptions::new([url.clone()]).with_key_majority(1);
    let name = format!("demo-{}", std::process::id());
    let t0 = Instant::now();
    let at = move || format!("{:>8.1} ms", t0.elapsed().as_secs_f64() * 1e3);

    println!("three workers take turns on lock {name:?} at {url}");
    let mut workers = Vec::new();
    for w in 1..=3 {
        let locker = Locker::connect(options.clone()).await?;
        let name = name.clone();
        workers.push(tokio::spawn(async move {
            for round in 1..=2 {
                let asked = Instant::now();
                let guard = locker.lock(&name).await.expect("lock");
                println!(
                    "{} worker {w} holds the lock (round {round}, waited {:.1} ms)",
                    at(),
                    asked.elapsed().as_secs_f64() * 1e3
                );
                tokio::time::sleep(Duration::from_millis(150)).await;
                let released = Instant::now();
                if let Err(e) = guard.release().await {
                    eprintln!("worker {w}: {e}");
                }
                println!(
                    "{} worker {w} released it ({:.2} ms to delete the key)",
                    at(),
                    released.elapsed().as_secs_f64() * 1e3
                );
            }
            locker.close().await;
        }));
    }
    for w in workers {
        w.await?;
    }

    println!();
    println!("now another client deletes the key of a held lock:");
    let locker = Locker::connect(options).await?;
    let guard = locker.lock(&name).await?;
    let admin = fred::clients::Client::new(
        fred::types::config::Config::from_url(&url)?,
        None,
        None,
        None,
    );
    admin.init().await?;
    let deleted = Instant::now();
    let _: i64 = admin.del(format!("valkeylock:0:{name}")).await?;
    let reason = guard.lost().await;
    println!(
        "{} the holder was told {reason:?} {:.2} ms after the DEL",
        at(),
        deleted.elapsed().as_secs_f64() * 1e3
    );
    admin.quit().await?;
    locker.close().await;
    Ok(())
}
